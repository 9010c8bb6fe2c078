"""The pretrain job (one FloatLM, TriLM or BitNet from scratch) and the suite job (a matched Spectra
family); both end in a report with a table, scaling-law fits and plots. ``tritium pretrain`` and
``tritium suite`` build a :class:`PretrainJob` or :class:`SuiteJob` from their flags
(:mod:`tritium.cli.pretrain`) and call :func:`pretrain_model` or :func:`pretrain_suite`; Python code
does the same::

    from tritium.jobs import PretrainJob, SuiteJob, pretrain_model, pretrain_suite
    pretrain_model(PretrainJob(arch="trilm", size="tiny-xs", data=["corpus/"], tokens=100_000)).entry.val_loss
    pretrain_suite(SuiteJob(recipe="suite-cpu", data=["corpus/"], out="runs/suite")).report
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .options import RunFolderOptions

if TYPE_CHECKING:
    from ..spectra.records import SuiteEntry
    from ..spectra.report import SuiteReportPaths

DEFAULT_VAL_FRACTION = 0.05


@dataclass(kw_only=True)
class PretrainingOptions(RunFolderOptions):
    """The data, training and evaluation options pretrain and suite share; the field names are the CLI's flags.
    A ``None`` option leaves the recipe's (or the preset's) value."""

    data: list[str]  # a token folder, or raw text (files, folders, .deb, hf: specs) tokenized into OUT/tokens
    tokenizer: str | None = None  # for raw text (default smollm2-135m)
    train_tokenizer: int | None = None  # for raw text: a byte-level BPE of this many tokens learnt from it
    val_fraction: float | None = None  # for raw text: documents held out (default DEFAULT_VAL_FRACTION)
    tokens: int | None = None  # training budget per model, in tokens ...
    steps: int | None = None  # ... or optimizer steps
    seqlen: int | None = None  # training context
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    shards: int | None = None
    checkpoint_every: int | None = None
    precision: str | None = None
    device: str | None = None
    eval: list[str] | None = None  # perplexity data sets besides the held-out split
    limit: int | None = None
    zeroshot: list[str] | None = None
    zeroshot_limit: int | None = None
    data_dir: str | None = None  # folder of the evaluation data sets
    seed: int | None = None


@dataclass(kw_only=True)
class PretrainJob(PretrainingOptions):
    arch: str  # float, trilm or bitnet
    size: str  # tiny-xs ... tiny-xl, or Spectra's 99m ... 3.9b
    recipe: str | None = None  # a pretraining YAML (default spectra-<arch>)


@dataclass
class PretrainResult:
    entry: SuiteEntry  # the trained model: family, size, val_loss, metrics, tokens_per_second, mfu, ...
    out: Path  # the run folder
    report: Path  # report.md
    model_folder: Path


@dataclass(kw_only=True)
class SuiteJob(PretrainingOptions):
    sizes: list[str] | None = None  # None: the recipe's
    kinds: list[str] | None = None  # float, trilm (tri), bitnet, quant
    quant_bits: list[int] | None = None  # QuantLM bits (Spectra: 3, 4, 6, 8)
    recipe: str | None = None  # a suite YAML (suite-cpu is the 2-core miniature)


@dataclass
class SuiteResult:
    entries: list[SuiteEntry]  # one per model
    out: Path  # the run folder
    report: Path  # report.md
    paths: SuiteReportPaths  # every file of the report


def _token_folder(job: PretrainingOptions, out: Path, given):
    """The token folder to train on: ``given`` (the one preflight opened), or made from raw text under
    ``out/tokens`` (reused on a rerun)."""
    from ..data.tokens import TokenFolder, check_token_folder, ingest, load_tokenizer_spec, train_tokenizer, \
        training_documents
    from .preflight import check_same_tokenization

    if given is not None:
        return given
    folder = out / "tokens"
    if TokenFolder.is_folder(folder):  # a rerun: the first run tokenized the text with the same flags
        tokens = TokenFolder.open(folder)
        check_same_tokenization(job, tokens)
        check_token_folder(tokens, job.data_dir)
        print(f"tritium: reusing {folder}, tokenized by an earlier run (delete it to tokenize again)", file=sys.stderr)
        return tokens
    val_fraction = job.val_fraction if job.val_fraction is not None else DEFAULT_VAL_FRACTION
    if job.train_tokenizer:  # learnt from the training documents only: the held-out ones stay unseen
        tokenizer = train_tokenizer(training_documents(job.data, val_fraction, data_path=job.data_dir),
                                    job.train_tokenizer)
    else:
        tokenizer = load_tokenizer_spec(job.tokenizer or "smollm2-135m")
    print(f"tritium: tokenizing {', '.join(job.data)} into {folder}", file=sys.stderr)
    return ingest(job.data, folder, tokenizer, val_fraction=val_fraction, progress=not job.no_progress,
                  data_path=job.data_dir)


def _train_overrides(job: PretrainingOptions) -> dict:
    train = {}
    if job.tokens is not None:
        train.update(tokens=job.tokens, steps=None)
    if job.steps is not None:
        train.update(steps=job.steps, tokens=None)
    for key in ("micro_batch_size", "grad_accum", "checkpoint_every", "precision", "device", "seed"):
        if getattr(job, key) is not None:
            train[key] = getattr(job, key)
    if job.no_progress:
        train["progress"] = False
    return train


def pretrain_model(job: PretrainJob) -> PretrainResult:
    from ..spectra import SuiteEntry, write_suite_report
    from ..eval.size import size_report
    from ..models.spectra import load_spectra_model
    from ..quant.grids import TernaryGrid
    from ..train.pretrain import pretrain, pretrain_config
    from ..utils.runs import claim_run_folder, job_settings
    from .preflight import preflight_pretraining
    from .suite import FAMILY, SuiteConfig, evaluate_model, model_linears

    train = {"tokens": 1_000_000, "micro_batch_size": 8, **_train_overrides(job)}
    config = pretrain_config(job.arch, job.size, recipe=job.recipe, train=train, seqlen=job.seqlen or 256,
                             lr=job.lr, shards=job.shards)  # fails before any tokenizing
    # built before training, so that an unknown zero-shot task fails now
    evaluation = SuiteConfig(sizes=[config.size], kinds=[config.arch], seqlen=config.seqlen,
                             eval_datasets=job.eval if job.eval is not None else ["wikitext2"],
                             eval_limit=job.limit, zeroshot=job.zeroshot or [], zeroshot_limit=job.zeroshot_limit)
    given = preflight_pretraining(job, config, evaluation.eval_datasets, evaluation.eval_limit,
                                  evaluation.zeroshot_limit)
    out = claim_run_folder(job.out, "pretrain", job_settings(job), job.overwrite,
                           (f"{job.arch}-{job.size}", "pretrain")).path
    tokens = _token_folder(job, out, given)
    tokenizer = tokens.tokenizer()
    print(f"tritium: pretraining {FAMILY[config.arch]} {config.size} (peak lr {config.peak_lr:g}, "
          f"{config.effective_schedule} schedule) in {out}", file=sys.stderr)
    result = pretrain(config, tokens.train_sequences(config.seqlen), out, tokens.vocab_size,
                      val_tokens=tokens.val_tokens().long(), tokenizer=tokenizer)
    model = load_spectra_model(out / "model")
    val_loss, metrics = evaluate_model(model, tokenizer, tokens.val_tokens().long(), evaluation, job.data_dir,
                                       progress=not job.no_progress)
    ternary = config.arch != "float"
    report = size_report(model, TernaryGrid("absmean", group="tensor") if ternary else None,
                         model_linears(model) if ternary else ())
    entry = SuiteEntry.from_size_report(FAMILY[config.arch], config.size, report, val_loss, metrics=metrics,
                                        tokens=result.train.tokens, train_seconds=result.train.train_seconds,
                                        tokens_per_second=result.train.tokens_per_second, mfu=result.mfu)
    paths = write_suite_report([entry], out, title=f"tritium pretrain {config.arch} {config.size}",
                               extra_notes=[f"MFU against {result.peak_source}"])
    return PretrainResult(entry, out, paths.report, out / "model")


def pretrain_suite(job: SuiteJob) -> SuiteResult:
    from ..utils.runs import claim_run_folder, job_settings
    from .preflight import preflight_pretraining
    from .suite import run_suite, suite_config_from_recipe

    config = suite_config_from_recipe(
        job.recipe, sizes=job.sizes, kinds=job.kinds, quant_bits=job.quant_bits, seqlen=job.seqlen,
        eval_datasets=job.eval, eval_limit=job.limit, zeroshot=job.zeroshot, zeroshot_limit=job.zeroshot_limit,
        seed=job.seed, train=_train_overrides(job),
        overrides={k: v for k, v in (("lr", job.lr), ("shards", job.shards)) if v is not None} or None)
    # the first model's training settings stand for every model's: they differ only in size and kind
    given = preflight_pretraining(job, config.pretrain_config(config.trained_kinds()[0], config.sizes[0]),
                                  config.eval_datasets, config.eval_limit, config.zeroshot_limit)
    # The same job unfinished continues where it stopped (the suite's own checkpoints).
    out = claim_run_folder(job.out, "suite", job_settings(job), job.overwrite, ("spectra", "suite")).path
    tokens = _token_folder(job, out, given)
    paths, entries = run_suite(config, tokens.path, out, job.data_dir, progress=not job.no_progress,
                               log=lambda m: print(m, file=sys.stderr))
    return SuiteResult(entries, out, paths.report, paths)
