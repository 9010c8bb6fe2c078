"""``tritium data ingest``: tokenize a corpus once into a token folder (wired into tritium.cli)."""

from __future__ import annotations

import sys
import time

DEFAULT_TOKENIZER = "smollm2-135m"


def cmd_data(args) -> int:
    from ..data.tokens import ingest, load_tokenizer_spec, train_tokenizer, training_documents
    from ..utils.runs import claim_output

    if args.data_command != "ingest":  # argparse allows only the subcommands above
        raise ValueError(f"unknown data command {args.data_command!r}")
    if args.tokenizer and args.train_tokenizer:
        raise ValueError("give either --tokenizer or --train-tokenizer, not both")
    # A lock beside --out stops a second ingest into the same folder (the later rename would silently win);
    # an existing token folder is replaced whole, as before, and ingest refuses any other folder.
    claim_output(args.out, "data ingest", overwrite=True)
    start = time.perf_counter()
    if args.train_tokenizer:
        print(f"tritium: learning a {args.train_tokenizer}-token byte-level BPE from the training documents",
              file=sys.stderr)
        tokenizer = train_tokenizer(training_documents(args.sources, args.val_fraction, args.seed, args.text_field),
                                    args.train_tokenizer, progress=not args.no_progress)
        name = tokenizer.name_or_path
    else:
        name = args.tokenizer or DEFAULT_TOKENIZER
        tokenizer = load_tokenizer_spec(name)
    tokenizer_seconds = time.perf_counter() - start
    folder = ingest(args.sources, args.out, tokenizer, val_fraction=args.val_fraction, seed=args.seed,
                    text_field=args.text_field, progress=not args.no_progress, tokenizer_name=name)
    total = time.perf_counter() - start
    print(folder.summary())
    print(f"  time  {total:.1f} s ({tokenizer_seconds:.1f} s for the tokenizer)")
    return 0
