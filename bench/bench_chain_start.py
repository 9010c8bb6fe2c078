"""Where the latent weights of a QAT student sit at step 0, for each way of starting it (issue 14).

The 1M-token ablation's TesseraQ start ended worse than the plain start (84.65 against 57.86).
This bench measures the start itself, on every quantized linear of the model, for:

  plain       DLT from the float weights (γ = group mean, α = least-squares fit: the plain start)
  copy+refit  the ablation's path: the PTQ model's dequantized weights copied into the latents and
              the DLT quantizer re-fitted to them (a TWN start, as the ablation's TesseraQ run)
  codes       this branch's path: latents, α, γ from the PTQ codes (load_codes), same TWN start
  codes-dlt   the same from a DLT-grid PTQ result (the start `--init-from` accepts for a DLT recipe)

and for a uniform W2 student: plain (RTN from float) and codes (from a W2 PTQ result). Per start:
how many codes differ from the PTQ codes, the relative error of the step-0 weights against the PTQ
weights, the latent's distance to its nearest rounding threshold (in units of the group's α or
scale), the share of latents outside DLT's STE clip |W − γ| ≤ α (they get no gradient), and, over a
few DLT + OFF + KL training steps on the same batches, the share of codes that flip per step.

The PTQ results here are RTN (seconds), not TesseraQ (half an hour): the geometry that matters,
every latent on a grid point, is the same for any method's result.

  TRITIUM_DATA=../shared/data python bench/bench_chain_start.py --out runs/bench-chain-start
  python bench/bench_chain_start.py --model <tiny folder> --steps 2 --group 32     # plumbing check
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_distill import machine, markdown_table, save_report
from tritium.export.hf import save_fake_quantized
from tritium.methods import config_from_dict, quantize_
from tritium.models import load_model
from tritium.quant.grids import TWN_THRESHOLD_FACTOR, TernaryGrid, UniformGrid, grid_to_dict
from tritium.train.data import load_sequences
from tritium.train.distill import DistillConfig, prepare_student
from tritium.train.dlt import DLTLinear
from tritium.train.losses import DistillationLoss
from tritium.train.qat import UniformQATLinear, effective_scale_zero
from tritium.train.start import load_start_codes
from tritium.train.trainer import Trainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--data", default="wikitext2-valid", help="training text for the flip count (never a test split)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="DLT + OFF + KL steps over which flips are counted (0: none)")
    p.add_argument("--lr", type=float, default=3e-4, help="latent lr (ternaryllm-cpu's)")
    p.add_argument("--lr-quant", type=float, default=6e-4, help="α/γ lr (ternaryllm-cpu's)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def ptq_folder(model, tokenizer, grid, folder: Path):
    """RTN on ``grid``, saved as `tritium quantize` saves it; returns (folder, QuantizationResult)."""
    ptq = copy.deepcopy(model)
    result = quantize_(ptq, config_from_dict("rtn", grid))
    save_fake_quantized(ptq, tokenizer, folder, result.method, grid_to_dict(result.grid), (), result.method_args,
                        weights=result.weights)
    return folder, result


def float_folder_of(folder: Path, out: Path) -> Path:
    """The PTQ model's dequantized weights as a plain float folder: what init_from copied before this branch."""
    model, tokenizer, _ = load_model(folder)
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@torch.no_grad()
def dlt_margins(module: DLTLinear) -> dict:
    w, shift, alpha = module.weight.float(), module.shift.float(), module.alpha.float()
    layout = module.layout
    centered = (w - layout.expand(shift)).abs()
    delta = TWN_THRESHOLD_FACTOR * layout.expand(layout.reduce(centered, lambda g: g.mean(-1)))
    a = layout.expand(alpha.abs())
    return {"distance": ((centered - delta).abs() / a).flatten(), "outside_clip": (centered > a).flatten()}


@torch.no_grad()
def uniform_margins(module: UniformQATLinear) -> dict:
    s, z = effective_scale_zero(module.scale.float(), module.zero.float(), module.grid)
    v = module.weight.float() / module.layout.expand(s)
    unclamped = torch.round(v) + module.layout.expand(z)
    inside = (unclamped >= 0) & (unclamped <= module.grid.max_code)
    distance = torch.where(inside, 0.5 - (v - torch.round(v)).abs(), torch.full_like(v, float("nan")))
    return {"distance": distance.flatten(), "outside_clip": (~inside).flatten()}


@torch.no_grad()
def describe_start(name: str, students: dict, ptq) -> dict:
    differ = total = 0
    err_num = err_den = 0.0
    distances, outside = [], []
    for layer, module in students.items():
        q = module.to_quantized()
        reference = ptq.weights[layer]
        differ += int((q.codes.to(torch.int16) != reference.codes.to(torch.int16)).sum())
        total += q.codes.numel()
        ref_w = reference.dequantize()
        err_num += float(((module.quantized_weight().float() - ref_w) ** 2).sum())
        err_den += float((ref_w ** 2).sum())
        m = dlt_margins(module) if isinstance(module, DLTLinear) else uniform_margins(module)
        distances.append(m["distance"])
        outside.append(m["outside_clip"])
    d = torch.cat(distances)
    d = d[~torch.isnan(d)]
    quantile = lambda p: round(float(torch.quantile(d[torch.randperm(d.numel())[:1_000_000]], p)), 4)  # noqa: E731
    return {"start": name, "codes ≠ PTQ": f"{differ / total:.2%}",
            "weight rel. error": f"{(err_num / err_den) ** .5:.4f}",
            "distance p10": quantile(0.1), "distance median": quantile(0.5),
            "< 0.05 from a threshold": f"{float((d < 0.05).float().mean()):.2%}",
            "outside STE clip": f"{float(torch.cat(outside).float().mean()):.2%}"}


def flips_per_step(model, config: DistillConfig, sequences, out: Path, build) -> list[float]:
    """Train ``config`` from the start ``build(student)`` makes; the share of codes that change at each step."""
    student = copy.deepcopy(model)
    teacher = copy.deepcopy(model)
    students = build(student)
    previous = {n: m.to_quantized().codes.clone() for n, m in students.items()}
    shares = []

    def count(trainer, record):
        changed = total = 0
        for n, m in students.items():
            codes = m.to_quantized().codes
            changed += int((codes != previous[n]).sum())
            total += codes.numel()
            previous[n] = codes.clone()
        shares.append(changed / total)

    # distill() prepares its own student; here the start is built by hand, so run its trainer part directly
    loss_fn = DistillationLoss(teacher, config.loss_config(), student)
    Trainer(student, loss_fn, sequences, config.train_config(), out, callbacks=[count]).run(resume=False)
    return shares


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    out = Path(args.out or f"runs/bench-chain-start-{time.strftime('%Y%m%d-%H%M%S')}")
    started = dt.datetime.now(dt.timezone.utc)
    print(f"bench: loading {args.model}", file=sys.stderr)
    model, tokenizer, _ = load_model(args.model)
    model.requires_grad_(False)
    twn = TernaryGrid(variant="twn", group=args.group, ragged_groups=True)
    dlt = TernaryGrid(variant="dlt", group=args.group, ragged_groups=True)
    w2 = UniformGrid(bits=2, group=args.group, ragged_groups=True)
    train = {"steps": max(args.steps, 1), "micro_batch_size": args.micro_batch_size, "progress": False,
             "device": "cpu", "precision": "fp32", "optim": {"lr": args.lr, "lr_quant": args.lr_quant,
                                                           "schedule": "constant"}}
    loss = {"off_weight": 1.0, "kl_weight": 1.0}
    rows, flips = [], {}
    sequences = None
    if args.steps:
        sequences = load_sequences([args.data], tokenizer, args.seqlen, model=model, data_path=args.data_dir)
        sequences = sequences[: args.steps * args.micro_batch_size]
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        tmp = Path(tmp)
        twn_folder, twn_ptq = ptq_folder(model, tokenizer, twn, tmp / "twn")
        dlt_folder, dlt_ptq = ptq_folder(model, tokenizer, dlt, tmp / "dlt")
        w2_folder, w2_ptq = ptq_folder(model, tokenizer, w2, tmp / "w2")
        copied = float_folder_of(twn_folder, tmp / "twn-float")
        dlt_config = DistillConfig(grid=dlt, loss=loss, train=train)

        def plain(student):
            return prepare_student(student, dlt_config)

        def copy_refit(student):  # before this branch: copy the dequantized weights, re-fit α and γ
            return prepare_student(student, dlt_config, DistillConfig(grid=dlt, loss=loss, train=train,
                                                                     init_from=str(copied)).start_source())

        def from_twn_codes(student):  # TWN is DLT with γ = 0: the same codes, started exactly
            students = prepare_student(student, dlt_config, DistillConfig(grid=dlt, train=train,
                                                                         init_from=str(copied)).start_source())
            load_start_codes(students, str(twn_folder))
            return students

        def from_dlt_codes(student):
            config = DistillConfig(grid=dlt, train=train, init_from=str(dlt_folder))
            return prepare_student(student, config, config.start_source())

        for name, build, ptq in [("plain (float)", plain, twn_ptq), ("copy+refit (TWN start)", copy_refit, twn_ptq),
                                 ("codes (TWN start)", from_twn_codes, twn_ptq),
                                 ("codes (DLT start)", from_dlt_codes, dlt_ptq)]:
            print(f"bench: DLT start {name}", file=sys.stderr)
            rows.append({"student": "DLT ternary", **describe_start(name, build(copy.deepcopy(model)), ptq)})
            if args.steps:
                flips[name] = flips_per_step(model, dlt_config, sequences, tmp / "train", build)
                rows[-1]["flips per step"] = ", ".join(f"{f:.3%}" for f in flips[name])
        w2_config = DistillConfig(grid=w2, train=train, init_from=str(w2_folder))
        for name, start in [("plain (float, RTN fit)", None), ("codes (W2 RTN start)", w2_config.start_source())]:
            students = prepare_student(copy.deepcopy(model), w2_config, start)
            rows.append({"student": "uniform W2", **describe_start(name, students, w2_ptq)})
    report = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "args": vars(args), "rows": rows,
              "flips_per_step": flips}
    command = "python bench/bench_chain_start.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# bench_chain_start\n\n`{command}`  \n{report['date']} on {report['machine']['cpu']}, "
            f"{args.model}, g{args.group}. Distances in units of the group's α (DLT) or scale (uniform); "
            f"PTQ = RTN on the named grid.\n\n" + markdown_table(rows))
    save_report(out, "bench_chain_start", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
