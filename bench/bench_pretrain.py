"""Pretraining step cost: TriLM (and BitNet b1.58) against FloatLM of the same size, same run.

Each architecture trains the same random batches with AdamW; the steps are interleaved
(float, trilm, bitnet, float, ...) so a busy machine slows them all alike, and the median of
the timed steps is reported after warm-up. The target: a TriLM step costs no more than
1.3× a FloatLM step.

    python bench/bench_pretrain.py --sizes tiny-m,tiny-l --vocab 8192 --seqlen 256 --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tritium.models.spectra import build_model, count_parameters
from tritium.train.losses import LanguageModelLoss
from tritium.train.pretrain import flops_per_token, peak_flops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny-m,tiny-l")
    p.add_argument("--archs", default="float,trilm,bitnet")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed steps per architecture")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak, peak_source = peak_flops(device)
    archs = args.archs.split(",")
    loss_fn = LanguageModelLoss()
    rows = []
    for size in args.sizes.split(","):
        models, optims = {}, {}
        for arch in archs:
            models[arch] = build_model(arch, size, args.vocab, context=args.seqlen, seed=0).to(device)
            optims[arch] = torch.optim.AdamW(models[arch].parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        gen = torch.Generator().manual_seed(0)
        times = {arch: [] for arch in archs}
        for step in range(args.warmup + args.steps):
            batch = torch.randint(0, args.vocab, (args.batch, args.seqlen), generator=gen).to(device)
            for arch in archs:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                    loss, _ = loss_fn(models[arch], batch)
                loss.backward()
                optims[arch].step()
                optims[arch].zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[arch].append(time.perf_counter() - start)
        tokens = args.batch * args.seqlen
        base = statistics.median(times["float"]) if "float" in times else None
        for arch in archs:
            median = statistics.median(times[arch])
            fpt = flops_per_token(models[arch], args.seqlen)
            row = {"size": size, "arch": arch, "params": count_parameters(models[arch]),
                   "step_seconds": median, "tokens_per_second": tokens / median,
                   "vs_float": median / base if base else None, "mfu": fpt * tokens / median / peak}
            rows.append(row)
            print(f"{size:8s} {arch:7s} step {median * 1e3:8.1f} ms  {tokens / median:9.0f} tok/s  "
                  f"{'' if base is None else f'{median / base:5.2f}x float'}  MFU {row['mfu'] * 100:5.1f}%  "
                  f"linear params {row['params']['linear']:,}")
    meta = {"command": "python bench/bench_pretrain.py " + " ".join(argv or __import__("sys").argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
            "date": time.strftime("%Y-%m-%d"), "peak_flops": peak, "peak_source": peak_source,
            "batch_tokens": args.batch * args.seqlen}
    print(json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
