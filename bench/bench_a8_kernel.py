"""CPU: the int8-activation path (tritium::packed_linear_a8) against the float-activation path and fp32 F.linear.

    PYTHONPATH=src python bench/bench_a8_kernel.py [--threads 1] [--tokens 1,64] [--paths avx512,avx2] [--json out.json]
        [--shapes 576x1536,1536x576,576x576]   # in x out

One SmolLM2-135M-sized linear at a time (576→1536 gate/up, 1536→576 down, 576→576 q/o), its weights repeated so
they stay in cache, with ternary (absmean) and 4-bit (asymmetric, zero points) weights in groups of 128, at 1 and
64 tokens. Per CPU kernel path, µs per call (median of interleaved trials) of

* ``a8``: ``packed_linear_a8`` with its cached layout, as a packed layer with an A8 quantizer calls it: quantizing
  x to int8 per token, integer products (vpdpbusd on avx512 with VNNI, vpmaddubsw on avx2, plain C++ on
  portable), the per-group float scaling;
* ``float``: ``packed_linear`` on float activations, as a packed layer without activation quantizer calls it (bit
  planes up to 32 tokens on the SIMD paths, dequantize + GEMM above);
* ``hook+float``: what an A8 packed layer ran before the int8 path: fake quant of x in torch, then ``float``;
* ``fp32``: ``F.linear`` on the dequantized fp32 weight (the same path for every row; it does not depend on
  tritium's kernel path).

The header records the CPU, its SIMD flags, the threads and the integer kernel each path runs. bitnet.cpp's I2_S
(ternary weights at 2 bits, int8 activations per tensor, integer dot products) is the anchor: the ternary a8 layout
stores the same 2 bits a weight, so its ``GB/s`` column (weight bytes read per second) compares with I2_S's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tritium.kernels import (  # noqa: E402
    a8_kernel,
    a8_layout,
    available_paths,
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    packed_linear,
    packed_linear_a8,
    packed_linear_a8_reference,
    set_cpu_path,
)
from tritium.kernels.cpu import openmp_max_threads, simd_flags  # noqa: E402
from tritium.pack import pack_quantized  # noqa: E402
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight  # noqa: E402
from tritium.quant.activations import ActivationGrid, fake_quantize_activations  # noqa: E402
from tritium.utils.hardware import cpu_name  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (576, 576)]  # (in_features, out_features)
WEIGHTS = {"ternary": TernaryGrid("absmean", group=128, ragged_groups=True),
           "W4 asym": UniformGrid(4, group=128, ragged_groups=True)}  # as the w4a8-rtn recipe
A8 = ActivationGrid(bits=8)


def time_call(fn, seconds: float) -> float:
    """µs per call: calls repeated for about ``seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return elapsed / calls * 1e6


def bench(in_features, out_features, weights, tokens, paths, trials, seconds):
    g = torch.Generator().manual_seed(in_features * 7 + out_features)
    w = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    pw = pack_quantized(quantize_weight(w, WEIGHTS[weights]))
    args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
    dense = pw.dequantize().contiguous()
    layout = a8_layout(pw.packed, pw.radix, pw.in_features, pw.group_size)
    planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size)
    x = torch.randn(tokens, in_features, generator=g)
    fns = {"fp32": lambda: F.linear(x, dense)}
    for path in paths:
        def use(path=path):
            set_cpu_path(path)
        plane_arg = None if path == "portable" else planes
        fns[f"{path}/a8"] = (use, lambda: packed_linear_a8(x, *args, 1.0, layout))
        fns[f"{path}/float"] = (use, lambda p=plane_arg: packed_linear(x, *args, p))
        fns[f"{path}/hook+float"] = (use, lambda p=plane_arg: packed_linear(fake_quantize_activations(x, A8), *args, p))
    errors = {}
    for path in paths:  # the int8 path's own check, once per path: how far from the fake-quant reference
        set_cpu_path(path)
        want = packed_linear_a8_reference(x, *args, 1.0)
        errors[path] = float((packed_linear_a8(x, *args, 1.0, layout) - want).abs().max() / want.abs().max())
    times = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(trials):  # interleaved: a slow moment of the machine hits every column alike
            for name, entry in fns.items():
                if isinstance(entry, tuple):
                    entry[0]()
                    entry = entry[1]
                times[name].append(time_call(entry, seconds))
    bytes_a8 = layout.numel()  # the a8 kernel reads its own layout
    return {name: statistics.median(v) for name, v in times.items()}, bytes_a8, errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", default="1,64", help="comma-separated token counts")
    parser.add_argument("--paths", default=None, help="comma-separated CPU kernel paths (default: all this CPU runs)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="seconds of calls per trial and column")
    parser.add_argument("--shapes", default=",".join(f"{i}x{o}" for i, o in SHAPES), help="in x out, comma-separated")
    parser.add_argument("--json", default=None)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    if not load_cpu_kernel():
        sys.exit(f"the CPU kernel is not built: {cpu_kernel_status()['error']}")
    paths = options.paths.split(",") if options.paths else available_paths()
    kernels = {}
    for path in paths:
        set_cpu_path(path)
        kernels[path] = a8_kernel()
    token_counts = [int(t) for t in options.tokens.split(",")]
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in options.shapes.split(",")]
    print(f"CPU: {cpu_name()} ({platform.machine()}); torch {torch.__version__}; threads {options.threads} "
          f"(torch {torch.get_num_threads()}, OpenMP {openmp_max_threads()})")
    print(f"SIMD flags: {' '.join(simd_flags())}")
    print("integer kernel per path: " + "; ".join(f"{p}: {k}" for p, k in kernels.items()))
    print()
    print("| path | weights | in→out | tokens | a8 µs | float µs | hook+float µs | fp32 µs | a8 vs float | "
          "a8 vs fp32 | a8 weight GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for weights in WEIGHTS:
        for in_features, out_features in shapes:
            for tokens in token_counts:
                medians, bytes_a8, errors = bench(in_features, out_features, weights, tokens, paths, options.trials,
                                          options.seconds)
                for path in paths:
                    a8, fl, hook = (medians[f"{path}/{c}"] for c in ("a8", "float", "hook+float"))
                    fp32 = medians["fp32"]
                    row = {"path": path, "kernel": kernels[path], "weights": weights, "in": in_features,
                           "out": out_features, "tokens": tokens, "a8_us": a8, "float_us": fl, "hook_float_us": hook,
                           "fp32_us": fp32, "a8_weight_bytes": bytes_a8,
                           "a8_max_error_vs_reference": errors[path]}
                    rows.append(row)
                    print(f"| {path} | {weights} | {in_features}→{out_features} | {tokens} | {a8:.1f} | {fl:.1f} | "
                          f"{hook:.1f} | {fp32:.1f} | {fl / a8:.2f}× | {fp32 / a8:.2f}× | "
                          f"{bytes_a8 / a8 / 1e3:.1f} |", flush=True)
    print()
    print("a8 vs float / vs fp32: how many times faster the int8 path is (> 1: faster). GB/s: the a8 layout's bytes "
          "(0.25 a weight for ternary, 0.5 for 4-bit) over the a8 time. Largest a8 error vs the fake-quant reference, "
          f"relative to the largest output: {max(r['a8_max_error_vs_reference'] for r in rows):.1e}.")
    if options.json:
        from tritium.utils.io import atomic_write_text

        atomic_write_text(options.json, json.dumps({"cpu": cpu_name(), "flags": simd_flags(),
                                                    "threads": options.threads, "kernels": kernels, "rows": rows},
                                                   indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
