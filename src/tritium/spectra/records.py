"""The records of a Spectra suite: one :class:`SuiteEntry` per trained model (family × size),
the questions asked of them (which metric, which axis, which family's points) and ``suite.json`` read back."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..utils.errors import TritiumError


class SuiteRecordError(TritiumError, ValueError):
    """A suite entry or suite file that does not hold what a suite records."""


AXES = ("params", "bits")
PARAM_FIELDS = ("linear_params", "params")
ZERO_SHOT_AVERAGE = "zero_shot_avg"


@dataclass
class SuiteEntry:
    """One trained model of a suite: what it is, how big, how good, how fast it trained."""

    family: str  # "FloatLM", "TriLM", "BitNet", "QuantLM-4bit", ...
    size: str  # preset name, e.g. "tiny-s"
    params: int  # all parameters (embeddings and norms included)
    linear_params: int  # non-embedding linear parameters, Spectra's x axis
    bits: float  # total model size in bits, counted as tritium.eval.size counts it
    val_loss: float  # held-out split, nats per token
    metrics: dict[str, float] = field(default_factory=dict)  # val_ppl, wikitext2_ppl, piqa, ...
    tokens: int | None = None  # tokens trained on
    train_seconds: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, 0..1

    def __post_init__(self):
        what = f"suite entry {self.family!r}/{self.size!r}"
        if not isinstance(self.family, str) or not self.family:
            raise SuiteRecordError(f"{what}: family must be a non-empty name such as 'TriLM'")
        for name in ("params", "linear_params"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise SuiteRecordError(f"{what}: {name} must be a positive integer count, got {value!r}")
            setattr(self, name, int(value))
        if not _finite_positive(self.bits):
            raise SuiteRecordError(f"{what}: bits must be a positive finite size in bits, got {self.bits!r}")
        if not _finite(self.val_loss):
            raise SuiteRecordError(f"{what}: val_loss must be a finite number (nats/token), got {self.val_loss!r}; "
                             "leave diverged runs out of the suite")
        self.bits, self.val_loss = float(self.bits), float(self.val_loss)
        bad = {k: v for k, v in self.metrics.items() if not _finite(v)}
        if bad:
            raise SuiteRecordError(f"{what}: metrics must be finite numbers, got {bad}")
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        # numpy scalars would reach suite.json as strings: store plain Python numbers
        if self.tokens is not None:
            if isinstance(self.tokens, bool) or not isinstance(self.tokens, (int, np.integer)) or self.tokens < 0:
                raise SuiteRecordError(f"{what}: tokens must be a non-negative integer count, got {self.tokens!r}")
            self.tokens = int(self.tokens)
        for name in ("train_seconds", "tokens_per_second", "mfu"):
            value = getattr(self, name)
            if value is not None:
                if not _finite(value) or value < 0:
                    raise SuiteRecordError(f"{what}: {name} must be a non-negative finite number or None, got {value!r}")
                setattr(self, name, float(value))

    @classmethod
    def from_size_report(cls, family: str, size: str, report, val_loss: float, **rest) -> SuiteEntry:
        """An entry whose counts and bits come from :func:`tritium.eval.size.size_report` of the model."""
        params = report.linear_params + report.embedding_params + report.lm_head_params + report.other_params
        return cls(family, size, params, report.linear_params, report.total_bits, val_loss, **rest)

    @property
    def megabytes(self) -> float:
        return self.bits / 8e6

    def value(self, metric: str, zero_shot_tasks: Sequence[str] | None = None) -> float | None:
        """The entry's value of ``metric``, or None when it was not measured.

        ``zero_shot_avg`` averages the entry's zero-shot scores; with ``zero_shot_tasks`` (the suite's,
        see :func:`zero_shot_keys`) it is None unless the entry has all of them, so averages compare.
        """
        if metric == "val_loss":
            return self.val_loss
        if metric in self.metrics:
            return self.metrics[metric]
        if metric == "val_ppl":
            return math.exp(self.val_loss)
        if metric == ZERO_SHOT_AVERAGE:
            keys = [k for k in self.metrics if is_zero_shot_metric(k)] if zero_shot_tasks is None \
                else list(zero_shot_tasks)
            if not keys or any(k not in self.metrics for k in keys):
                return None
            return float(np.mean([self.metrics[k] for k in keys]))
        return None

    def x(self, axis: str, param_field: str = "linear_params") -> float:
        """Position on the ``axis`` ("params" or "bits") of a scaling plot."""
        check_axis(axis, param_field)
        return float(self.bits if axis == "bits" else getattr(self, param_field))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SuiteEntry:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SuiteRecordError(f"suite entry has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        missing = {"family", "size", "params", "linear_params", "bits", "val_loss"} - set(data)
        if missing:
            raise SuiteRecordError(f"suite entry is missing {sorted(missing)}: {data}")
        return cls(**data)


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _finite_positive(value) -> bool:
    return _finite(value) and value > 0


def check_axis(axis: str, param_field: str = "linear_params"):
    if axis not in AXES:
        raise SuiteRecordError(f"axis must be one of {AXES}, got {axis!r}")
    if param_field not in PARAM_FIELDS:
        raise SuiteRecordError(f"param_field must be one of {PARAM_FIELDS}, got {param_field!r}")


def is_zero_shot_metric(name: str) -> bool:
    """Zero-shot accuracies are keyed by task name, optionally with the score: "piqa", "piqa/acc_norm"."""
    from ..eval.zeroshot import TASKS

    task, _, score = name.partition("/")
    return task in TASKS and score in ("", "acc", "acc_norm")


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities fall as models improve; accuracies rise."""
    return metric.endswith("loss") or metric.endswith("ppl") or metric.endswith("perplexity")


def zero_shot_keys(entries: Iterable[SuiteEntry]) -> list[str]:
    """The zero-shot scores measured anywhere in the suite, first-seen order."""
    return list(dict.fromkeys(k for e in entries for k in e.metrics if is_zero_shot_metric(k)))


def family_points(entries: Sequence[SuiteEntry], fam: str, metric: str, axis: str, param_field: str
            ) -> list[tuple[SuiteEntry, float, float]]:
    """(entry, x, value) of one family, sorted by x, leaving out entries without the metric."""
    tasks = zero_shot_keys(entries)
    out = [(e, e.x(axis, param_field), e.value(metric, tasks)) for e in entries if e.family == fam]
    return sorted(((e, x, v) for e, x, v in out if v is not None), key=lambda p: p[1])


def families(entries: Iterable[SuiteEntry]) -> list[str]:
    """Family names in first-seen order."""
    return list(dict.fromkeys(e.family for e in entries))


def load_suite(path: str | Path) -> list[SuiteEntry]:
    """The entries of a ``suite.json`` (or of the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "suite.json"
    if not path.is_file():
        raise FileNotFoundError(f"no suite file at {path}; write one with write_suite_report")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SuiteRecordError(f"{path} is not valid JSON ({err}); rewrite it with write_suite_report") from err
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise SuiteRecordError(f"{path} has no 'entries' list: not a tritium suite file")
    return [SuiteEntry.from_dict(d) for d in data["entries"]]
