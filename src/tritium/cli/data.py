"""``tritium data ingest``: its flags, and the handler that makes them an :class:`~tritium.jobs.ingest.IngestJob`,
runs it and prints the token folder's summary."""

from __future__ import annotations

from ..jobs.ingest import DEFAULT_TOKENIZER


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="prepare pretraining data: tokenize a corpus once into memory-mapped token files")
    data_sub = d.add_subparsers(dest="data_command", required=True)
    i = data_sub.add_parser(
        "ingest", help="tokenize documents into train.bin / val.bin plus tokens.json and the tokenizer",
        description="Documents: text, reST, Markdown, HTML, jsonl and parquet files, folders and globs of them, "
                    "Debian documentation packages (.deb, e.g. python3.11-doc) and hf:<path>[:<config>]:<split>.")
    i.add_argument("sources", nargs="+", help="files, folders, globs, .deb packages or hf: specs")
    i.add_argument("--out", required=True, help="token folder to write (replaced whole if it is one already)")
    i.add_argument("--tokenizer", help=f"a named model ({DEFAULT_TOKENIZER}), HF model or tokenizer folder, .gguf, "
                                       f"hub id or another token folder (default {DEFAULT_TOKENIZER})")
    i.add_argument("--train-tokenizer", type=int, metavar="VOCAB",
                   help="learn a byte-level BPE tokenizer of VOCAB tokens from the training documents instead")
    i.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    i.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    i.add_argument("--text-field", default="text", help="jsonl key / parquet or HF column holding the text")
    i.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_data(args) -> int:
    from ..jobs.ingest import IngestJob, ingest_corpus
    from .common import job_from_args

    if args.data_command != "ingest":  # argparse allows only the subcommands above
        raise ValueError(f"unknown data command {args.data_command!r}")
    result = ingest_corpus(job_from_args(IngestJob, args))
    print(result.folder.summary())
    print(f"  time  {result.seconds:.1f} s ({result.tokenizer_seconds:.1f} s for the tokenizer)")
    return 0
