"""The packed-linear kernel on a GPU: correctness against the reference op, then batch-1 speed against cuBLAS.

    python bench/bench_gpu_kernels.py --device cuda --out OUT/kernels      # writes kernels.json and kernels.md

1. ``tritium::packed_linear`` on ``--device`` (the Triton kernel on CUDA when triton is installed) against
   ``packed_linear_reference`` (dequantize, then F.linear) on every grid tritium packs, ragged groups and
   batch 1, 3 and 17 included: the largest absolute error, relative to the output's scale.
2. Batch-1 time of the packed kernel against ``F.linear`` on the dense bf16 weights (cuBLAS), at 4096² and
   at SmolLM2-135M's shapes, timed with CUDA events (median of trials); on the CPU (the plumbing test) with
   the wall clock and tiny counts. The packed kernel keeps fp32 arithmetic and no tensor cores, so this
   measures where it stands, not a target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tritium.kernels import TRITON_REGISTERED, packed_linear, packed_linear_reference  # noqa: E402
from tritium.pack import pack_quantized  # noqa: E402
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight  # noqa: E402

GRIDS = {
    "ternary-absmean-channel": TernaryGrid("absmean", group="channel"),
    "ternary-dlt-g128": TernaryGrid("dlt", group=128, ragged_groups=True),
    "ternary-twn-g32-ragged": TernaryGrid("twn", group=32, ragged_groups=True),
    "w2g128": UniformGrid(2, group=128, ragged_groups=True),
    "w3g64-sym": UniformGrid(3, group=64, symmetric=True, ragged_groups=True),
    "w4g128": UniformGrid(4, group=128, ragged_groups=True),
}
# (in, out): SmolLM2-135M's q/o, k/v, gate/up, down, fused q/k/v and gate/up, then 4096².
SMOLLM2_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 960), (576, 3072)]
SQUARE = (4096, 4096)


def _packed_args(in_features, out_features, grid, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    qweight = quantize_weight(weight, grid)
    if qweight.shift is not None:  # RTN leaves DLT's shift at zero: give it values so the γ·Σx term is checked
        qweight.shift = (torch.randn(qweight.shift.shape, generator=g) * 0.01).half().float()
    pw = pack_quantized(qweight)
    args = tuple(t.to(device) if isinstance(t, torch.Tensor) else t
                 for t in (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size,
                           pw.implicit_zero))
    return qweight, args


def check_correctness(device, shapes) -> list[dict]:
    rows = []
    for name, grid in GRIDS.items():
        for in_features, out_features in shapes:
            _, args = _packed_args(in_features, out_features, grid, device)
            for batch in (1, 3, 17):
                x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(batch)).to(device)
                got = packed_linear(x, *args).float()
                want = packed_linear_reference(x, *args).float()
                scale = float(want.abs().max()) or 1.0
                error = float((got - want).abs().max())
                rows.append({"grid": name, "shape": f"{in_features}->{out_features}", "batch": batch,
                             "max_abs_error": error, "relative": error / scale, "ok": error / scale < 1e-4})
    return rows


def _timer(device):
    if device.type == "cuda":
        def run(fn, iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e3 / iters  # µs
    else:
        def run(fn, iters):
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - start) * 1e6 / iters
    return run


def bench_speed(device, shapes, grid_names, iters, trials) -> list[dict]:
    timer = _timer(device)
    rows = []
    for name in grid_names:
        grid = GRIDS[name]
        for in_features, out_features in shapes:
            qweight, args = _packed_args(in_features, out_features, grid, device)
            dense = qweight.dequantize().to(device=device, dtype=torch.bfloat16)  # the same weights, for cuBLAS
            x = torch.randn(1, in_features, device=device, dtype=torch.bfloat16)
            packed_fn = lambda: packed_linear(x, *args)  # noqa: E731
            dense_fn = lambda: F.linear(x, dense)  # noqa: E731
            for fn in (packed_fn, dense_fn):  # warm-up: Triton compiles on the first call
                for _ in range(3):
                    fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            packed_us, dense_us = [], []
            for _ in range(trials):  # interleaved, so a clock change hits both
                packed_us.append(timer(packed_fn, iters))
                dense_us.append(timer(dense_fn, iters))
            p, d = statistics.median(packed_us), statistics.median(dense_us)
            weight_bytes = args[0].numel() + args[1].numel() * args[1].element_size()
            rows.append({"grid": name, "shape": f"{in_features}->{out_features}", "packed_us": round(p, 2),
                         "cublas_bf16_us": round(d, 2), "packed_vs_cublas": round(d / p, 3),
                         "packed_GBps": round(weight_bytes / (p * 1e-6) / 1e9, 1),
                         "bf16_GBps": round(dense.numel() * 2 / (d * 1e-6) / 1e9, 1)})
            print(f"bench: {name} {in_features}->{out_features}: packed {p:.1f} us, cuBLAS bf16 {d:.1f} us",
                  file=sys.stderr)
    return rows


def markdown(report) -> str:
    lines = [f"# packed_linear on {report['device_name']}", "",
             f"Triton kernel registered: {report['triton_registered']}; correctness cells: "
             f"{sum(r['ok'] for r in report['correctness'])}/{len(report['correctness'])} within 1e-4 of the "
             f"output scale (largest relative error {max(r['relative'] for r in report['correctness']):.2e}).", "",
             "| grid | shape (in->out) | packed µs | cuBLAS bf16 µs | cuBLAS time / packed time | packed GB/s | bf16 GB/s |",
             "|---|---|---|---|---|---|---|"]
    for r in report["speed"]:
        lines.append(f"| {r['grid']} | {r['shape']} | {r['packed_us']} | {r['cublas_bf16_us']} | "
                     f"{r['packed_vs_cublas']} | {r['packed_GBps']} | {r['bf16_GBps']} |")
    bad = [r for r in report["correctness"] if not r["ok"]]
    if bad:
        lines += ["", "Cells outside the tolerance:", ""] + [f"- {r}" for r in bad[:20]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="file stem: writes STEM.json and STEM.md")
    p.add_argument("--grids", default="ternary-absmean-channel,ternary-dlt-g128,w2g128,w4g128",
                   help="grids timed for speed (all grids are checked for correctness)")
    p.add_argument("--iters", type=int, default=200, help="calls per timed trial")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--small", action="store_true", help="tiny shapes only (the CPU plumbing test)")
    args = p.parse_args()
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    check_shapes = [(96, 40), (200, 33)] if args.small else [(576, 192), (1536, 576), (4096, 4096), (200, 77)]
    speed_shapes = [(96, 40)] if args.small else [*SMOLLM2_SHAPES, SQUARE]
    report = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton_registered": TRITON_REGISTERED}
    if device.type == "cuda" and not TRITON_REGISTERED:
        print("bench: warning: triton is missing, CUDA tensors use the reference op", file=sys.stderr)
    report["correctness"] = check_correctness(device, check_shapes)
    report["speed"] = bench_speed(device, speed_shapes, args.grids.split(","), args.iters, args.trials)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["ok"] for r in report["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(main())
