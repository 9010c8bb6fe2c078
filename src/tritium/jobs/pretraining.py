"""``tritium pretrain`` (one FloatLM, TriLM or BitNet from scratch) and ``tritium suite`` (a
matched Spectra family); both end in a report with a table, scaling-law fits and plots."""

from __future__ import annotations

import sys
from pathlib import Path


DEFAULT_VAL_FRACTION = 0.05


def _token_folder(args, out: Path):
    """The token folder to train on: given, or made from raw text under ``out/tokens`` (reused on a rerun)."""
    from ..data.tokens import (TokenFolder, check_token_folder, ingest, load_tokenizer_spec, train_tokenizer,
                               training_documents)
    from ..train.data import TrainDataError

    if len(args.data) == 1 and TokenFolder.is_folder(args.data[0]):
        tokens = TokenFolder.open(args.data[0])
        if args.train_tokenizer:
            raise TrainDataError(f"{tokens.path} is a token folder: it was tokenized already, with "
                                 f"{tokens.meta.get('tokenizer')!r}, so --train-tokenizer cannot apply to it. Drop "
                                 f"--train-tokenizer to train on it, or pass the raw text to tokenize it again")
        _refuse_other_tokenization(args, tokens)
        check_token_folder(tokens, args.data_dir)  # no evaluation split in the training tokens
        return tokens
    folder = out / "tokens"
    if TokenFolder.is_folder(folder):  # a rerun: the first run tokenized the text with the same flags
        tokens = TokenFolder.open(folder)
        _refuse_other_tokenization(args, tokens)
        check_token_folder(tokens, args.data_dir)
        print(f"tritium: reusing {folder}, tokenized by an earlier run (delete it to tokenize again)", file=sys.stderr)
        return tokens
    val_fraction = args.val_fraction if args.val_fraction is not None else DEFAULT_VAL_FRACTION
    if args.train_tokenizer:  # learnt from the training documents only: the held-out ones stay unseen
        tokenizer = train_tokenizer(training_documents(args.data, val_fraction, data_path=args.data_dir),
                                    args.train_tokenizer)
    else:
        tokenizer = load_tokenizer_spec(args.tokenizer or "smollm2-135m")
    print(f"tritium: tokenizing {', '.join(args.data)} into {folder}", file=sys.stderr)
    return ingest(args.data, folder, tokenizer, val_fraction=val_fraction, progress=not args.no_progress,
                  data_path=args.data_dir)


def _refuse_other_tokenization(args, tokens) -> None:
    """A token folder fixes the tokenizer and the held-out split. Asking for others must fail: training on the
    folder anyway would silently give a model, and a report, of something other than what was asked for."""
    from ..data.tokens import load_tokenizer_spec
    from ..train.data import TrainDataError

    redo = "pass the raw text (and a new --out) to tokenize it that way"
    if args.tokenizer and load_tokenizer_spec(args.tokenizer).get_vocab() != tokens.tokenizer().get_vocab():
        raise TrainDataError(f"{tokens.path} was tokenized with {tokens.meta.get('tokenizer')!r}, not with "
                             f"{args.tokenizer!r}: the token folder fixes the tokenizer. Drop --tokenizer, or {redo}")
    if args.val_fraction is not None and args.val_fraction != tokens.meta.get("val_fraction"):
        raise TrainDataError(f"{tokens.path} holds out {tokens.meta.get('val_fraction')} of its documents, not "
                             f"{args.val_fraction}: the token folder fixes the split. Drop --val-fraction, or {redo}")


def _train_overrides(args) -> dict:
    train = {}
    if args.tokens is not None:
        train.update(tokens=args.tokens, steps=None)
    if args.steps is not None:
        train.update(steps=args.steps, tokens=None)
    for key in ("micro_batch_size", "grad_accum", "checkpoint_every", "precision", "device", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.no_progress:
        train["progress"] = False
    return train


def cmd_pretrain(args) -> int:
    from ..spectra import SuiteEntry, write_suite_report
    from ..eval.size import size_report
    from ..models.spectra import load_spectra_model
    from ..quant.grids import TernaryGrid
    from ..utils.runs import claim_run_folder, job_settings
    from ..train.pretrain import pretrain, pretrain_config
    from .suite import FAMILY, SuiteConfig, evaluate_model, model_linears

    train = {"tokens": 1_000_000, "micro_batch_size": 8, **_train_overrides(args)}
    config = pretrain_config(args.arch, args.size, recipe=args.recipe, train=train, seqlen=args.seqlen or 256,
                             lr=args.lr, shards=args.shards)  # fails before any tokenizing
    out = claim_run_folder(args.out, "pretrain", job_settings(args), args.overwrite,
                           (f"{args.arch}-{args.size}", "pretrain")).path
    tokens = _token_folder(args, out)
    tokenizer = tokens.tokenizer()
    print(f"tritium: pretraining {FAMILY[config.arch]} {config.size} (peak lr {config.peak_lr:g}, "
          f"{config.effective_schedule} schedule) in {out}", file=sys.stderr)
    result = pretrain(config, tokens.train_sequences(config.seqlen), out, tokens.vocab_size,
                      val_tokens=tokens.val_tokens().long(), tokenizer=tokenizer)
    model = load_spectra_model(out / "model")
    evaluation = SuiteConfig(sizes=[config.size], kinds=[config.arch], seqlen=config.seqlen,
                             eval_datasets=args.eval if args.eval is not None else ["wikitext2"],
                             eval_limit=args.limit, zeroshot=args.zeroshot or [], zeroshot_limit=args.zeroshot_limit)
    val_loss, metrics = evaluate_model(model, tokenizer, tokens.val_tokens().long(), evaluation, args.data_dir,
                                       progress=not args.no_progress)
    ternary = config.arch != "float"
    report = size_report(model, TernaryGrid("absmean", group="tensor") if ternary else None,
                         model_linears(model) if ternary else ())
    entry = SuiteEntry.from_size_report(FAMILY[config.arch], config.size, report, val_loss, metrics=metrics,
                                        tokens=result.train.tokens, train_seconds=result.train.train_seconds,
                                        tokens_per_second=result.train.tokens_per_second, mfu=result.mfu)
    paths = write_suite_report([entry], out, title=f"tritium pretrain {config.arch} {config.size}",
                               extra_notes=[f"MFU against {result.peak_source}"])
    print(f"{entry.family} {entry.size}: held-out loss {val_loss:.4f} (ppl {metrics['val_ppl']:.2f}), "
          + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "val_ppl")
          + f"; {result.train.tokens_per_second:,.0f} tok/s, MFU {result.mfu:.1%}")
    print(f"report: {paths.report}\nmodel:  {out / 'model'}")
    return 0


def cmd_suite(args) -> int:
    from ..utils.runs import claim_run_folder, job_settings
    from .suite import run_suite, suite_config_from_recipe

    config = suite_config_from_recipe(
        args.recipe, sizes=args.sizes, kinds=args.kinds, quant_bits=args.quant_bits, seqlen=args.seqlen,
        eval_datasets=args.eval, eval_limit=args.limit, zeroshot=args.zeroshot, zeroshot_limit=args.zeroshot_limit,
        seed=args.seed, train=_train_overrides(args),
        overrides={k: v for k, v in (("lr", args.lr), ("shards", args.shards)) if v is not None} or None)
    # The same job unfinished continues where it stopped (the suite's own checkpoints).
    out = claim_run_folder(args.out, "suite", job_settings(args), args.overwrite, ("spectra", "suite")).path
    tokens = _token_folder(args, out)
    paths, entries = run_suite(config, tokens.path, out, args.data_dir, progress=not args.no_progress,
                               log=lambda m: print(m, file=sys.stderr))
    print(paths.report.read_text())
    print(f"report: {paths.report}")
    return 0
