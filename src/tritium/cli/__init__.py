"""Command line: ``tritium quantize``, ``tritium eval``, ``tritium info``, ``tritium distill``,
``tritium pack``, ``tritium run``, ``tritium export``, ``tritium data``, ``tritium pretrain``, ``tritium suite``.

One module per command declares its flags; the work is a job of :mod:`tritium.jobs`. A TritiumError
(bad input, named with its fix) prints as one line and exits 2; anything else is a bug and shows its
traceback, exit 1.
"""

from __future__ import annotations

import argparse
import sys

BUG_LINE = ("tritium: an unexpected error, a bug in tritium rather than in your input: please report it with the "
            "command and the traceback below")


def build_parser() -> argparse.ArgumentParser:
    from .common import add_eval_args, add_model_args, csv_list, group_size
    from .data import add_data_parser
    from .distill import add_distill_parser, token_count
    from .eval import add_eval_parser, add_info_parser
    from .pack import add_pack_parsers
    from .pretrain import add_pretrain_parsers
    from .quantize import add_quantize_parser

    parser = argparse.ArgumentParser(prog="tritium",
                                     description="Quantize LLMs to ternary and 2/3/4 bits, and prove they still work.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_quantize_parser(sub)
    add_eval_parser(sub)
    add_distill_parser(sub, add_model_args, add_eval_args, group_size, csv_list)
    add_pack_parsers(sub)
    add_data_parser(sub)
    add_pretrain_parsers(sub, token_count)
    add_info_parser(sub)
    return parser


# One handler per command, looked up by name when the command runs (so a test may replace one here).
# The job modules load only for their own command.
from .data import cmd_data  # noqa: E402
from .distill import cmd_distill  # noqa: E402
from .eval import cmd_eval, cmd_info  # noqa: E402
from .pack import cmd_export, cmd_pack, cmd_run  # noqa: E402
from .pretrain import cmd_pretrain, cmd_suite  # noqa: E402
from .quantize import cmd_quantize  # noqa: E402

__all__ = ["build_parser", "main", "cmd_quantize", "cmd_eval", "cmd_info", "cmd_distill", "cmd_pack", "cmd_run",
           "cmd_export", "cmd_data", "cmd_pretrain", "cmd_suite"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..utils.errors import TritiumError
    from ..utils.progress import set_progress_bars
    from ..utils.runs import run_session

    set_progress_bars(not getattr(args, "no_progress", False))  # every bar, tritium's and the libraries'
    try:
        from ..kernels.cpu import check_path_request

        check_path_request()  # a bad TRITIUM_CPU_PATH fails here, not after loading and calibrating
        handler = globals()[f"cmd_{args.command}"]
        with run_session() as session:  # the run folders the command claims are closed however it ends
            code = handler(args)
            session.failed = code != 0
        return code
    except TritiumError as err:
        print(f"tritium: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # not an input tritium refused: its traceback follows (exit 1), with this line before it
        print(BUG_LINE, file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
