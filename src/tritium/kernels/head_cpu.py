"""Build and load the C++ kernel of the head ops (``csrc/head_linear_cpu.cpp``) on first use.

The library is compiled without ``-march=native``: its AVX2 + F16C and AVX-512 matvecs are compiled
per function (``__attribute__((target(...)))``), so one build serves any x86-64 CPU, and the path
that runs is picked at load time from the CPU's flags (:func:`tritium.utils.hardware.cpu_flags`).
``TRITIUM_HEAD_KERNEL_ISA=portable|avx2|avx512`` or :func:`set_head_isa` forces a path (tests run
each one). Without a compiler the reference ops serve CPU tensors, and one warning says so.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..utils.errors import TritiumError

SOURCE = Path(__file__).with_name("csrc") / "head_linear_cpu.cpp"
ISAS = ("portable", "avx2", "avx512")
# The CPU flags each vector path needs (as /proc/cpuinfo names them).
ISA_FLAGS = {"avx2": frozenset({"avx2", "fma", "f16c"}),
             "avx512": frozenset({"avx512f", "avx512bw", "avx2", "fma", "f16c"})}
ISA_ENV = "TRITIUM_HEAD_KERNEL_ISA"

_lock = threading.Lock()
_state: dict = {"tried": False, "loaded": False, "error": None}


class HeadKernelError(TritiumError, ValueError):
    """A head-kernel path that this CPU or build cannot run."""


def best_isa(flags: frozenset[str] | None = None) -> str:
    """The fastest path the CPU's flags allow."""
    if flags is None:
        from ..utils.hardware import cpu_flags

        flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64"):
        return "portable"
    for isa in ("avx512", "avx2"):
        if ISA_FLAGS[isa] <= flags:
            return isa
    return "portable"


def _check_isa(isa: str) -> None:
    if isa not in ISAS:
        raise HeadKernelError(f"head kernel path {isa!r} is unknown: choose one of {', '.join(ISAS)}")
    if isa != "portable":
        from ..utils.hardware import cpu_flags

        missing = sorted(ISA_FLAGS[isa] - cpu_flags())
        if missing or platform.machine() not in ("x86_64", "AMD64"):
            raise HeadKernelError(f"the {isa} head kernel needs the CPU flags {', '.join(sorted(ISA_FLAGS[isa]))}; "
                                  f"this CPU lacks {', '.join(missing) or 'x86-64'}: use "
                                  f"{ISA_ENV}={best_isa()} or leave it unset")


def _tag() -> str:
    import torch

    extra = os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "")
    # The source's path too: the build file names it, so two checkouts sharing one cache folder would
    # otherwise rebuild each other's library on every load.
    text = f"{platform.machine()}|{torch.__version__}|{extra}|{SOURCE.resolve()}|{SOURCE.read_bytes().hex()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_head_kernel(verbose: bool = False) -> bool:
    """Compile (once per machine and source) and load the head kernel; True if it is in use."""
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if _state["tried"]:
            return _state["loaded"]
        if os.environ.get("TRITIUM_DISABLE_CPU_KERNEL"):
            _state.update(tried=True, error="disabled by TRITIUM_DISABLE_CPU_KERNEL")
            warnings.warn("tritium: the CPU kernel of the head ops is disabled by TRITIUM_DISABLE_CPU_KERNEL; "
                          "quantized and 16-bit LM heads on the CPU use the slow reference implementation.",
                          RuntimeWarning, stacklevel=2)
            return False
        forced = os.environ.get(ISA_ENV) or None
        if forced is not None:
            _check_isa(forced)  # a wrong value is an error, not a silent fallback
        from . import head_ops  # noqa: F401  (the ops must exist before the library registers into them)
        from .cpu import _clear_stale_lock, cache_dir

        try:
            import torch
            from torch.utils.cpp_extension import load

            name = f"tritium_head_linear_cpu_{_tag()}"
            build = cache_dir() / name
            build.mkdir(parents=True, exist_ok=True)
            _clear_stale_lock(build / "lock")
            flags = ["-O3", "-fopenmp", "-std=c++17", *os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "").split()]
            load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                 build_directory=str(build), is_python_module=False, verbose=verbose)
            torch.ops.tritium_head_cpu.set_isa(ISAS.index(forced or best_isa()))
            _state.update(tried=True, loaded=True)
        except Exception as err:  # no compiler, no ninja, a failed build: fall back, once, loudly
            message = str(err).strip()
            _state.update(tried=True, error=f"{type(err).__name__}: {message.splitlines()[-1] if message else ''}")
            warnings.warn(
                f"tritium: the CPU kernel of the head ops could not be built ({_state['error']}); quantized and "
                "16-bit LM heads on the CPU use the slow reference implementation. Install a C++ compiler (g++ or "
                "clang) and ninja (`pip install ninja`) to get the fast kernel.",
                RuntimeWarning, stacklevel=2)
        return _state["loaded"]


def head_kernel_status() -> dict:
    status = {"tried": _state["tried"], "loaded": _state["loaded"], "error": _state["error"]}
    if _state["loaded"]:
        status["isa"] = head_isa()
    return status


def head_isa() -> str:
    """The path the loaded kernel runs."""
    import torch

    if not load_head_kernel():
        raise HeadKernelError(f"the head kernel is not loaded: {_state['error']}")
    return ISAS[int(torch.ops.tritium_head_cpu.get_isa())]


def set_head_isa(isa: str) -> None:
    """Make the kernel run ``isa`` (portable, avx2 or avx512); the CPU must have its flags."""
    import torch

    _check_isa(isa)
    if not load_head_kernel():
        raise HeadKernelError(f"the head kernel is not loaded: {_state['error']}")
    torch.ops.tritium_head_cpu.set_isa(ISAS.index(isa))


@contextmanager
def forced_head_isa(isa: str):
    """Run the block in ``isa``, then restore the path that ran before."""
    before = head_isa()
    set_head_isa(isa)
    try:
        yield
    finally:
        set_head_isa(before)
