"""Build and load the C++ CPU kernel on first use, into a cached build folder.

The compiled library registers itself as the ``CPU`` implementation of
``tritium::packed_linear``. Without a working compiler the reference implementation
keeps serving CPU tensors, and one warning says so.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "packed_linear_cpu.cpp"
_lock = threading.Lock()
_state: dict = {"tried": False, "loaded": False, "error": None}


def cache_dir() -> Path:
    """``$TRITIUM_CACHE/kernels`` (default ``~/.cache/tritium/kernels``)."""
    root = os.environ.get("TRITIUM_CACHE") or Path.home() / ".cache" / "tritium"
    return Path(root) / "kernels"


def _cpu_tag() -> str:
    # -march=native code must not be reused on another CPU: key the build on the CPU's flags.
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    import torch

    extra = os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "")
    text = f"{platform.machine()}|{flags}|{torch.__version__}|{extra}|{SOURCE.read_bytes().hex()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_cpu_kernel(verbose: bool = False) -> bool:
    """Compile (once per machine and source) and load the CPU kernel; True if it is in use."""
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if _state["tried"]:
            return _state["loaded"]
        if os.environ.get("TRITIUM_DISABLE_CPU_KERNEL"):
            _state.update(tried=True, error="disabled by TRITIUM_DISABLE_CPU_KERNEL")
            return False
        from . import ops  # noqa: F401  (the op must exist before the library registers into it)

        try:
            from torch.utils.cpp_extension import load

            name = f"tritium_packed_linear_cpu_{_cpu_tag()}"
            build = cache_dir() / name
            build.mkdir(parents=True, exist_ok=True)
            flags = ["-O3", "-fopenmp", "-std=c++17", *os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "").split()]
            if platform.machine() in ("x86_64", "AMD64"):
                flags.append("-march=native")  # AVX2 / AVX-512 where the CPU has them
            load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                 build_directory=str(build), is_python_module=False, verbose=verbose)
            _state.update(tried=True, loaded=True)
        except Exception as err:  # no compiler, no ninja, a failed build: fall back, once, loudly
            _state.update(tried=True, error=f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            warnings.warn(
                "tritium: the CPU kernel of tritium::packed_linear could not be built "
                f"({_state['error']}); packed layers on the CPU use the slow reference implementation. "
                "Install a C++ compiler (g++ or clang) and ninja (`pip install ninja`) to get the fast kernel.",
                RuntimeWarning,
                stacklevel=2,
            )
        return _state["loaded"]


def cpu_kernel_status() -> dict:
    return {"tried": _state["tried"], "loaded": _state["loaded"], "error": _state["error"]}
