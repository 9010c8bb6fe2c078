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


def cpu_precision_hint(precision: str) -> str | None:
    """A one-line hint when a CPU run's precision is the slow choice for this CPU, else None.

    ``auto`` trains in fp32 on a CPU (so that results do not depend on which CPU ran them); on a CPU
    with native bf16 that leaves about half the speed unused.
    """
    native = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in cpu_flags()]
    if precision in ("auto", "fp32") and native:
        return (f"training in fp32 on a CPU with native bf16 ({native[0]}): --precision bf16 (autocast) is about "
                "2x faster here")
    if precision == "bf16" and not native:
        return ("bf16 autocast on a CPU without AMX or AVX512-BF16 is emulated and slower than fp32: "
                "use --precision fp32 here")
    return None

