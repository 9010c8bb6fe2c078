"""TernaryLLM ablation in miniature, and trainer throughput against a bare float training step.

Runs, at one token budget on the same WikiText-2 *validation* text (never the test split):
  absmean   absmean ternary per channel, plain STE, cross-entropy only (no KD)
  dlt-kl    DLT g128, logit KL only (no OFF)
  dlt-off   DLT g128, OFF + logit KL
  dlt-off-ptq  DLT + OFF started from a saved PTQ result on the DLT grid (--ptq-start), if given
and reports WikiText-2 test perplexity (GPTQ protocol, seqlen 2048, first --limit chunks) for the
float model, each untrained start and each trained student. Throughput: tokens/s of a bare float
training step (forward, CE, backward, AdamW: no trainer) against the trainer running the same float
model and batch, and against the DLT+OFF distillation step, all measured in this run.

  python bench/bench_distill.py --tokens 20000 --limit 2          # a smoke run (minutes)
  python bench/bench_distill.py --tokens 1M --limit 40 --precision bf16 --resume --out runs/ablation-1M
                                                                  # the issue's CPU budget (hours; rerun to resume)
"""

from __future__ import annotations

import argparse
import copy
import json
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tritium.data import load_eval_text
from tritium.eval.perplexity import perplexity, tokenize_eval_text
from tritium.models import load_model
from tritium.quant.grids import TernaryGrid
from tritium.cli.distill import token_count
from tritium.train.data import load_sequences
from tritium.train.distill import DistillConfig, distill
from tritium.train.dlt import DLTConfig, to_dlt_, to_fake_quant_
from tritium.train.losses import LanguageModelLoss, next_token_ce
from tritium.utils.hardware import uses_bf16
from tritium.train.trainer import OptimConfig, TrainConfig, Trainer
from tritium.utils.hardware import cpu_name
from tritium.utils.io import atomic_write_json, atomic_write_text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=token_count, default=20000, help="training budget per variant")
    p.add_argument("--limit", type=int, default=2, help="WikiText-2 test chunks of 2048 tokens to evaluate")
    p.add_argument("--seqlen", type=int, default=256, help="training sequence length")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4, help="latent-weight learning rate (DLT)")
    p.add_argument("--lr-quant", type=float, default=6e-4, help="α/γ learning rate (DLT)")
    p.add_argument("--lr-absmean", type=float, default=3e-4, help="latent-weight learning rate of the absmean run")
    p.add_argument("--variants", default="absmean,dlt-kl,dlt-off", help="comma separated; dlt-off-ptq needs "
                   "--ptq-start")
    p.add_argument("--ptq-start", help="a saved PTQ result on the DLT grid (tritium model folder, e.g. `tritium "
                   "quantize --grid ternary --variant dlt --group 128 --ragged-groups`) to start dlt-off-ptq from; "
                   "it starts exactly from its codes, and a start on another grid is refused")
    p.add_argument("--throughput-steps", type=int, default=4, help="timed steps of each throughput measurement")
    p.add_argument("--data", default="wikitext2-valid", help="training text (never a test split)")
    p.add_argument("--data-dir", help="folder of the data sets (default $TRITIUM_DATA)")
    p.add_argument("--out", help="result folder (default runs/bench-distill-<time>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="keep each finished piece (float row, throughput, variant rows) in --out and each variant's "
                        "training checkpoints there; a rerun with the same --out skips or resumes them")
    p.add_argument("--checkpoint-every", type=int, default=25, help="with --resume: steps between checkpoints")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training precision of every variant and of the throughput baselines (bf16: autocast, "
                        "which uses AMX on CPUs that have it); evaluation stays fp32")
    return p.parse_args(argv)


def markdown_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def save_report(out: Path, stem: str, report: dict, text: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically under ``out`` and print the table and where it went."""
    atomic_write_json(out / f"{stem}.json", report)
    atomic_write_text(out / f"{stem}.md", text)
    print(text)
    print(f"results: {out / f'{stem}.md'}")


def wikitext_ppl(model, eval_ids, limit) -> float:
    return perplexity(model, eval_ids, seqlen=2048, limit=limit, progress=False).ppl


def bare_float_step(model, device, bf16: bool = False):
    """``step(batch)``, a batch on ``device``: forward, CE, backward, AdamW on a float copy of ``model``, no trainer.

    What any training loop must at least cost (under the same bf16 autocast as the trainer when ``bf16``).
    """
    model = copy.deepcopy(model).to(device).train()
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))

    def step(batch):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = next_token_ce(model(batch, use_cache=False).logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_float_tokens_per_second(model, sequences, micro_batch, steps, device, bf16: bool = False) -> float:
    """Tokens/s of :func:`bare_float_step` on random batches; the first step warms up allocators and is not timed."""
    step = bare_float_step(model, device, bf16)
    gen = torch.Generator().manual_seed(0)
    seconds = 0.0
    for i in range(steps + 1):
        batch = sequences[torch.randint(0, sequences.shape[0], (micro_batch,), generator=gen)].to(device)
        start = time.perf_counter()
        step(batch)
        if i:
            seconds += time.perf_counter() - start
    return steps * micro_batch * sequences.shape[1] / seconds


def trainer_tokens_per_second(model, sequences, micro_batch, steps, out, loss_fn=None, quantize=None,
                              precision: str = "auto") -> float:
    """The trainer on the same model and batch; the first step is left out as warmup."""
    model = copy.deepcopy(model).train()
    model.requires_grad_(True)
    if quantize == "dlt":
        to_dlt_(model, DLTConfig(group=128, ragged_groups=True))
    config = TrainConfig(steps=steps + 1, micro_batch_size=micro_batch, progress=False, device="cpu",
                         precision=precision, optim=OptimConfig(lr=1e-5, schedule="constant"))
    result = Trainer(model, loss_fn or LanguageModelLoss(), sequences, config, out).run(resume=False)
    timed = result.records[1:]
    return sum(micro_batch * sequences.shape[1] for _ in timed) / sum(r["step_seconds"] for r in timed)


def cached(path: Path, enabled: bool, compute):
    """``compute()``, kept as JSON at ``path`` when ``enabled`` so that a rerun reads it back."""
    if enabled and path.is_file():
        print(f"bench: reusing {path}", file=sys.stderr)
        return json.loads(path.read_text())
    value = compute()
    if enabled:
        atomic_write_json(path, value)
    return value


def variant_config(name: str, args) -> DistillConfig:
    train = {"tokens": args.tokens, "micro_batch_size": args.micro_batch_size, "grad_accum": args.grad_accum,
             "checkpoint_every": args.checkpoint_every if args.resume else 0, "device": args.device, "precision": args.precision, "progress": True,
             "optim": {"lr": args.lr, "lr_quant": args.lr_quant, "schedule": "cosine", "warmup_steps": 2,
                       "min_lr_ratio": 0.1}}
    if name == "absmean":
        train["optim"] = {**train["optim"], "lr": args.lr_absmean}
        return DistillConfig(grid=TernaryGrid(variant="absmean", group="channel"), train=train,
                             loss={"off_weight": 0.0, "kl_weight": 0.0, "ce_weight": 1.0})
    grid = TernaryGrid(variant="dlt", group=args.group, ragged_groups=True)
    loss = {"off_weight": 0.0 if name == "dlt-kl" else 1.0, "kl_weight": 1.0, "ce_weight": 0.0, "temperature": 1.0}
    return DistillConfig(grid=grid, train=train, loss=loss,
                         init_from=args.ptq_start if name == "dlt-off-ptq" else None)


def untrained_ppl(model, config: DistillConfig, eval_ids, limit) -> float:
    """Perplexity of a variant's starting point: its quantizer applied with no training."""
    start = copy.deepcopy(model)
    if config.uses_dlt:
        to_dlt_(start, config.dlt_config())
    else:
        to_fake_quant_(start, config.grid)
    with torch.no_grad():
        return wikitext_ppl(start, eval_ids, limit)


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - {"absmean", "dlt-kl", "dlt-off", "dlt-off-ptq"}
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}")
    if "dlt-off-ptq" in variants and not args.ptq_start:
        print("bench: dlt-off-ptq skipped: pass --ptq-start <saved TesseraQ ternary result>", file=sys.stderr)
        variants.remove("dlt-off-ptq")
    out = Path(args.out or f"runs/bench-distill-{time.strftime('%Y%m%d-%H%M%S')}")
    from tritium.utils.runs import claim_output

    claim_output(out, "bench_distill.py", overwrite=True)  # --resume continues it; a second writer is refused
    started = dt.datetime.now(dt.timezone.utc)
    print(f"bench: loading {args.model}", file=sys.stderr)
    model, tokenizer, _ = load_model(args.model, device=args.device)
    model.requires_grad_(False)
    eval_ids = tokenize_eval_text(tokenizer, load_eval_text("wikitext2", args.data_dir))
    sequences = load_sequences([args.data], tokenizer, args.seqlen, model=model, data_path=args.data_dir)
    print(f"bench: {sequences.shape[0]} training sequences of {args.seqlen} tokens from {args.data}", file=sys.stderr)

    rows = []

    def float_row():
        t0 = time.perf_counter()
        ppl = wikitext_ppl(model, eval_ids, args.limit)
        return {"variant": "float", "tokens": 0, "ppl_start": None, "ppl": round(ppl, 3), "vs_float": 1.0,
                "train_tok_s": None, "seconds": round(time.perf_counter() - t0, 1)}

    rows.append(cached(out / "float.json", args.resume, float_row))
    float_ppl = rows[0]["ppl"]
    print(f"bench: float ppl {float_ppl:.3f}", file=sys.stderr)

    print("bench: throughput", file=sys.stderr)
    mb, steps = args.micro_batch_size, args.throughput_steps
    bf16 = uses_bf16(args.precision, args.device)

    def measure_throughput():
        bare = bare_float_tokens_per_second(model, sequences, mb, steps, args.device, bf16)
        trainer_float = trainer_tokens_per_second(model, sequences, mb, steps, out / "throughput-float",
                                                  precision=args.precision)
        return {"batch": f"{mb}x{args.seqlen}", "steps": steps, "precision": "bf16" if bf16 else "fp32",
                "bare_float_tok_s": round(bare, 1), "trainer_float_tok_s": round(trainer_float, 1),
                "trainer_overhead": round(bare / trainer_float, 3)}

    throughput = cached(out / "throughput.json", args.resume, measure_throughput)
    bare = throughput["bare_float_tok_s"]
    print(f"bench: {throughput}", file=sys.stderr)

    for name in variants:
        config = variant_config(name, args)

        def run_variant():
            t0 = time.perf_counter()
            start_ppl = untrained_ppl(model, config, eval_ids, args.limit) if name != "dlt-off-ptq" else None
            student = copy.deepcopy(model)
            _, train = distill(student, tokenizer, config, out / name, sequences=sequences, teacher=model,
                               resume=args.resume)
            ppl = wikitext_ppl(student, eval_ids, args.limit)
            # a resumed run's tokens/s covers only its own steps: the rate, not a total
            return {"variant": name, "tokens": train.tokens,
                    "ppl_start": round(start_ppl, 3) if start_ppl else None, "ppl": round(ppl, 3),
                    "vs_float": round(ppl / float_ppl, 3), "train_tok_s": round(train.tokens_per_second, 1),
                    "first_loss": round(train.losses()[0], 4), "last_loss": round(train.losses()[-1], 4),
                    "resumed_from_step": train.resumed_from, "seconds": round(time.perf_counter() - t0, 1)}

        rows.append(cached(out / name / "row.json", args.resume, run_variant))
        print(f"bench: {rows[-1]}", file=sys.stderr)
        if name == "dlt-off":
            throughput["dlt_off_distill_tok_s"] = rows[-1]["train_tok_s"]
            throughput["dlt_off_vs_bare_float"] = round(bare / rows[-1]["train_tok_s"], 3)

    command = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    report = {"command": command, "date": started.isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "train_data": args.data, "eval": f"wikitext2 test, GPTQ protocol, seqlen 2048, "
              f"first {args.limit} chunks", "rows": rows, "throughput": throughput,
              "notes": ["smollm2-135m's embedded weights are already 4-bit g32 (the float teacher is that model)",
                        "ppl_start: the variant's quantizer with no training; tok/s: optimizer steps only"]}
    text = (f"# bench_distill\n\n`{command}`  \n{report['date']} on {report['machine']['cpu']} "
            f"({report['machine']['cores']} cores, torch {report['machine']['torch']})  \n"
            f"eval: {report['eval']}; training text: {args.data}\n\n{markdown_table(rows)}\n"
            f"throughput ({throughput['batch']} per step):\n\n{markdown_table([throughput])}\n")
    save_report(out, "bench_distill", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
