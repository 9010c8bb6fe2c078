"""CPU batch-1 matvec: tritium::packed_linear (ternary) against torch.nn.functional.linear in fp32.

Both run in the same process, interleaved trial by trial, on SmolLM2-135M's linear
shapes and on 4096×4096; the figure is the ratio of the medians (target ≥ 4×).

    PYTHONPATH=src python bench/bench_kernels.py [--threads 2] [--group channel] [--layout base3] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tritium.kernels import (  # noqa: E402
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    packed_linear,
    packed_linear_reference,
    planes_available,
)
from tritium.pack import bits_per_weight, pack_quantized  # noqa: E402
from tritium.quant import TernaryGrid, quantize_weight  # noqa: E402

# (in_features, out_features): SmolLM2-135M's q/o (576→576), k/v (576→192), gate/up (576→1536), down (1536→576)
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (4096, 4096)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_calls(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def bench_shape(in_features, out_features, group, layout, trials, seconds_per_trial, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    qweight = quantize_weight(weight, TernaryGrid("absmean", group=group))
    pw = pack_quantized(qweight, ternary_layout=layout)
    args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
    dense = qweight.dequantize().contiguous()  # the fp32 baseline multiplies the same (dequantized) weights
    x = torch.randn(1, in_features, generator=g)
    float_fn = lambda: F.linear(x, dense)  # noqa: E731
    # What a TernaryLinear passes: the bit-plane copy of the codes where the AVX-512 path exists.
    planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size) if planes_available() else None
    packed_fn = lambda: packed_linear(x, *args, planes)  # noqa: E731
    error = (packed_fn() - packed_linear_reference(x, *args)).abs().max().item()
    # Calibrate calls per trial on the slower of the two, then interleave trials so load changes hit both.
    for fn in (float_fn, packed_fn):
        for _ in range(5):
            fn()
    per_call = max(time_calls(float_fn, 5), time_calls(packed_fn, 5))
    calls = max(3, int(seconds_per_trial / max(per_call, 1e-7)))
    float_times, packed_times = [], []
    for _ in range(trials):
        float_times.append(time_calls(float_fn, calls))
        packed_times.append(time_calls(packed_fn, calls))
    f_med, p_med = statistics.median(float_times), statistics.median(packed_times)
    return {
        "shape": f"{in_features}->{out_features}", "in": in_features, "out": out_features,
        "fp32_us": f_med * 1e6, "packed_us": p_med * 1e6, "speedup": f_med / p_med,
        "fp32_best_us": min(float_times) * 1e6, "packed_best_us": min(packed_times) * 1e6,
        "speedup_best": min(float_times) / min(packed_times),
        "bits_per_weight": bits_per_weight(pw)["bits_per_weight"], "max_abs_error_vs_reference": error,
        "calls_per_trial": calls,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group", default="channel", help="'channel' or a group size (e.g. 64)")
    parser.add_argument("--layout", default="base3", choices=["base3", "2bit"])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seconds-per-trial", type=float, default=0.05)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    group = args.group if args.group in ("channel", "tensor") else int(args.group)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    build_start = time.perf_counter()
    loaded = load_cpu_kernel()
    build_seconds = time.perf_counter() - build_start
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "kernel": ("C++ AVX-512 bit planes" if planes_available() else "C++ lookup table") if loaded
                  else f"reference (no CPU kernel: {cpu_kernel_status()['error']})",
        "kernel_build_or_load_s": round(build_seconds, 2),
        "weights": f"ternary absmean, group={group}, layout={args.layout}, fp16 scales",
        "baseline": "torch.nn.functional.linear, fp32, same dequantized weights, batch 1",
    }
    for key, value in header.items():
        print(f"{key:24s} {value}")
    rows = [bench_shape(i, o, group, args.layout, args.trials, args.seconds_per_trial) for i, o in SHAPES]
    print()
    print(f"| {'shape':>11s} | {'fp32 µs':>9s} | {'packed µs':>9s} | {'speedup':>7s} | {'best/best':>9s} | "
          f"{'bits/w':>6s} | {'max |err|':>9s} |")
    print("|" + "|".join("-" * w for w in (13, 11, 11, 9, 11, 8, 11)) + "|")
    for r in rows:
        print(f"| {r['shape']:>11s} | {r['fp32_us']:9.1f} | {r['packed_us']:9.1f} | {r['speedup']:6.2f}× | "
              f"{r['speedup_best']:8.2f}× | {r['bits_per_weight']:6.3f} | {r['max_abs_error_vs_reference']:9.2e} |")
    print(f"\nspeedup = median fp32 time / median packed time over {args.trials} interleaved trials; "
          f"target ≥ 4×. Total bench time {time.perf_counter() - started:.1f} s.")
    if args.json:
        from tritium.utils.io import atomic_write_json

        atomic_write_json(args.json, {**header, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
