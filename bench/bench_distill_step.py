"""What one TernaryLLM distillation step costs on this machine, under each precision and allocator setting.

Each setting runs in its own process, because glibc reads GLIBC_TUNABLES only at process start:
  fp32 / bf16 autocast  ×  default malloc / GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages)
Every process builds the same DLT g128 student of the model, with the float model as its OFF + KL teacher,
and times --steps trainer steps after one warmup step: seconds per step, tokens/s, and the minor page
faults each step takes (getrusage). A bare float training step (forward, CE, backward, AdamW) is timed
in the same process as the baseline.

  python bench/bench_distill_step.py                          # SmolLM2-135M, 4×256 tokens, 4 timed steps
  python bench/bench_distill_step.py --steps 1 --settings fp32,fp32+hugetlb     # a smoke run (a minute)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# this folder: the same baseline step, table, machine facts and report writer
from bench_distill import bare_float_step, machine, markdown_table, save_report
from tritium.utils.hardware import NATIVE_BF16_CPU_FLAGS, cpu_flags

# glibc ≥ 2.35: back large allocations by transparent huge pages (read at process start only)
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a model name or folder load_model accepts")
    p.add_argument("--steps", type=positive_int, default=4, help="timed steps per setting (after one warmup step)")
    p.add_argument("--seqlen", type=positive_int, default=256)
    p.add_argument("--micro-batch-size", type=positive_int, default=4)
    p.add_argument("--group", type=positive_int, default=128)
    p.add_argument("--settings", default=",".join(f"{prec}{'+hugetlb' if huge else ''}" for prec, huge in SETTINGS),
                   help="comma separated, each fp32 or bf16 with an optional +hugetlb")
    p.add_argument("--out", help="result folder (default runs/bench-distill-step-<time>)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one setting, in this process
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def random_sequences(vocab_size: int, n: int, seqlen: int) -> torch.Tensor:
    # Step cost does not depend on which tokens are in the batch; random ids keep the bench free of data files.
    return torch.randint(0, vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(0))


def timed_steps(step, steps: int) -> dict:
    """Run ``step()`` once to warm up, then ``steps`` times, timing each and counting its page faults."""
    step()
    seconds, faults = [], []
    for _ in range(steps):
        f0, t0 = minor_faults(), time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
        faults.append(minor_faults() - f0)
    return {"seconds_per_step": sum(seconds) / steps, "min_seconds": min(seconds), "max_seconds": max(seconds),
            "faults_per_step": round(sum(faults) / steps)}


def timed_bare_float_steps(model, sequences, args) -> dict:
    """The baseline, bench_distill's bare float step (forward, CE, backward, AdamW; no trainer)."""
    step = bare_float_step(model, "cpu", bf16=args.precision == "bf16")
    batches = iter(sequences.split(args.micro_batch_size))
    return timed_steps(lambda: step(next(batches)), args.steps)


def run_child(args) -> dict:
    import copy

    from tritium.models import load_model
    from tritium.train.dlt import DLTConfig, quant_parameters, to_dlt_
    from tritium.train.losses import DistillationLoss, LossConfig
    from tritium.train.trainer import OptimConfig, TrainConfig, Trainer

    model, _, _ = load_model(args.model, device="cpu")
    model.requires_grad_(False)
    sequences = random_sequences(model.config.vocab_size, (args.steps + 1) * args.micro_batch_size, args.seqlen)
    tokens = args.micro_batch_size * args.seqlen

    bare_result = timed_bare_float_steps(model, sequences, args)

    student = copy.deepcopy(model)
    to_dlt_(student, DLTConfig(group=args.group, ragged_groups=True))
    latent, quant = quant_parameters(student)
    for param in latent + quant:  # as `tritium distill` trains by default: embeddings, norms, head stay frozen
        param.requires_grad_(True)
    loss_fn = DistillationLoss(model, LossConfig(off_weight=1.0, kl_weight=1.0), student)
    config = TrainConfig(steps=args.steps + 1, micro_batch_size=args.micro_batch_size, progress=False,
                         device="cpu", precision=args.precision,
                         optim=OptimConfig(lr=3e-4, lr_quant=6e-4, schedule="constant"))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(student, loss_fn, sequences, config, out)
        distill_result = timed_steps(trainer.train_step, args.steps)
    return {"precision": args.precision, "hugetlb": HUGE_PAGE_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""),
            "bare_float": {**bare_result, "tokens_per_second": tokens / bare_result["seconds_per_step"]},
            "dlt_off": {**distill_result, "tokens_per_second": tokens / distill_result["seconds_per_step"]}}


def run_setting(args, precision: str, hugetlb: bool) -> dict:
    env = dict(os.environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb")]
    if hugetlb:
        tunables.append(HUGE_PAGE_TUNABLE)
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    command = [sys.executable, __file__, "--child", "--precision", precision, "--model", args.model,
               "--steps", str(args.steps), "--seqlen", str(args.seqlen),
               "--micro-batch-size", str(args.micro_batch_size), "--group", str(args.group)]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_settings(text: str) -> list[tuple[str, bool]]:
    settings = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        precision, _, extra = item.partition("+")
        if precision not in ("fp32", "bf16") or extra not in ("", "hugetlb"):
            sys.exit(f"unknown setting {item!r}: use fp32 or bf16, optionally followed by +hugetlb")
        settings.append((precision, extra == "hugetlb"))
    return settings


def rows_of(results: list[dict]) -> list[dict]:
    base = results[0]["dlt_off"]["seconds_per_step"]
    rows = []
    for r in results:
        rows.append({"setting": r["precision"] + (" + hugetlb" if r["hugetlb"] else ""),
                     "bare float s/step": round(r["bare_float"]["seconds_per_step"], 2),
                     "bare float tok/s": round(r["bare_float"]["tokens_per_second"], 1),
                     "bare float faults/step": r["bare_float"]["faults_per_step"],
                     "DLT+OFF s/step": round(r["dlt_off"]["seconds_per_step"], 2),
                     "DLT+OFF min–max s": f"{r['dlt_off']['min_seconds']:.2f}–{r['dlt_off']['max_seconds']:.2f}",
                     "DLT+OFF tok/s": round(r["dlt_off"]["tokens_per_second"], 1),
                     "DLT+OFF faults/step": r["dlt_off"]["faults_per_step"],
                     "DLT+OFF / bare": round(r["dlt_off"]["seconds_per_step"] / r["bare_float"]["seconds_per_step"], 2),
                     "speed-up vs first row": round(base / r["dlt_off"]["seconds_per_step"], 2)})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    settings = parse_settings(args.settings)
    started = dt.datetime.now(dt.timezone.utc)
    results = []
    for precision, hugetlb in settings:
        print(f"bench: {precision}{' + hugetlb' if hugetlb else ''}", file=sys.stderr)
        results.append(run_setting(args, precision, hugetlb))
    rows = rows_of(results)
    command = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    native = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in cpu_flags()]
    report = {"command": command, "date": started.isoformat(timespec="seconds"),
              "machine": {**machine(), "native_bf16": native},
              "model": args.model, "batch": f"{args.micro_batch_size}x{args.seqlen}", "results": results}
    text = (f"# bench_distill_step\n\n`{command}`  \n{report['date']} on {report['machine']['cpu']} "
            f"({report['machine']['cores']} cores, native bf16: {', '.join(native) or 'none'}, torch "
            f"{torch.__version__})  \nmodel {args.model}, batch {report['batch']}, {args.steps} timed steps "
            f"after one warmup step, each setting in its own process\n\n{markdown_table(rows)}")
    out = Path(args.out or f"runs/bench-distill-step-{time.strftime('%Y%m%d-%H%M%S')}")
    save_report(out, "bench_distill_step", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
