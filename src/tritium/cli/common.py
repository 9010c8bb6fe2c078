"""Argument types and the argument groups several commands share, declared once."""

from __future__ import annotations

import argparse
from dataclasses import fields


def group_size(value: str):
    if value in ("channel", "tensor"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--group takes a positive integer, 'channel' or 'tensor', not {value!r}")


def activation_group(value: str):
    if value == "token":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--act-group takes 'token' or a positive integer, not {value!r}")


def csv_list(value: str) -> list[str]:
    return [] if value.lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]


def add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="named default (smollm2-135m), HF folder, .gguf file or hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")


def add_eval_args(p, data_flag: str = "--data") -> None:
    """The evaluation flags every command shares. ``tritium distill`` names the evaluation data
    folder ``--data-dir``, because its ``--data`` is the training text."""
    p.add_argument("--eval", type=csv_list,
                   help="perplexity data sets, comma separated (wikitext2, ptb, a file); 'none' to skip")
    p.add_argument("--zeroshot", type=csv_list, help="zero-shot tasks, comma separated (piqa, arc_easy, ...)")
    p.add_argument("--limit", type=int, help="evaluate only the first N perplexity chunks")
    p.add_argument("--zeroshot-limit", type=int, help="evaluate only the first N documents of each task")
    p.add_argument("--harness", type=csv_list, help="zero-shot scorer: tritium (default), lm-eval "
                                                    "(lm-evaluation-harness on tritium's local task configs), or "
                                                    "both, comma separated")
    p.add_argument("--seqlen", type=int, help="perplexity chunk length (default 2048)")
    p.add_argument("--batch-size", type=int, help="chunks per forward pass")
    p.add_argument(data_flag, help="folder holding the evaluation data sets (overrides $TRITIUM_DATA)")
    p.add_argument("--out", help="run folder (default: a new runs/<model>-<recipe>-<time>); one holding a run "
                                 "already is refused unless it is this same job unfinished (it resumes) or --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds another or a finished run")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def job_from_args(job_class, args):
    """The job description of ``job_class`` from parsed flags: each field takes the flag of its name."""
    values = vars(args)
    return job_class(**{f.name: values[f.name] for f in fields(job_class) if f.name in values})


def print_table(rows) -> None:
    from ..eval.report import markdown_table

    print(markdown_table(rows), end="")


def print_results(result) -> None:
    """Where a job's report (and its saved model, if any) went."""
    print(f"\nresults: {result.md_path}  {result.json_path}"
          + ("" if result.model_folder is None else f"\nmodel:   {result.model_folder}"))
