"""CPU batch-1 matvec: tritium::packed_linear (ternary) against torch.nn.functional.linear in fp32.

Both run in the same process, interleaved trial by trial, on SmolLM2-135M's linear
shapes and on 4096×4096; the figure is the ratio of the medians (target ≥ 4×).

    PYTHONPATH=src python bench/bench_kernels.py [--threads 2] [--group channel] [--layout base3] [--json out.json]
    PYTHONPATH=src python bench/bench_kernels.py --model-sweep smollm2-135m   # also the decode-step sweep
    PYTHONPATH=src python bench/bench_kernels.py --path avx2,avx512 --threads 1   # kernel paths side by side
    PYTHONPATH=src python bench/bench_kernels.py --contention   # 1 and 2 threads, idle and beside a busy process

The header records the CPU's SIMD flags, the kernel paths this CPU runs and the one(s) timed.

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
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tritium.kernels import (  # noqa: E402
    active_path,
    available_paths,
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    packed_linear,
    packed_linear_reference,
    round_activations_int8,
    set_cpu_path,
)
from tritium.kernels.cpu import PATH_DESCRIPTIONS, openmp_max_threads, simd_flags  # noqa: E402
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


def _packed_args(in_features, out_features, group, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    qweight = quantize_weight(weight, TernaryGrid("absmean", group=group))
    pw = pack_quantized(qweight, ternary_layout=layout)
    # What a TernaryLinear passes on a SIMD path: the bit-plane copy of the codes (the portable path ignores it;
    # built whatever path is active now, since the bench may switch paths between calls).
    planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size) if cpu_kernel_status()["loaded"] else None
    args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero,
            planes)
    x = torch.randn(1, in_features, generator=g)
    return pw, qweight.dequantize().contiguous(), args, x  # fp32 multiplies the same (dequantized) weights


def bench_shape(in_features, out_features, group, layout, trials, seconds_per_trial, paths, seed=0):
    pw, dense, args, x = _packed_args(in_features, out_features, group, layout, seed)
    float_fn = lambda: F.linear(x, dense)  # noqa: E731
    packed_fn = lambda: packed_linear(x, *args)  # noqa: E731
    errors = {}
    for path in paths:
        set_cpu_path(path)
        seen = round_activations_int8(x, in_features, pw.group_size) if path == "avx2" else x
        errors[path] = (packed_fn() - packed_linear_reference(seen, *args[:-1])).abs().max().item()
    # Calibrate calls per trial on the slowest, then interleave trials so load changes hit every side alike.
    for fn in (float_fn, packed_fn):
        for _ in range(5):
            fn()
    per_call = [time_calls(float_fn, 5)]
    for path in paths:
        set_cpu_path(path)
        per_call.append(time_calls(packed_fn, 5))
    calls = max(3, int(seconds_per_trial / max(max(per_call), 1e-7)))
    float_times, packed_times = [], {path: [] for path in paths}
    for _ in range(trials):
        float_times.append(time_calls(float_fn, calls))
        for path in paths:
            set_cpu_path(path)
            packed_times[path].append(time_calls(packed_fn, calls))
    f_med = statistics.median(float_times)
    per_path = {}
    for path in paths:
        p_med = statistics.median(packed_times[path])
        per_path[path] = {"packed_us": p_med * 1e6, "speedup": f_med / p_med,
                          "packed_best_us": min(packed_times[path]) * 1e6,
                          "speedup_best": min(float_times) / min(packed_times[path]),
                          "max_abs_error_vs_reference": errors[path]}
    first = per_path[paths[0]]
    return {
        "shape": f"{in_features}->{out_features}", "in": in_features, "out": out_features,
        "fp32_us": f_med * 1e6, "fp32_best_us": min(float_times) * 1e6,
        # the first timed path's figures at the top level, as before paths existed
        "packed_us": first["packed_us"], "speedup": first["speedup"], "packed_best_us": first["packed_best_us"],
        "speedup_best": first["speedup_best"], "max_abs_error_vs_reference": first["max_abs_error_vs_reference"],
        "paths": per_path, "bits_per_weight": bits_per_weight(pw)["bits_per_weight"], "calls_per_trial": calls,
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


def model_sweep(model_name: str, trials: int, layout: str, fused: bool = False, paths=None) -> dict:
    """All linears of ``model_name`` in order, fp32 vs packed (on each of ``paths``), batch 1: time per shape
    and per sweep; the first path's figures are the rows, every path's whole-sweep time is in ``paths``."""
    paths = paths or [active_path()]
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import load_model

    model, _, _ = load_model(model_name)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    layers = []
    for name, qweight in _fuse(result.weights, fused):
        pw = pack_quantized(qweight, ternary_layout=layout)
        planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size) if cpu_kernel_status()["loaded"] else None
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

    for path in paths:  # warm-up: builds the kernel's scratch buffers
        set_cpu_path(path)
        sweep(False), sweep(True)
    float_runs, path_runs = [], {path: [] for path in paths}
    for _ in range(trials):
        float_runs.append(sweep(False))
        for path in paths:
            set_cpu_path(path)
            path_runs[path].append(sweep(True))
    packed_runs = path_runs[paths[0]]
    shapes = list(float_runs[0])
    counts = {shape: sum(1 for lay in layers if lay[0] == shape) for shape in shapes}
    rows = []
    for shape in shapes + ["all"]:
        f = statistics.median(sum(r.values()) if shape == "all" else r[shape] for r in float_runs)
        q = statistics.median(sum(r.values()) if shape == "all" else r[shape] for r in packed_runs)
        rows.append({"shape": shape, "count": len(layers) if shape == "all" else counts[shape],
                     "fp32_us": f * 1e6, "packed_us": q * 1e6, "speedup": f / q})
    fp32_total = statistics.median(sum(r.values()) for r in float_runs)
    totals = {path: {"packed_us": statistics.median(sum(r.values()) for r in runs) * 1e6} for path, runs in path_runs.items()}
    for entry in totals.values():
        entry["speedup"] = fp32_total * 1e6 / entry["packed_us"]
    return {"model": model_name, "linears": len(layers), "trials": trials, "rows": rows, "fused": fused,
            "path": paths[0], "paths": totals}


# ------------------------------------------------------------------ thread pools under load

BUSY_LOOP = "while True: pass"  # one other process keeping one core busy


def _call_times(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def contention(shapes, group, layout, calls: int, threads_list=(1, 2)) -> list[dict]:
    """Per-call times (median and 90th percentile) of fp32 and packed at 1 and 2 threads, with the machine
    as it is ("idle") and beside one busy process: a kernel that wakes threads it cannot get, or waits for
    them spinning, shows here as a tail far above fp32's."""
    cases = [_packed_args(i, o, group, layout) for i, o in shapes]
    results = []
    before = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for load in ("idle", "busy"):
                busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load == "busy" else None
                try:
                    if busy:
                        time.sleep(0.3)  # let it reach the run queue
                    for (pw, dense, args, x), (i, o) in zip(cases, shapes):
                        float_fn = lambda: F.linear(x, dense)  # noqa: E731
                        packed_fn = lambda: packed_linear(x, *args)  # noqa: E731
                        _call_times(float_fn, 5), _call_times(packed_fn, 5)
                        f_times, p_times = [], []
                        for _ in range(max(1, calls // 20)):  # interleaved in runs of 20 calls
                            f_times += _call_times(float_fn, 20)
                            p_times += _call_times(packed_fn, 20)
                        q = lambda ts, p: statistics.quantiles(ts, n=10)[8] if p == 90 else statistics.median(ts)  # noqa: E731
                        results.append({"threads": threads, "load": load, "shape": f"{i}->{o}", "calls": len(f_times),
                                        "fp32_median_us": q(f_times, 50) * 1e6, "fp32_p90_us": q(f_times, 90) * 1e6,
                                        "packed_median_us": q(p_times, 50) * 1e6, "packed_p90_us": q(p_times, 90) * 1e6,
                                        "openmp_threads": openmp_max_threads()})
                finally:
                    if busy:
                        busy.terminate()
                        busy.wait()
    finally:
        torch.set_num_threads(before)
    return results


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
    parser.add_argument("--path", default=None,
                        help="kernel path(s) to time, comma-separated (avx512, avx2, portable) or 'all' that this CPU "
                             "runs; default: the one tritium picks")
    parser.add_argument("--shapes", default=None, help="in x out pairs, e.g. '576x576,4096x4096' (default: SmolLM2's and 4096²)")
    parser.add_argument("--contention", action="store_true",
                        help="also time per call at 1 and 2 threads, idle and beside one busy process")
    parser.add_argument("--contention-calls", type=int, default=400)
    args = parser.parse_args(argv)
    group = args.group if args.group in ("channel", "tensor") else int(args.group)
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in pair.split("x")) for pair in args.shapes.split(",")]
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    build_start = time.perf_counter()
    loaded = load_cpu_kernel()
    build_seconds = time.perf_counter() - build_start
    if not loaded:
        paths = ["reference"]
    elif args.path in (None, ""):
        paths = [active_path()]
    elif args.path == "all":
        paths = available_paths()
    else:
        paths = [name.strip() for name in args.path.split(",")]
        for name in paths:
            set_cpu_path(name)  # a path this CPU cannot run stops here, before any timing
        set_cpu_path(paths[0])
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_simd_flags": " ".join(simd_flags()),
        "kernel_paths_available": ", ".join(available_paths()) if loaded else "none",
        "kernel_paths_timed": ", ".join(paths),
        "kernel": "; ".join(PATH_DESCRIPTIONS[p] for p in paths) if loaded
                  else f"reference (no CPU kernel: {cpu_kernel_status()['error']})",
        "openmp_threads": openmp_max_threads() if loaded else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "kernel_build_or_load_s": round(build_seconds, 2),
        "weights": f"ternary absmean, group={group}, layout={args.layout}, fp16 scales",
        "baseline": "torch.nn.functional.linear, fp32, same dequantized weights, batch 1",
    }
    for key, value in header.items():
        print(f"{key:24s} {value}")
    timed = paths if loaded else [None]
    rows = []
    for i, o in shapes:
        if loaded:
            rows.append(bench_shape(i, o, group, args.layout, args.trials, args.seconds_per_trial, paths))
    print()
    print(f"| {'shape':>11s} | {'fp32 µs':>9s} | {'path':>8s} | {'packed µs':>9s} | {'speedup':>7s} | {'best/best':>9s} | "
          f"{'bits/w':>6s} | {'max |err|':>9s} |")
    print("|" + "|".join("-" * w for w in (13, 11, 10, 11, 9, 11, 8, 11)) + "|")
    for r in rows:
        for path in timed:
            q = r["paths"][path]
            print(f"| {r['shape']:>11s} | {r['fp32_us']:9.1f} | {path:>8s} | {q['packed_us']:9.1f} | {q['speedup']:6.2f}× | "
                  f"{q['speedup_best']:8.2f}× | {r['bits_per_weight']:6.3f} | {q['max_abs_error_vs_reference']:9.2e} |")
    if loaded:
        set_cpu_path(paths[0])
    print(f"\nspeedup = median fp32 time / median packed time over {args.trials} interleaved trials; "
          f"target ≥ 4×. Total bench time {time.perf_counter() - started:.1f} s.")
    sweep = None
    if args.model_sweep:
        sweep = model_sweep(args.model_sweep, args.sweep_trials, args.layout, args.fused, paths if loaded else None)
        print(f"\nDecode-step sweep{' (q/k/v and gate/up fused)' if args.fused else ''}: all {sweep['linears']} "
              f"matmuls of {sweep['model']} once each, in model order, "
              f"median of {sweep['trials']} interleaved sweeps (time summed per shape)\n")
        print("| shape | linears | fp32 µs | packed µs | speedup |\n|---|---|---|---|---|")
        for r in sweep["rows"]:
            print(f"| {r['shape']} | {r['count']} | {r['fp32_us']:.0f} | {r['packed_us']:.0f} | {r['speedup']:.2f}× |")
        print(f"(rows: the {sweep['path']} path) whole sweep per path: " +
              ", ".join(f"{p} {v['packed_us']:.0f} µs ({v['speedup']:.2f}×)" for p, v in sweep["paths"].items()))
    loaded_contention = None
    if args.contention and loaded:
        set_cpu_path(paths[0])
        loaded_contention = contention([s for s in shapes if s[0] * s[1] < 4096 * 4096] or shapes, group, args.layout,
                                       args.contention_calls)
        print(f"\nPer call, {paths[0]} path, median / 90th percentile µs; 'busy': beside one other process spinning "
              "on a core\n")
        print("| threads | load | shape | fp32 µs | packed µs | fp32 p90 | packed p90 |\n|---|---|---|---|---|---|---|")
        for r in loaded_contention:
            print(f"| {r['threads']} | {r['load']} | {r['shape']} | {r['fp32_median_us']:.1f} | {r['packed_median_us']:.1f} | "
                  f"{r['fp32_p90_us']:.1f} | {r['packed_p90_us']:.1f} |")
    if args.json:
        from tritium.utils.io import atomic_write_json

        atomic_write_json(args.json, {**header, "rows": rows, "model_sweep": sweep, "contention": loaded_contention})
    return 0


if __name__ == "__main__":
    sys.exit(main())
