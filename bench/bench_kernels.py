"""CPU batch-1 matvec: tritium::packed_linear (ternary) against torch.nn.functional.linear in fp32.

Both run in the same process, interleaved trial by trial, on SmolLM2-135M's linear
shapes and on 4096×4096; the figure is the ratio of the medians (target ≥ 4×).

    PYTHONPATH=src python bench/bench_kernels.py [--threads 2] [--group channel] [--layout base3] [--json out.json]
    PYTHONPATH=src python bench/bench_kernels.py --model-sweep smollm2-135m   # also the decode-step sweep

The first table repeats one matrix, so its weights stay in cache: the best case for the
fp32 baseline. ``--model-sweep`` runs every linear of a real model once per step, in the
model's order, as one decode step does: each weight is read once per step, as in real use.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from tritium.utils.hardware import cpu_name  # noqa: E402

# (in_features, out_features): SmolLM2-135M's q/o (576→576), k/v (576→192), gate/up (576→1536), down (1536→576),
# then q/k/v fused (576→960) and gate/up fused (576→3072) as tritium's decode loop calls them, and 4096×4096.
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 960), (576, 3072), (4096, 4096)]


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


# Projections that read the same input; tritium's decode loop (tritium.runtime) runs each set as one matmul.
FUSED_SETS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))


def _fuse(weights: dict, fused: bool) -> list[tuple[str, object]]:
    """(name, QuantizedWeight) in model order; with ``fused``, q/k/v and gate/up concatenated row-wise."""
    from tritium.quant.grids import GroupLayout, QuantizedWeight

    if not fused:
        return list(weights.items())
    out, names = [], list(weights)
    done = set()
    for name in names:
        if name in done:
            continue
        prefix = name.rsplit(".", 2)[0]
        group = next((s for s in FUSED_SETS if name.endswith(s[0])), None)
        members = [f"{prefix}.{m}" for m in group] if group else [name]
        if not all(m in weights for m in members):
            members = [name]
        parts = [weights[m] for m in members]
        if len(parts) > 1:
            first = parts[0]
            layout = GroupLayout(sum(q.layout.out_features for q in parts), first.layout.in_features,
                                 first.layout.group_size, first.layout.per_tensor)
            cat = lambda key: None if getattr(first, key) is None else torch.cat([getattr(q, key) for q in parts])  # noqa: E731
            parts = [QuantizedWeight(cat("codes"), cat("scale"), first.grid, layout, zero=cat("zero"),
                                     shift=cat("shift"))]
        done.update(members)
        out.append(("+".join(m.rsplit(".", 1)[1] for m in members), parts[0]))
    return out


def model_sweep(model_name: str, trials: int, layout: str, fused: bool = False) -> dict:
    """All linears of ``model_name`` in order, fp32 vs packed, batch 1: time per shape and per sweep."""
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import load_model

    model, _, _ = load_model(model_name)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    layers = []
    for name, qweight in _fuse(result.weights, fused):
        pw = pack_quantized(qweight, ternary_layout=layout)
        planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size) if planes_available() else None
        args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero,
                planes)
        layers.append((f"{pw.in_features}->{pw.out_features}", qweight.dequantize().contiguous(), args))
    del model, result
    inputs = {w: torch.randn(1, w) for w in {lay[1].shape[1] for lay in layers}}

    def sweep(packed: bool) -> dict[str, float]:
        per_shape: dict[str, float] = {}
        for shape, dense, args in layers:
            x = inputs[dense.shape[1]]
            start = time.perf_counter()
            packed_linear(x, *args) if packed else F.linear(x, dense)
            per_shape[shape] = per_shape.get(shape, 0.0) + time.perf_counter() - start
        return per_shape

    sweep(False), sweep(True)  # warm-up: builds the kernel's scratch buffers
    float_runs, packed_runs = [], []
    for _ in range(trials):
        float_runs.append(sweep(False))
        packed_runs.append(sweep(True))
    shapes = list(float_runs[0])
    counts = {shape: sum(1 for lay in layers if lay[0] == shape) for shape in shapes}
    rows = []
    for shape in shapes + ["all"]:
        f = statistics.median(sum(r.values()) if shape == "all" else r[shape] for r in float_runs)
        q = statistics.median(sum(r.values()) if shape == "all" else r[shape] for r in packed_runs)
        rows.append({"shape": shape, "count": len(layers) if shape == "all" else counts[shape],
                     "fp32_us": f * 1e6, "packed_us": q * 1e6, "speedup": f / q})
    return {"model": model_name, "linears": len(layers), "trials": trials, "rows": rows, "fused": fused}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group", default="channel", help="'channel' or a group size (e.g. 64)")
    parser.add_argument("--layout", default="base3", choices=["base3", "2bit"])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seconds-per-trial", type=float, default=0.05)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--model-sweep", metavar="MODEL", help="also time every linear of this model, in order")
    parser.add_argument("--sweep-trials", type=int, default=15)
    parser.add_argument("--fused", action="store_true",
                        help="sweep with q/k/v and gate/up fused into one matmul each, as tritium's decode loop runs them")
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
    sweep = None
    if args.model_sweep:
        sweep = model_sweep(args.model_sweep, args.sweep_trials, args.layout, args.fused)
        print(f"\nDecode-step sweep{' (q/k/v and gate/up fused)' if args.fused else ''}: all {sweep['linears']} "
              f"matmuls of {sweep['model']} once each, in model order, "
              f"median of {sweep['trials']} interleaved sweeps (time summed per shape)\n")
        print("| shape | linears | fp32 µs | packed µs | speedup |\n|---|---|---|---|---|")
        for r in sweep["rows"]:
            print(f"| {r['shape']} | {r['count']} | {r['fp32_us']:.0f} | {r['packed_us']:.0f} | {r['speedup']:.2f}× |")
    if args.json:
        from tritium.utils.io import atomic_write_json

        atomic_write_json(args.json, {**header, "rows": rows, "model_sweep": sweep})
    return 0


if __name__ == "__main__":
    sys.exit(main())
