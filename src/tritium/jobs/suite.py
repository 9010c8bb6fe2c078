"""A Spectra suite: FloatLM, TriLM (and BitNet) of several sizes on one corpus and token
budget, QuantLMs made from each FloatLM by GPTQ, every model evaluated the same way, and
the report with fitted scaling laws and plots.

Every finished piece is kept on disk (``<size>/<kind>/entry.json``), so an interrupted
suite picks up where it stopped; a training run in progress resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..eval.perplexity import perplexity
from ..spectra import SuiteEntry, write_suite_report
from ..eval.size import size_report
from ..eval.zeroshot import TASKS as ZEROSHOT_TASKS
from ..models.spectra import SpectraConfigError, canonical_arch, load_spectra_model, size_preset
from ..quant.grids import TernaryGrid, UniformGrid
from ..utils.io import atomic_write_json
from ..train.pretrain import pretrain, pretrain_config

FAMILY = {"float": "FloatLM", "trilm": "TriLM", "bitnet": "BitNet"}
KINDS = ("float", "trilm", "bitnet", "quant")
SPECTRA_QUANT_BITS = (3, 4, 6, 8)


@dataclass
class SuiteConfig:
    sizes: list[str]
    kinds: list[str] = field(default_factory=lambda: ["float", "trilm", "quant"])
    quant_bits: list[int] = field(default_factory=lambda: [3, 4])  # Spectra makes 3, 4, 6 and 8
    quant_group: int = 128  # Spectra: g128 at 3 and 4 bits, per channel at 6 and 8
    calib_samples: int = 64  # GPTQ calibration sequences, from the training split
    seqlen: int = 256
    train: dict = field(default_factory=lambda: {"tokens": 1_000_000, "micro_batch_size": 8})
    overrides: dict = field(default_factory=dict)  # PretrainConfig settings for every run (lr, shards, ...)
    eval_datasets: list[str] = field(default_factory=lambda: ["wikitext2"])
    eval_limit: int | None = None  # perplexity chunks per data set
    val_limit: int | None = None  # held-out chunks
    zeroshot: list[str] = field(default_factory=list)
    zeroshot_limit: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not self.sizes:
            raise SpectraConfigError("a suite needs at least one size")
        for size in self.sizes:
            size_preset(size)
        kinds = []
        for kind in self.kinds:
            kind = "quant" if kind.lower() in ("quant", "quantlm") else canonical_arch(kind)
            kinds.append(kind)
        self.kinds = kinds
        if "quant" in kinds and "float" not in kinds:
            raise SpectraConfigError("QuantLMs are GPTQ'd FloatLMs: add 'float' to the kinds, or drop 'quant'")
        bad = [b for b in self.quant_bits if b not in SPECTRA_QUANT_BITS]
        if bad:
            raise SpectraConfigError(f"QuantLM bits {bad} are not Spectra's: use some of {SPECTRA_QUANT_BITS}")
        # checked here, not when the first model is evaluated: a typo would otherwise cost a whole training run
        unknown = [t for t in self.zeroshot if t not in ZEROSHOT_TASKS]
        if unknown:
            raise SpectraConfigError(f"unknown zero-shot task(s) {unknown}: choose from {', '.join(ZEROSHOT_TASKS)}")

    def trained_kinds(self) -> list[str]:
        return [k for k in ("float", "trilm", "bitnet") if k in self.kinds]

    def pretrain_config(self, arch: str, size: str, progress: bool = True):
        """The PretrainConfig of the suite's ``arch`` model of ``size``."""
        return pretrain_config(arch, size, train={**self.train, "seed": self.seed, "progress": progress},
                               **{**self.overrides, "seqlen": self.seqlen})


def quantlm_grid(bits: int, group: int = 128) -> UniformGrid:
    """Spectra's QuantLM grid: symmetric, g128 at 3 and 4 bits, per channel at 6 and 8. A width
    smaller than or not divisible by the group gets a shorter last group."""
    return UniformGrid(bits, group=group if bits <= 4 else "channel", symmetric=True, ragged_groups=True)


def make_quantlm(float_model, bits: int, calibration: torch.Tensor, group: int = 128):
    """GPTQ the FloatLM in place to ``bits``; returns the QuantizationResult."""
    from ..methods import quantize_
    from ..methods.gptq import GPTQConfig

    config = GPTQConfig(grid=quantlm_grid(bits, group), act_order=True, forward_batch_size=8)
    return quantize_(float_model, config, calibration)


def evaluate_model(model, tokenizer, val_tokens: torch.Tensor, config: SuiteConfig, data_path=None,
                   cache: dict | None = None, progress: bool = False) -> tuple[float, dict]:
    """(held-out loss in nats/token, metrics): the held-out split and each evaluation set in
    chunks of the training context, then the zero-shot tasks."""
    from .steps import evaluate

    model.eval()
    held_out = perplexity(model, val_tokens, seqlen=config.seqlen, limit=config.val_limit, progress=progress)
    settings = {"datasets": config.eval_datasets, "seqlen": config.seqlen, "limit": config.eval_limit,
                "zeroshot": config.zeroshot, "zeroshot_limit": config.zeroshot_limit}
    results = evaluate(model, tokenizer, settings, data_path, progress, cache)
    metrics = {"val_ppl": held_out.ppl}
    metrics.update({f"{name}_ppl": r["ppl"] for name, r in results["perplexity"].items()})
    for task, scores in results["zeroshot"].items():
        metrics[task] = scores.get("acc_norm", scores.get("acc"))
    return math.log(held_out.ppl), metrics


def _read_entry(path: Path) -> SuiteEntry | None:
    return SuiteEntry.from_dict(json.loads(path.read_text())) if path.is_file() else None


def suite_config_from_recipe(recipe: str | None, **overrides) -> SuiteConfig:
    """A suite recipe's ``suite:`` settings with ``overrides`` (None values ignored) on top."""
    from ..train.pretrain import load_pretrain_recipe

    settings = dict((load_pretrain_recipe(recipe).get("suite") or {}) if recipe else {})
    train = dict(settings.pop("train", None) or {})
    train.update(overrides.pop("train", None) or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "sizes" not in settings:
        raise SpectraConfigError("name the sizes of the suite: --sizes tiny-s,tiny-m,... (or a recipe with suite.sizes)")
    return SuiteConfig(**settings, train=train or {"tokens": 1_000_000, "micro_batch_size": 8})


def run_suite(config: SuiteConfig, folder, out_dir, data_path=None, progress: bool = True, log=print):
    """Train, quantize and evaluate the whole suite over the token folder ``folder``; write its report."""
    from ..data.tokens import TokenFolder

    tokens = TokenFolder.open(folder)
    tokenizer = tokens.tokenizer()
    train_sequences = tokens.train_sequences(config.seqlen)
    val_tokens = tokens.val_tokens().long()
    if val_tokens.numel() < config.seqlen:
        raise SpectraConfigError(f"the held-out split has {val_tokens.numel()} tokens, fewer than one chunk of "
                                 f"{config.seqlen}: ingest with a larger --val-fraction")
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "suite-config.json", {**asdict(config), "data": str(tokens.path)})
    entries: list[SuiteEntry] = []
    cache: dict = {}
    for size in config.sizes:
        for arch in config.trained_kinds():
            run_dir = out_dir / size / arch
            entry = _read_entry(run_dir / "entry.json")
            if entry is None:
                log(f"tritium suite: training {FAMILY[arch]} {size} in {run_dir}")
                run_config = config.pretrain_config(arch, size, progress)
                result = pretrain(run_config, train_sequences, run_dir, tokens.vocab_size, tokenizer=tokenizer)
                model = load_spectra_model(run_dir / "model")
                val_loss, metrics = evaluate_model(model, tokenizer, val_tokens, config, data_path, cache)
                grid = TernaryGrid("absmean", group="tensor") if arch != "float" else None
                quantized = model_linears(model) if arch != "float" else ()
                report = size_report(model, grid, quantized)
                entry = SuiteEntry.from_size_report(
                    FAMILY[arch], size, report, val_loss, metrics=metrics, tokens=result.train.tokens,
                    train_seconds=result.train.train_seconds, tokens_per_second=result.train.tokens_per_second,
                    mfu=result.mfu)
                atomic_write_json(run_dir / "entry.json", entry.to_dict())
            entries.append(entry)
            log(f"tritium suite: {entry.family} {size}: val loss {entry.val_loss:.4f}, "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry.metrics.items()))
        if "quant" in config.kinds:
            float_dir = out_dir / size / "float"
            generator = torch.Generator().manual_seed(config.seed)
            pick = torch.randperm(train_sequences.shape[0], generator=generator)[: config.calib_samples]
            calibration = train_sequences[pick]
            for bits in config.quant_bits:
                run_dir = out_dir / size / f"quant{bits}"
                entry = _read_entry(run_dir / "entry.json")
                if entry is None:
                    log(f"tritium suite: GPTQ of FloatLM {size} to {bits} bits")
                    model = load_spectra_model(float_dir / "model")
                    result = make_quantlm(model, bits, calibration, config.quant_group)
                    val_loss, metrics = evaluate_model(model, tokenizer, val_tokens, config, data_path, cache)
                    report = size_report(model, result.grid, result.weights)
                    entry = SuiteEntry.from_size_report(f"QuantLM-{bits}bit", size, report, val_loss, metrics=metrics)
                    atomic_write_json(run_dir / "entry.json", entry.to_dict())
                entries.append(entry)
                log(f"tritium suite: {entry.family} {size}: val loss {entry.val_loss:.4f}")
    notes = [f"corpus: {tokens.path} ({tokens.n_tokens('train'):,} training tokens, {tokens.n_tokens('val'):,} "
             f"held out, tokenizer {tokens.meta.get('tokenizer')!r}, vocabulary {tokens.vocab_size})",
             f"every trained model saw {config.train.get('tokens') or config.train.get('steps')} "
             f"{'tokens' if config.train.get('tokens') else 'steps'} of sequences of {config.seqlen}",
             "QuantLMs: GPTQ (act-order) of each FloatLM, symmetric, g128 at 3-4 bits (shorter last group where "
             "the width does not divide), calibrated on training sequences",
             "bits count every parameter: float parts at 16 bits, ternary at 1.6 bits/weight + one fp16 scale per "
             "matrix, QuantLM codes + fp16 scales"]
    return write_suite_report(entries, out_dir, title="tritium Spectra suite", extra_notes=notes), entries


def model_linears(model) -> list[str]:
    from ..models.adapters import decoder_layout

    return list(decoder_layout(model).quantizable_linears())
