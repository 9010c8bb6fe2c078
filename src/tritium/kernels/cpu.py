"""Build and load the C++ CPU kernel on first use, into a cached build folder, and pick its path.

The compiled library registers itself as the ``CPU`` implementation of
``tritium::packed_linear``. Without a working compiler the reference implementation
keeps serving CPU tensors, and one warning says so.

One build holds three paths (see ``csrc/packed_linear_cpu.cpp``); the fastest one the CPU's flags
allow runs, unless ``TRITIUM_CPU_PATH`` (or :func:`set_cpu_path`) forces one:

* ``avx512``: bit planes looked up in float tables (exact up to summation order);
* ``avx2``: the same bit planes looked up by vpshufb, with the activations rounded to int8 (absmax per
  row and block of ≤ 128 activations of a group; :func:`tritium.kernels.reference.round_activations_int8`);
* ``portable``: no intrinsics, float lookup tables; a CPU without AVX2 gets it and one warning.

The same build implements ``tritium::packed_linear_a8`` (activations quantized to int8 per token, as
:func:`tritium.quant.activations.quantize_activations` does, then integer products on :func:`a8_layout`): on the
avx512 path with AVX512-VNNI's vpdpbusd (the AVX2 kernel where the CPU lacks VNNI), on avx2 with vpmaddubsw, on
portable with plain loops; :func:`a8_kernel` says which.

:func:`active_path` says which one runs. The library is compiled for the baseline ISA (each SIMD
function carries its own target attribute), so one build serves every x86-64 CPU, and it links the
OpenMP runtime torch loaded, so its threads are torch's intra-op pool (``torch.set_num_threads``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import threading
import warnings
from pathlib import Path

from ..utils.errors import TritiumError
from ..utils.hardware import cpu_flags

SOURCE = Path(__file__).with_name("csrc") / "packed_linear_cpu.cpp"
PATH_ENV = "TRITIUM_CPU_PATH"
# Fastest first; the flags /proc/cpuinfo must list for each path to run.
PATH_FLAGS = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "portable": (),
}
SIMD_PATHS = ("avx512", "avx2")
PATH_DESCRIPTIONS = {
    "avx512": "C++ avx512: float bit planes (vpermps), exact up to summation order",
    "avx2": "C++ avx2: bit planes by vpshufb, int8 activations (absmax per block of <=128)",
    "portable": "C++ portable: float lookup table, no SIMD intrinsics",
    "reference": "reference op (dequantize + F.linear): no CPU kernel",
}


def simd_flags(flags=None) -> list[str]:
    """The CPU flags that decide the kernel's path (and matter to benchmarks), sorted."""
    flags = cpu_flags() if flags is None else flags
    return sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "ssse3")) or f in ("fma", "f16c"))

_lock = threading.Lock()
_state: dict = {"tried": False, "loaded": False, "error": None, "path": None, "epoch": 0, "warned_portable": False}


class CpuPathError(TritiumError, ValueError):
    """A CPU kernel path was asked for that does not exist or that this CPU cannot run."""


def cache_dir() -> Path:
    """``$TRITIUM_CACHE/kernels`` (default ``~/.cache/tritium/kernels``)."""
    root = os.environ.get("TRITIUM_CACHE") or Path.home() / ".cache" / "tritium"
    return Path(root) / "kernels"


# ------------------------------------------------------------------ building


_OPENMP_LIBRARY = re.compile(r"^lib(gomp|iomp5|omp)\b[^/]*\.so[.\d]*$")


def torch_openmp_runtime() -> str | None:
    """The OpenMP runtime library torch has loaded into this process (Linux), else None.

    Linking the kernel against this very file makes its ``at::parallel_for`` regions run in torch's pool.
    Linked against the system's libgomp instead (``-fopenmp``), a torch wheel that bundles its own renamed
    copy would give the process two pools: two sets of spinning threads on the same cores, and the
    kernel's thread count deaf to ``torch.set_num_threads``.
    """
    import torch

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    found = {line.split()[-1] for line in maps if "/" in line and _OPENMP_LIBRARY.match(line.split("/")[-1])}
    if not found:
        return None
    torch_root = str(Path(torch.__file__).resolve().parent.parent)  # torch/ and a wheel's torch.libs/ sit here
    return sorted(found, key=lambda path: (not path.startswith(torch_root), path))[0]


def build_flags() -> tuple[list[str], list[str]]:
    """``(cflags, ldflags)`` of every tritium CPU extension.

    No ``-march=native``: SIMD code selects its ISA per function (``__attribute__((target(...)))``),
    so the library runs on any CPU of the architecture and a path can be forced for testing.
    ``TRITIUM_CPU_KERNEL_FLAGS`` adds compiler flags.
    """
    cflags = ["-O3", "-fopenmp", "-std=c++17", *os.environ.get("TRITIUM_CPU_KERNEL_FLAGS", "").split()]
    runtime = torch_openmp_runtime()
    ldflags = [runtime, f"-Wl,-rpath,{Path(runtime).parent}"] if runtime else ["-fopenmp"]
    return cflags, ldflags


def _build_tag(source: Path, cflags: list[str], ldflags: list[str]) -> str:
    import torch

    # Only a -march=native in the user's extra flags ties the build to this CPU.
    native = " ".join(sorted(cpu_flags())) if any("native" in flag for flag in cflags) else ""
    text = f"{platform.machine()}|{torch.__version__}|{cflags}|{ldflags}|{native}|{source.read_bytes().hex()}"
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


def build_extension(stem: str, source: Path, verbose: bool = False) -> None:
    """Compile ``source`` (once per source, flags and torch version) into the cache and load it.

    The library is expected to register its ops itself (``TORCH_LIBRARY_IMPL``/``TORCH_LIBRARY_FRAGMENT``);
    raises whatever the build raised. Every tritium CPU extension goes through here, so all share the
    flags and the OpenMP runtime of :func:`build_flags`.
    """
    from torch.utils.cpp_extension import load

    cflags, ldflags = build_flags()
    name = f"{stem}_{_build_tag(Path(source), cflags, ldflags)}"
    build = cache_dir() / name
    build.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build / "lock")
    load(name=name, sources=[str(source)], extra_cflags=cflags, extra_ldflags=ldflags, build_directory=str(build),
         is_python_module=False, verbose=verbose)


def load_cpu_kernel(verbose: bool = False) -> bool:
    """Compile (once per machine and source) and load the CPU kernel; True if it is in use.

    The first successful call also picks the kernel's path (``TRITIUM_CPU_PATH`` or the fastest the CPU
    runs); a forced path the CPU cannot run raises :class:`CpuPathError`, on this call and every later one.
    """
    if _state["tried"]:
        if _state["loaded"] and _state["path"] is None:
            _apply_path(os.environ.get(PATH_ENV) or None)
        return _state["loaded"]
    with _lock:
        if not _state["tried"]:
            _build_once(verbose)
    if _state["loaded"] and _state["path"] is None:
        _apply_path(os.environ.get(PATH_ENV) or None)
    return _state["loaded"]


def _build_once(verbose: bool) -> None:
    if os.environ.get("TRITIUM_DISABLE_CPU_KERNEL"):
        _state.update(tried=True, error="disabled by TRITIUM_DISABLE_CPU_KERNEL")
        # Warned although asked for: a variable left set (say, by a benchmark) would otherwise make
        # every packed model slow without a word.
        warnings.warn("tritium: the CPU kernel of tritium::packed_linear is disabled by "
                      "TRITIUM_DISABLE_CPU_KERNEL; packed layers on the CPU use the slow reference implementation.",
                      RuntimeWarning, stacklevel=3)
        return
    from . import ops  # noqa: F401  (the op must exist before the library registers into it)

    try:
        build_extension("tritium_packed_linear_cpu", SOURCE, verbose)
        _state.update(tried=True, loaded=True)
    except Exception as err:  # no compiler, no ninja, a failed build: fall back, once, loudly
        message = str(err).strip()
        _state.update(tried=True, error=f"{type(err).__name__}: {message.splitlines()[-1] if message else ''}")
        warnings.warn(
            "tritium: the CPU kernel of tritium::packed_linear could not be built "
            f"({_state['error']}); packed layers on the CPU use the slow reference implementation. "
            "Install a C++ compiler (g++ or clang) and ninja (`pip install ninja`) to get the fast kernel.",
            RuntimeWarning,
            stacklevel=3,
        )


def cpu_kernel_status() -> dict:
    return {"tried": _state["tried"], "loaded": _state["loaded"], "error": _state["error"], "path": active_path()}


# ------------------------------------------------------------------ paths


def paths_for_flags(flags) -> list[str]:
    """The kernel paths a CPU with these ``/proc/cpuinfo`` flags can run, fastest first."""
    return [path for path, needed in PATH_FLAGS.items() if all(flag in flags for flag in needed)]


def available_paths() -> list[str]:
    """The paths this CPU runs, fastest first (``portable`` always), from its flags and the built kernel's check.

    Where the system lists no flags (not Linux) the kernel's own CPUID check decides alone.
    """
    flags = cpu_flags()
    paths = paths_for_flags(flags) if flags else list(PATH_FLAGS)
    if _state["loaded"]:
        import torch

        paths = [path for path in paths if torch.ops.tritium_cpu_info.path_supported(path)]
    elif not flags:
        paths = ["portable"]
    return paths


def check_path_request() -> None:
    """Raise :class:`CpuPathError` now if ``TRITIUM_CPU_PATH`` names a path that does not exist or that the
    CPU's flags rule out; builds nothing, so a command can check before its expensive work."""
    requested = os.environ.get(PATH_ENV)
    if not requested:
        return
    name = requested.strip().lower()
    flags = cpu_flags()
    if name not in PATH_FLAGS:
        raise CpuPathError(f"{PATH_ENV}={requested!r} names no CPU kernel path: choose one of "
                           f"{', '.join(PATH_FLAGS)} (or leave it unset for the fastest this CPU runs)")
    if flags and name not in paths_for_flags(flags):
        raise CpuPathError(f"{PATH_ENV}={requested!r} asks for the {name} CPU kernel path, but this CPU cannot "
                           f"run it ({_describe_missing(name)}): choose one of {', '.join(paths_for_flags(flags))}, "
                           "or leave it unset for the fastest this CPU runs")


def _describe_missing(path: str) -> str:
    flags = cpu_flags()
    missing = [flag for flag in PATH_FLAGS[path] if flag not in flags]
    return f"it lacks {', '.join(missing)}" if flags and missing else "its CPUID check says no"


def _apply_path(requested: str | None, source: str = PATH_ENV) -> str:
    """Choose the path (``requested`` or the fastest available), tell the library, return the name."""
    import torch

    available = available_paths()
    if requested is not None:
        name = requested.strip().lower()
        if name not in PATH_FLAGS:
            raise CpuPathError(f"{source}={requested!r} names no CPU kernel path: choose one of "
                               f"{', '.join(PATH_FLAGS)} (or leave it unset for the fastest this CPU runs)")
        if name not in available:
            raise CpuPathError(f"{source}={requested!r} asks for the {name} CPU kernel path, but this CPU cannot "
                               f"run it ({_describe_missing(name)}): choose one of {', '.join(available)}, or leave "
                               "it unset for the fastest this CPU runs")
    else:
        name = available[0]
        if name == "portable" and not _state["warned_portable"]:
            _state["warned_portable"] = True
            if "avx2" in paths_for_flags(cpu_flags()):
                why = "the CPU kernel was built without its SIMD paths (is -DTRITIUM_NO_SIMD in TRITIUM_CPU_KERNEL_FLAGS?)"
            elif platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
                why = "this CPU has no AVX2"
            else:
                why = f"tritium's CPU kernel has no SIMD path for {platform.machine()}"
            warnings.warn(f"tritium: {why}, so packed layers run the CPU kernel's portable path "
                          "(correct, but several times slower than the AVX2 and AVX-512 paths).",
                          RuntimeWarning, stacklevel=4)
    torch.ops.tritium_cpu_info.set_path(name)
    if _state["path"] != name:
        _state["epoch"] += 1
    _state["path"] = name
    return name


def set_cpu_path(name: str | None = None) -> str:
    """Force the CPU kernel's path (``avx512``, ``avx2``, ``portable``), or with None the fastest available.

    Returns the path now active. Raises :class:`CpuPathError` for a path this CPU cannot run, and when the
    kernel is not built (then the reference implementation serves every CPU call).
    """
    if not load_cpu_kernel():
        raise CpuPathError(f"the CPU kernel is not in use ({_state['error']}), so no kernel path can be chosen")
    with _lock:
        return _apply_path(name, source="set_cpu_path")


def active_path() -> str:
    """The CPU kernel path that runs packed layers now; ``reference`` without a built kernel (or not yet loaded)."""
    return _state["path"] if _state["loaded"] and _state["path"] else "reference"


def layout_epoch() -> int:
    """Changes whenever the active path does: a cached kernel layout (or its absence) is stale after it."""
    return _state["epoch"]


def planes_available() -> bool:
    """True when the active CPU path reads the bit-plane layout of :func:`bit_planes` (avx512 and avx2)."""
    # Called on every packed layer's CPU forward: a dict lookup once the kernel is loaded.
    if not _state["tried"] or (_state["loaded"] and _state["path"] is None):
        load_cpu_kernel()
    return _state["loaded"] and _state["path"] in SIMD_PATHS


def openmp_max_threads() -> int:
    """The thread count of the OpenMP runtime the kernel's parallel loops use (follows torch's, see the tests)."""
    import torch

    load_cpu_kernel()
    return int(torch.ops.tritium_cpu_info.openmp_max_threads())


ROWS_PER_BLOCK = 16


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


# ------------------------------------------------------------------ int8 activations

A8_ROWS = ROWS_PER_BLOCK  # rows per block of the a8 layout


def a8_digit_bits(radix: int) -> int:
    """Bits per digit in :func:`a8_layout`: 2 for radix ≤ 4 (ternary, 2-bit codes), else 4 (radix ≤ 16)."""
    if not 2 <= radix <= 16:
        raise ValueError(f"the int8-activation layout covers radix 2..16, not {radix}")
    return 2 if radix <= 4 else 4


def a8_layout(packed, radix: int, in_features: int, group_size: int):
    """Re-lay grouped digit bytes for ``tritium::packed_linear_a8``'s CPU kernel: uint8
    ``[ceil(out/16), groups, chunks, 16, 4]``.

    With B = :func:`a8_digit_bits` and P = 8 / B digits a byte, a chunk covers S = 4·P weights of a group for
    16 rows: byte (r, i) of chunk c holds, in bits B·s .. B·s + B − 1 (s < P), the digit of weight c·S + 4·s + i
    of that group in row 16·block + r. Each row's 4 bytes make one int32 lane of a SIMD register, whose
    ``(lane >> B·s) & (2^B − 1)`` is the 4 digits that meet 4 consecutive int8 activations. Groups are
    zero-padded to whole chunks, rows to whole blocks (0.25 bytes a weight for ternary, 0.5 for 4-bit).
    """
    import torch

    from ..pack.layouts import group_sizes, unpack_grouped

    bits = a8_digit_bits(radix)
    per_byte = 8 // bits
    span = 4 * per_byte
    digits = unpack_grouped(packed, radix, in_features, group_size)  # raises on corrupt bytes
    out_features = digits.shape[0]
    sizes = group_sizes(in_features, group_size)
    chunks = -(-group_size // span)
    blocks = -(-out_features // A8_ROWS)
    grouped = torch.zeros(blocks * A8_ROWS, len(sizes), chunks * span, dtype=torch.int32)
    for g, part in enumerate(torch.split(digits, group_size, dim=1)):
        grouped[:out_features, g, : part.shape[1]] = part.to(torch.int32)
    grouped = grouped.reshape(blocks, A8_ROWS, len(sizes), chunks, per_byte, 4)  # weight c·S + 4·s + i
    shifts = (bits * torch.arange(per_byte, dtype=torch.int32)).view(1, 1, 1, 1, per_byte, 1)
    packed_bytes = (grouped << shifts).sum(4)  # [blocks, 16, G, chunks, 4]
    return packed_bytes.permute(0, 2, 3, 1, 4).to(torch.uint8).contiguous()


def a8_kernel() -> str:
    """The integer kernel ``tritium::packed_linear_a8`` runs on the active path (``reference`` without a kernel):
    ``avx512 (vpdpbusd)`` where the avx512 path runs on a CPU with AVX512-VNNI (otherwise that path runs the AVX2
    kernel), ``avx2 (vpmaddubsw)``, ``portable``."""
    import torch

    if not load_cpu_kernel() or active_path() == "reference":
        return "reference"
    return str(torch.ops.tritium_cpu_info.a8_kernel())
