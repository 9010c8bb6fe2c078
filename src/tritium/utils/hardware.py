"""What the machine offers: the CPU's feature flags, and whether bf16 matmuls run natively."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# Either gives the CPU bf16 dot products in hardware; without them bf16 autocast is emulated and slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of /proc/cpuinfo; None where the system does not list it (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of /proc/cpuinfo; empty where the system does not list them (not Linux)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name, for benchmark reports."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def native_bf16(device) -> bool:
    """Whether bf16 autocast on ``device`` runs on bf16 hardware (a CUDA GPU that has it, AMX or AVX512-BF16)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)
    return False


def uses_bf16(precision: str, device) -> bool:
    """Whether training at ``precision`` (auto, fp32 or bf16) on ``device`` runs under bf16 autocast.

    ``auto`` takes bf16 only where the hardware has it (a CUDA GPU that supports it, a CPU with AMX or
    AVX512-BF16): elsewhere bf16 is emulated and slower than fp32, so auto stays in fp32.
    """
    if precision == "bf16":
        return True
    return precision == "auto" and native_bf16(device)


def emulated_bf16_warning(precision: str, device) -> str | None:
    """The warning for bf16 asked for on a CPU that emulates it (None when it does not apply)."""
    import torch

    if precision != "bf16" or torch.device(device).type != "cpu" or native_bf16("cpu"):
        return None
    return ("tritium: --precision bf16 on a CPU without bf16 hardware: its flags list neither "
            f"{' nor '.join(NATIVE_BF16_CPU_FLAGS)}, so bf16 autocast is emulated and runs several times slower "
            "than fp32 (a user measured 4.5 against 80 tokens/s). Use --precision auto (fp32 here) or fp32.")


_warned: set[str] = set()


def warn_if_emulated_bf16(precision: str, device) -> bool:
    """Warn (once a process) when bf16 is asked for on a CPU that emulates it; True if it warned now."""
    import warnings

    message = emulated_bf16_warning(precision, device)
    if message is None or message in _warned:
        return False
    _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return True


def cpu_precision_hint(precision: str) -> str | None:
    """A one-line hint when a CPU run's precision is the slow choice for this CPU, else None.

    ``fp32`` on a CPU with native bf16 leaves about half the speed unused (``auto`` would take bf16
    there); ``bf16`` on a CPU without it is the warning of :func:`emulated_bf16_warning`.
    """
    native = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in cpu_flags()]
    if precision == "fp32" and native:
        return (f"training in fp32 on a CPU with native bf16 ({native[0]}): --precision auto or bf16 (autocast) is "
                "about 2x faster here")
    if precision == "bf16" and not native:
        return ("bf16 autocast on a CPU without AMX or AVX512-BF16 is emulated and slower than fp32: "
                "use --precision fp32 or auto here")
    return None
