"""``tritium eval`` and ``tritium info``: the flags of an EvalJob and an InfoJob."""

from __future__ import annotations

import json

from .common import add_eval_args, add_model_args, job_from_args, print_table


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model (float or saved by tritium)")
    add_model_args(e)
    add_eval_args(e)


def add_info_parser(sub) -> None:
    i = sub.add_parser("info", help="architecture, layers, parameters and what can be quantized")
    add_model_args(i)
    i.add_argument("--json", action="store_true")


def cmd_eval(args) -> int:
    from ..jobs.evaluate import EvalJob, evaluate_model

    result = evaluate_model(job_from_args(EvalJob, args))
    print_table([result.row])
    print(f"\nresults: {result.md_path}  {result.json_path}")
    return 0


def cmd_info(args) -> int:
    from ..jobs.info import InfoJob, model_info

    info = model_info(job_from_args(InfoJob, args))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:36s} {value}")
    return 0
