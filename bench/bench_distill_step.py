"""Seconds per distillation step (float teacher forward, QAT student forward + backward, OFF + KL, AdamW), the cost
that decides how many tokens a CPU budget buys.

    python bench/bench_distill_step.py --model smollm2-135m --student w2-latents --threads 2
    python bench/bench_distill_step.py --student w2-scales --profile 25

Students: ``w2-latents`` (uniform W2g128, latents and scales training with the frozen-codes scale gradient, as the
chain from a PTQ start), ``w2-scales`` (codes frozen: E2E-QP) and ``ternary`` (DLT g128). The weights start from
round-to-nearest, which costs the same per step as a PTQ start. Prints the CPU's SIMD flags beside the figures;
``--profile N`` adds torch.profiler's N most expensive ops of one more step.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

STUDENTS = ("w2-latents", "w2-scales", "ternary")


def build_student(teacher, student: str, group: int):
    from tritium.quant.grids import UniformGrid
    from tritium.train.dlt import DLTConfig, to_dlt_, to_uniform_qat_

    model = copy.deepcopy(teacher)
    for p in model.parameters():
        p.requires_grad_(False)
    if student == "ternary":
        linears = to_dlt_(model, DLTConfig(group=group, ragged_groups=True))
        trainable = [p for m in linears.values() for p in (m.weight, m.alpha, m.shift)]
    else:
        grid = UniformGrid(bits=2, group=group, symmetric=False, ragged_groups=True)
        linears = to_uniform_qat_(model, grid, scale_gradient="codes")
        trainable = []
        for m in linears.values():
            if student == "w2-scales":
                m.freeze_codes()
            else:
                trainable.append(m.weight)
            trainable += [m.scale, m.zero]
    for p in trainable:
        p.requires_grad_(True)
    return model.train(), trainable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--student", choices=STUDENTS, default="w2-latents")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--profile", type=int, default=0, help="also profile one step and print its N top ops")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if min(args.batch, args.seqlen, args.steps, args.group) < 1:
        parser.error("--batch, --seqlen, --steps and --group must be at least 1")

    import contextlib

    import torch

    from tritium.kernels.cpu import simd_flags
    from tritium.models import load_model
    from tritium.train.losses import DistillationLoss, LossConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, _, _ = load_model(args.model)
    student, trainable = build_student(teacher, args.student, args.group)
    loss_fn = DistillationLoss(teacher, LossConfig(), student=student)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = torch.randint(0, teacher.config.vocab_size, (args.batch, args.seqlen),
                          generator=torch.Generator().manual_seed(0))

    def step():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
        with autocast:
            loss, _ = loss_fn(student, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    tokens = args.batch * args.seqlen
    report = {"model": args.model, "student": args.student, "precision": args.precision,
              "threads": torch.get_num_threads(), "flags": simd_flags(), "tokens_per_step": tokens,
              "step_seconds": [round(s, 3) for s in seconds],
              "tokens_per_second": round(tokens / (sum(seconds) / len(seconds)), 1)}
    print(f"{args.model}, student {args.student}, {args.precision}, {report['threads']} threads, {tokens} tokens a "
          f"step: {', '.join(f'{s:.2f}' for s in seconds)} s ({report['tokens_per_second']} tok/s)")
    print("SIMD flags: " + " ".join(report["flags"]))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    if args.json:
        from tritium.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
