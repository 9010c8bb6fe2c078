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
    import torch

    from ..utils.hardware import cpu_flags

    flags = " ".join(sorted(cpu_flags()))
    extra = os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "")
    text = f"{platform.machine()}|{flags}|{torch.__version__}|{extra}|{SOURCE.read_bytes().hex()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


STALE_LOCK_SECONDS = 15 * 60


def _clear_stale_lock(lock: Path) -> None:
    # torch's builder waits forever on this file; a build killed midway leaves it behind.
    try:
        import time

        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            warnings.warn(f"tritium: removing the stale kernel build lock {lock} (a build was interrupted)",
                          RuntimeWarning, stacklevel=3)
            lock.unlink(missing_ok=True)
    except OSError:
        pass


def load_cpu_kernel(verbose: bool = False) -> bool:
    """Compile (once per machine and source) and load the CPU kernel; True if it is in use."""
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if _state["tried"]:
            return _state["loaded"]
        if os.environ.get("TRITIUM_DISABLE_CPU_KERNEL"):
            _state.update(tried=True, error="disabled by TRITIUM_DISABLE_CPU_KERNEL")
            # Warned although asked for: a variable left set (say, by a benchmark) would otherwise make
            # every packed model slow without a word.
            warnings.warn("tritium: the CPU kernel of tritium::packed_linear is disabled by "
                          "TRITIUM_DISABLE_CPU_KERNEL; packed layers on the CPU use the slow reference implementation.",
                          RuntimeWarning, stacklevel=2)
            return False
        from . import ops  # noqa: F401  (the op must exist before the library registers into it)

        try:
            from torch.utils.cpp_extension import load

            name = f"tritium_packed_linear_cpu_{_cpu_tag()}"
            build = cache_dir() / name
            build.mkdir(parents=True, exist_ok=True)
            _clear_stale_lock(build / "lock")
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


ROWS_PER_BLOCK = 16


def planes_available() -> bool:
    """True when the loaded CPU kernel has the AVX-512 bit-plane path."""
    # Cached: every packed layer asks on every CPU forward, and an op call costs microseconds.
    if "planes" not in _state:
        if not load_cpu_kernel():
            return False
        import torch

        _state["planes"] = bool(torch.ops.tritium_cpu_info.planes_available())
    return _state["planes"]


def bit_planes(packed, radix: int, in_features: int, group_size: int):
    """Re-lay grouped digit bytes as the CPU kernel's bit planes: uint8 ``[out/16, groups, B, ceil(g/8), 16]``.

    Digit = Σ_b 2^b·bit_b over B = ceil(log2 radix) planes; bit i of byte (q, lane r) is
    that bit of weight 8q + i of the group in row 16·block + r. Rows and groups are zero-padded.
    """
    import torch

    from ..pack.layouts import group_sizes, unpack_grouped

    n_planes = max(1, (radix - 1).bit_length())
    if n_planes > 4:
        raise ValueError(f"the bit-plane layout covers radix ≤ 16, not {radix}")
    digits = unpack_grouped(packed, radix, in_features, group_size)
    out_features = digits.shape[0]
    sizes = group_sizes(in_features, group_size)
    padded_group = -(-group_size // 8) * 8
    blocks = -(-out_features // ROWS_PER_BLOCK)
    grouped = torch.zeros(blocks * ROWS_PER_BLOCK, len(sizes), padded_group, dtype=torch.uint8)
    for g, chunk in enumerate(torch.split(digits, group_size, dim=1)):
        grouped[:out_features, g, : chunk.shape[1]] = chunk
    planes = torch.stack([(grouped >> b) & 1 for b in range(n_planes)], dim=2)  # [rows, G, B, P]
    planes = planes.reshape(*planes.shape[:3], padded_group // 8, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    packed_bits = (planes * weights).sum(-1, dtype=torch.int32).to(torch.uint8)  # [rows, G, B, Q]
    packed_bits = packed_bits.reshape(blocks, ROWS_PER_BLOCK, *packed_bits.shape[1:])
    return packed_bits.permute(0, 2, 3, 4, 1).contiguous()
