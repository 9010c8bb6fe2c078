"""``tritium pretrain`` and ``tritium suite``: their flags, and the handlers that make them a PretrainJob or
SuiteJob (:mod:`tritium.jobs.pretraining`), run it and print the result."""

from __future__ import annotations

import argparse

from ..jobs.pretraining import DEFAULT_VAL_FRACTION


def _csv(value: str) -> list[str]:
    return [] if value.lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}")


def _add_shared(p, token_count) -> None:
    p.add_argument("--data", nargs="+", required=True,
                   help="a token folder (tritium data ingest), or text/jsonl/parquet files, folders, .deb or hf: "
                        "specs, tokenized into <out>/tokens first")
    p.add_argument("--tokenizer", help="for raw text: a named model (smollm2-135m, the default), HF folder or "
                                      "tokenizer folder")
    p.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="for raw text: train a byte-level BPE of "
                                                                         "this size on the corpus instead")
    p.add_argument("--val-fraction", type=float, help=f"for raw text: documents held out ({DEFAULT_VAL_FRACTION})")
    p.add_argument("--tokens", type=token_count, help="training tokens per model (e.g. 1M, 300B)")
    p.add_argument("--steps", type=int, help="optimizer steps per model (instead of --tokens)")
    p.add_argument("--seqlen", type=int, help="training context (default 256)")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward on each process")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's rate for the size)")
    p.add_argument("--shards", type=int, help="absmean scales per ternary matrix (TriLM under model parallelism)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (a rerun resumes)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast where the hardware has it (GPU, CPU with AMX or AVX512-BF16), else fp32")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--eval", type=_csv, help="perplexity data sets besides the held-out split (default wikitext2)")
    p.add_argument("--limit", type=int, help="evaluate only the first N chunks of each data set")
    p.add_argument("--zeroshot", type=_csv, help="zero-shot tasks, comma separated (piqa, arc_easy, ...)")
    p.add_argument("--zeroshot-limit", type=int)
    p.add_argument("--data-dir", help="folder of the evaluation data sets (overrides $TRITIUM_DATA)")
    p.add_argument("--out", help="run folder (default: a new runs/<what>-<time>); one that holds a run already is "
                                 "refused, unless it is this same job unfinished (it resumes) or --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds another or a finished run")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")


def add_pretrain_parsers(sub, token_count) -> None:
    p = sub.add_parser("pretrain", help="pretrain one FloatLM, TriLM or BitNet b1.58 from scratch (Spectra)")
    p.add_argument("--arch", required=True, help="float, trilm or bitnet")
    p.add_argument("--size", required=True, help="tiny-xs … tiny-xl, tiny-256 (widths that 256 divides), or Spectra's 99m … 3.9b")
    p.add_argument("--recipe", help="a pretraining YAML (default spectra-<arch>: the paper's schedule)")
    _add_shared(p, token_count)

    s = sub.add_parser("suite", help="pretrain a matched FloatLM/TriLM/QuantLM family and fit scaling laws")
    s.add_argument("--sizes", type=_csv, help="comma separated sizes (e.g. tiny-s,tiny-m,tiny-l)")
    s.add_argument("--kinds", type=_csv, help="comma separated: float, trilm (tri), bitnet, quant")
    s.add_argument("--quant-bits", type=_ints, help="QuantLM bits (Spectra: 3,4,6,8)")
    s.add_argument("--recipe", help="a suite YAML (suite-cpu is the 2-core miniature)")
    _add_shared(s, token_count)


def cmd_pretrain(args) -> int:
    from ..jobs.pretraining import PretrainJob, pretrain_model
    from .common import job_from_args

    result = pretrain_model(job_from_args(PretrainJob, args))
    entry = result.entry
    print(f"{entry.family} {entry.size}: held-out loss {entry.val_loss:.4f} (ppl {entry.metrics['val_ppl']:.2f}), "
          + ", ".join(f"{k} {v:.4g}" for k, v in entry.metrics.items() if k != "val_ppl")
          + f"; {entry.tokens_per_second:,.0f} tok/s, MFU {entry.mfu:.1%}")
    print(f"report: {result.report}\nmodel:  {result.model_folder}")
    return 0


def cmd_suite(args) -> int:
    from ..jobs.pretraining import SuiteJob, pretrain_suite
    from .common import job_from_args

    result = pretrain_suite(job_from_args(SuiteJob, args))
    print(result.report.read_text())
    print(f"report: {result.report}")
    return 0
