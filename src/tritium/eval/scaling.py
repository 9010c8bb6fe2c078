"""Scaling-law analysis of a suite of pretrained models (Spectra, arXiv 2407.12327).

A suite is a list of :class:`SuiteEntry` records, one per trained model (family × size).
This module fits ``L(N) = A / N^α + ε`` per family, compares one family against a baseline
at equal parameters and at equal size in bits (Spectra's "TriLM lags FloatLM at equal
parameters but wins at equal bits"), draws Spectra-style plots and writes a markdown report.

The fit uses numpy only: for a fixed α the model is linear in (A, ε), so those come from a
two-variable non-negative least squares; α is searched on a log grid and refined by a
golden-section search (variable projection). N is divided by its geometric mean first so the
basis stays well conditioned whatever the model sizes.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

AXES = ("params", "bits")
PARAM_FIELDS = ("linear_params", "params")
ZERO_SHOT_AVERAGE = "zero_shot_avg"

# Known families keep their colour across every figure of a report.
_FAMILY_COLOURS = {
    "FloatLM": "#1f77b4",
    "TriLM": "#d62728",
    "BitNet": "#2ca02c",
    "QuantLM-8bit": "#17becf",
    "QuantLM-6bit": "#bcbd22",
    "QuantLM-4bit": "#9467bd",
    "QuantLM-3bit": "#8c564b",
    "QuantLM-2bit": "#e377c2",
}
_OTHER_COLOURS = ["#ff7f0e", "#7f7f7f", "#000000", "#aec7e8", "#98df8a", "#ff9896"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


# --------------------------------------------------------------------------- records


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
            raise ValueError(f"{what}: family must be a non-empty name such as 'TriLM'")
        for name in ("params", "linear_params"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{what}: {name} must be a positive integer count, got {value!r}")
            setattr(self, name, int(value))
        if not _finite_positive(self.bits):
            raise ValueError(f"{what}: bits must be a positive finite size in bits, got {self.bits!r}")
        if not _finite(self.val_loss):
            raise ValueError(f"{what}: val_loss must be a finite number (nats/token), got {self.val_loss!r}; "
                             "leave diverged runs out of the suite")
        self.bits, self.val_loss = float(self.bits), float(self.val_loss)
        bad = {k: v for k, v in self.metrics.items() if not _finite(v)}
        if bad:
            raise ValueError(f"{what}: metrics must be finite numbers, got {bad}")
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        # numpy scalars would reach suite.json as strings: store plain Python numbers
        if self.tokens is not None:
            if isinstance(self.tokens, bool) or not isinstance(self.tokens, (int, np.integer)) or self.tokens < 0:
                raise ValueError(f"{what}: tokens must be a non-negative integer count, got {self.tokens!r}")
            self.tokens = int(self.tokens)
        for name in ("train_seconds", "tokens_per_second", "mfu"):
            value = getattr(self, name)
            if value is not None:
                if not _finite(value) or value < 0:
                    raise ValueError(f"{what}: {name} must be a non-negative finite number or None, got {value!r}")
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
        _check_axis(axis, param_field)
        return float(self.bits if axis == "bits" else getattr(self, param_field))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SuiteEntry:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"suite entry has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        missing = {"family", "size", "params", "linear_params", "bits", "val_loss"} - set(data)
        if missing:
            raise ValueError(f"suite entry is missing {sorted(missing)}: {data}")
        return cls(**data)


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _finite_positive(value) -> bool:
    return _finite(value) and value > 0


def _check_axis(axis: str, param_field: str = "linear_params"):
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if param_field not in PARAM_FIELDS:
        raise ValueError(f"param_field must be one of {PARAM_FIELDS}, got {param_field!r}")


def is_zero_shot_metric(name: str) -> bool:
    """Zero-shot accuracies are keyed by task name, optionally with the score: "piqa", "piqa/acc_norm"."""
    from .zeroshot import TASKS

    task, _, score = name.partition("/")
    return task in TASKS and score in ("", "acc", "acc_norm")


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities fall as models improve; accuracies rise."""
    return metric.endswith("loss") or metric.endswith("ppl") or metric.endswith("perplexity")


def zero_shot_keys(entries: Iterable[SuiteEntry]) -> list[str]:
    """The zero-shot scores measured anywhere in the suite, first-seen order."""
    return list(dict.fromkeys(k for e in entries for k in e.metrics if is_zero_shot_metric(k)))


def _points(entries: Sequence[SuiteEntry], fam: str, metric: str, axis: str, param_field: str
            ) -> list[tuple[SuiteEntry, float, float]]:
    """(entry, x, value) of one family, sorted by x, leaving out entries without the metric."""
    tasks = zero_shot_keys(entries)
    out = [(e, e.x(axis, param_field), e.value(metric, tasks)) for e in entries if e.family == fam]
    return sorted(((e, x, v) for e, x, v in out if v is not None), key=lambda p: p[1])


def families(entries: Iterable[SuiteEntry]) -> list[str]:
    """Family names in first-seen order."""
    return list(dict.fromkeys(e.family for e in entries))


# --------------------------------------------------------------------------- fitting


@dataclass
class PowerLawFit:
    """``L(N) = A / N^alpha + eps``; ok=False (and NaN parameters) when the points cannot pin it down."""

    A: float
    alpha: float
    eps: float
    rmse: float
    n_points: int
    ok: bool
    reason: str = ""  # why ok is False, or a caveat (e.g. an exact fit through three points)

    def predict(self, n) -> np.ndarray | float:
        if not self.ok:
            raise ValueError(f"no fitted law to predict from: {self.reason}")
        n_arr = np.asarray(n, dtype=np.float64)
        if np.any(~np.isfinite(n_arr)) or np.any(n_arr <= 0):
            raise ValueError("predict needs positive finite N")
        out = self.A * np.power(n_arr, -self.alpha) + self.eps
        return float(out) if out.ndim == 0 else out

    def describe(self, variable: str = "N") -> str:
        if not self.ok:
            return f"not fitted ({self.reason})"
        return f"L({variable}) = {self.A:.4g} / {variable}^{self.alpha:.4f} + {self.eps:.4f}"

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PowerLawFit:
        return cls(**{k: (math.nan if v is None and k in ("A", "alpha", "eps", "rmse") else v)
                      for k, v in data.items()})

    @classmethod
    def failed(cls, n_points: int, reason: str) -> PowerLawFit:
        return cls(math.nan, math.nan, math.nan, math.nan, n_points, False, reason)


def _nonneg_linear_fit(phi: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """min ||y − a·phi − e||² over a ≥ 0, e ≥ 0: returns (a, e, sse).

    The problem is convex, so the optimum is the unconstrained solution when feasible, or else
    the best point on one of the faces a = 0 or e = 0.
    """
    basis = np.stack([phi, np.ones_like(phi)], axis=1)
    (a, e), *_ = np.linalg.lstsq(basis, y, rcond=None)
    candidates = []
    if a >= 0 and e >= 0:
        candidates.append((a, e))
    else:
        candidates.append((0.0, max(float(y.mean()), 0.0)))
        candidates.append((max(float(phi @ y / (phi @ phi)), 0.0), 0.0))
    best = None
    for a_c, e_c in candidates:
        sse = float(np.sum((y - a_c * phi - e_c) ** 2))
        if best is None or sse < best[2]:
            best = (float(a_c), float(e_c), sse)
    return best


def fit_power_law(n, loss, *, alpha_bounds: tuple[float, float] = (1e-3, 4.0), grid_size: int = 400) -> PowerLawFit:
    """Least-squares fit of ``loss ≈ A / n^alpha + eps`` with A > 0, alpha > 0, eps ≥ 0.

    Bad input (NaN, non-positive N, mismatched lengths) raises ValueError. Too few points
    (fewer than three distinct N), a loss that does not fall with N, or an alpha stuck at a
    search bound give ``ok=False`` with the reason, not made-up parameters.
    """
    n_arr = np.asarray(n, dtype=np.float64).ravel()
    y = np.asarray(loss, dtype=np.float64).ravel()
    if n_arr.shape != y.shape:
        raise ValueError(f"fit_power_law needs one loss per N: got {n_arr.size} N and {y.size} losses")
    if not (np.all(np.isfinite(n_arr)) and np.all(np.isfinite(y))):
        raise ValueError("fit_power_law got NaN or infinite values; drop those points (e.g. diverged runs) first")
    if np.any(n_arr <= 0):
        raise ValueError(f"fit_power_law needs positive N (parameter counts or bits), got {n_arr[n_arr <= 0]}")
    lo, hi = alpha_bounds
    if not 0 < lo < hi:
        raise ValueError(f"alpha_bounds must satisfy 0 < low < high, got {alpha_bounds}")
    count = int(n_arr.size)
    distinct = np.unique(n_arr).size
    if distinct < 3:
        return PowerLawFit.failed(count, f"not enough points: a 3-parameter law needs at least 3 distinct sizes, "
                                         f"got {distinct}")

    reference = math.exp(float(np.mean(np.log(n_arr))))
    log_x = np.log(n_arr / reference)

    def solve(log_alpha: float) -> tuple[float, float, float]:
        return _nonneg_linear_fit(np.exp(-math.exp(log_alpha) * log_x), y)

    grid = np.linspace(math.log(lo), math.log(hi), grid_size)
    sse = np.array([solve(g)[2] for g in grid])
    best = int(np.argmin(sse))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid_size - 1)]
    # golden-section search for the minimum of sse(log α) in the bracket around the best grid point
    ratio = (math.sqrt(5) - 1) / 2
    c, d = right - ratio * (right - left), left + ratio * (right - left)
    fc, fd = solve(c)[2], solve(d)[2]
    for _ in range(200):
        if right - left < 1e-12:
            break
        if fc < fd:
            right, d, fd = d, c, fc
            c = right - ratio * (right - left)
            fc = solve(c)[2]
        else:
            left, c, fc = c, d, fd
            d = left + ratio * (right - left)
            fd = solve(d)[2]
    log_alpha = (left + right) / 2
    a_scaled, eps, sse_best = solve(log_alpha)
    if sse[best] < sse_best:  # the refinement never does worse than the grid
        log_alpha = grid[best]
        a_scaled, eps, sse_best = solve(log_alpha)
    alpha = math.exp(log_alpha)
    rmse = math.sqrt(sse_best / count)
    if a_scaled <= 0:
        return PowerLawFit(math.nan, math.nan, math.nan, rmse, count, False,
                           "the loss does not fall with N, so no A > 0 fits")
    if log_alpha <= grid[0] + 1e-9 or log_alpha >= grid[-1] - 1e-9:
        return PowerLawFit(math.nan, math.nan, math.nan, rmse, count, False,
                           f"alpha ran to its search bound {alpha:.3g}: the points do not pin the law down")
    A = a_scaled * reference ** alpha
    reason = "exact fit: 3 points for 3 parameters, no check on the law" if distinct == 3 else ""
    return PowerLawFit(float(A), float(alpha), float(eps), float(rmse), count, True, reason)


def fit_families(entries: Sequence[SuiteEntry], metric: str = "val_loss", axis: str = "params",
                 param_field: str = "linear_params") -> dict[str, PowerLawFit]:
    """One law per family of ``metric`` against the axis; families are fitted on the points that have it."""
    _check_axis(axis, param_field)
    fits = {}
    for fam in families(entries):
        points = _points(entries, fam, metric, axis, param_field)
        fits[fam] = fit_power_law([p[1] for p in points], [p[2] for p in points]) if points else \
            PowerLawFit.failed(0, f"no {metric} values")
    return fits


# --------------------------------------------------------------------------- comparisons


@dataclass
class ComparisonPoint:
    size: str
    x: float  # the point's parameters or bits
    value: float  # the family's metric
    baseline_value: float | None  # the baseline family's metric at the same x, None when it cannot be had
    difference: float | None  # value − baseline_value
    ratio: float | None  # value / baseline_value
    method: str  # "interpolation", "fit" or "none"
    extrapolated: bool  # x lies outside the baseline's measured range: shown, not counted in the verdict
    better: bool | None  # the family beats the baseline here (lower loss / higher accuracy)


@dataclass
class Comparison:
    family: str
    baseline: str
    axis: str
    metric: str
    points: list[ComparisonPoint]
    verdict: str  # "better", "worse", "mixed" or "inconclusive"
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _log_log_interpolate(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear in log x (and log y when every y is positive), through the measured points."""
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    unique_x = np.unique(xs)
    ys = np.array([ys[xs == u].mean() for u in unique_x])  # repeated sizes: their mean
    if unique_x.size == 1:
        return float(ys[0])
    if np.all(ys > 0):
        return float(np.exp(np.interp(math.log(x), np.log(unique_x), np.log(ys))))
    return float(np.interp(math.log(x), np.log(unique_x), ys))


def compare_at_equal(entries: Sequence[SuiteEntry], family: str = "TriLM", baseline: str = "FloatLM",
                     axis: str = "params", *, metric: str = "val_loss", param_field: str = "linear_params",
                     method: str = "auto") -> Comparison:
    """Each ``family`` point against the ``baseline`` family's ``metric`` at the same parameters or bits.

    ``method``: "interpolation" (log-log, through the baseline's measured points, inside their range),
    "fit" (the baseline's fitted law) or "auto" (interpolation inside the range, the law outside).
    Only points inside the baseline's measured range count towards the verdict; extrapolated ones
    are reported but a law fitted to a few small models says little outside them.
    """
    _check_axis(axis, param_field)
    if method not in ("auto", "interpolation", "fit"):
        raise ValueError(f"method must be 'auto', 'interpolation' or 'fit', got {method!r}")
    names = families(entries)
    for name in (family, baseline):
        if name not in names:
            raise ValueError(f"family {name!r} is not in the suite (families: {names})")
    lower = lower_is_better(metric)
    base = _points(entries, baseline, metric, axis, param_field)
    base_x = np.array([b[1] for b in base], dtype=np.float64)
    base_y = np.array([b[2] for b in base], dtype=np.float64)
    law = fit_power_law(base_x, base_y) if lower and base_x.size else PowerLawFit.failed(base_x.size, "not fitted")

    points = []
    for e, x, value in _points(entries, family, metric, axis, param_field):
        inside = base_x.size > 0 and base_x.min() * (1 - 1e-9) <= x <= base_x.max() * (1 + 1e-9)
        estimate, how = None, "none"
        if method in ("auto", "interpolation") and inside:
            estimate, how = _log_log_interpolate(base_x, base_y, x), "interpolation"
        elif method in ("auto", "fit") and law.ok:
            estimate, how = float(law.predict(x)), "fit"
        diff = ratio = better = None
        if estimate is not None:
            diff = value - estimate
            ratio = value / estimate if estimate != 0 else None
            better = (diff < 0) if lower else (diff > 0)
            if diff == 0:
                better = None
        points.append(ComparisonPoint(e.size, x, value, estimate, diff, ratio, how, not inside, better))

    axis_words = "parameters" if axis == "params" else "size in bits"
    counted = [p for p in points if p.baseline_value is not None and not p.extrapolated]
    if base_x.size == 0:
        verdict, reason = "inconclusive", f"no {baseline} points with {metric} to compare against"
    elif not counted:
        verdict, reason = "inconclusive", (f"too few points: no {family} point lies within the {baseline} "
                                           f"range of {axis_words}")
    else:
        wins = sum(p.better is True for p in counted)
        losses = sum(p.better is False for p in counted)
        if wins == len(counted):
            verdict = "better"
        elif losses == len(counted):
            verdict = "worse"
        else:
            verdict = "mixed"
        reason = (f"at equal {axis_words}, {family} has the better {metric} at {wins} of {len(counted)} "
                  f"points within the {baseline} range")
        skipped = len(points) - len(counted)
        if skipped:
            reason += f" ({skipped} outside it not counted)"
    return Comparison(family, baseline, axis, metric, points, verdict, reason)


@dataclass
class PatternVerdict:
    """Spectra's pattern: the family lags the baseline at equal parameters but wins at equal bits."""

    verdict: str  # "holds", "does not hold" or "inconclusive"
    reason: str
    by_params: Comparison
    by_bits: Comparison

    def to_dict(self) -> dict:
        return asdict(self)


def spectra_pattern(entries: Sequence[SuiteEntry], family: str = "TriLM", baseline: str = "FloatLM", *,
                    metric: str = "val_loss", param_field: str = "linear_params") -> PatternVerdict:
    by_params = compare_at_equal(entries, family, baseline, "params", metric=metric, param_field=param_field)
    by_bits = compare_at_equal(entries, family, baseline, "bits", metric=metric, param_field=param_field)
    unclear = [c for c in (by_params, by_bits) if c.verdict == "inconclusive"]
    if unclear:
        verdict = "inconclusive"
        reason = "; ".join(f"equal {c.axis}: {c.reason}" for c in unclear)
    elif by_params.verdict == "worse" and by_bits.verdict == "better":
        verdict = "holds"
        reason = f"{family} lags {baseline} at equal parameters and wins at equal bits on every point compared"
    else:
        verdict = "does not hold"
        problems = []
        if by_params.verdict != "worse":
            problems.append(f"at equal parameters {family} is {by_params.verdict} (expected: worse)")
        if by_bits.verdict != "better":
            problems.append(f"at equal bits {family} is {by_bits.verdict} (expected: better)")
        reason = "; ".join(problems)
    return PatternVerdict(verdict, reason, by_params, by_bits)


# --------------------------------------------------------------------------- plots


def _colour(fam: str, index: int) -> str:
    return _FAMILY_COLOURS.get(fam, _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def metric_label(metric: str) -> str:
    labels = {"val_loss": "validation loss (nats/token)", "val_ppl": "validation perplexity",
              ZERO_SHOT_AVERAGE: "zero-shot accuracy (average)"}
    if metric in labels:
        return labels[metric]
    if metric.endswith("_ppl"):
        return f"{metric[:-4]} perplexity"
    if is_zero_shot_metric(metric):
        return f"{metric} accuracy (zero-shot)"
    return metric


def _axis_label(axis: str, param_field: str) -> str:
    if axis == "bits":
        return "model size (bits)"
    return "non-embedding linear parameters" if param_field == "linear_params" else "parameters (total)"


def suite_metrics(entries: Sequence[SuiteEntry], metric: str = "val_loss") -> list[str]:
    """Metrics worth a figure: the main one, perplexity, everything measured, and the zero-shot average."""
    found = [metric]
    if metric == "val_loss":
        found.append("val_ppl")
    keys = list(dict.fromkeys(k for e in entries for k in e.metrics))
    found += [k for k in keys if k not in found]
    if sum(is_zero_shot_metric(k) for k in keys) > 1:
        found.append(ZERO_SHOT_AVERAGE)
    return found


def _figure_name(metric: str, axis: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{metric}_vs_{axis}")


def _save_figure(figure, stem: Path) -> list[Path]:
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        # no dates in the metadata, so the same suite draws byte-identical files
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buffer.getvalue()))
    return paths


def plot_metric(entries: Sequence[SuiteEntry], out_dir: str | Path, metric: str = "val_loss",
                axis: str = "params", *, param_field: str = "linear_params", fit: bool = True,
                title: str | None = None) -> list[Path]:
    """One Spectra-style figure: ``metric`` against parameters or bits (log x), a line per family,
    dashed fitted laws for losses and perplexities. Written as PNG and SVG; returns both paths
    (an empty list when no entry has the metric)."""
    _check_axis(axis, param_field)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: files only, no display needed
    from matplotlib.figure import Figure

    names = families(entries)
    figure = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    plotted = False
    for i, fam in enumerate(names):
        points = _points(entries, fam, metric, axis, param_field)
        if not points:
            continue
        plotted = True
        xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
        colour = _colour(fam, i)
        ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], color=colour, linewidth=1.2, label=fam)
        if fit and lower_is_better(metric):
            law = fit_power_law(xs, ys)
            if law.ok:
                grid = np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 200)
                ax.plot(grid, law.predict(grid), linestyle="--", color=colour, linewidth=1, alpha=0.8,
                        label=f"{fam} fit: α={law.alpha:.3f}, ε={law.eps:.3f}")
    if not plotted:
        return []
    ax.set_xscale("log")
    ax.set_xlabel(_axis_label(axis, param_field))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"{metric_label(metric)} vs {'size in bits' if axis == 'bits' else 'parameters'}")
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax.legend(fontsize="small")
    return _save_figure(figure, Path(out_dir) / _figure_name(metric, axis))


def plot_suite(entries: Sequence[SuiteEntry], out_dir: str | Path, metric: str = "val_loss", *,
               param_field: str = "linear_params", extra_metrics: Sequence[str] | None = None,
               fit: bool = True) -> list[Path]:
    """``metric`` (and each extra metric; by default everything measured, see :func:`suite_metrics`)
    against parameters and against size in bits. Returns the PNG and SVG paths written."""
    if not entries:
        raise ValueError("plot_suite needs at least one suite entry")
    metrics = suite_metrics(entries, metric) if extra_metrics is None else [metric, *extra_metrics]
    paths = []
    for m in dict.fromkeys(metrics):
        for axis in AXES:
            paths += plot_metric(entries, out_dir, m, axis, param_field=param_field, fit=fit)
    return paths


# --------------------------------------------------------------------------- report


def _human(count: float | None) -> str:
    if count is None:
        return "–"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= div:
            return f"{count / div:.3g}{unit}"
    return f"{count:.3g}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def suite_table(entries: Sequence[SuiteEntry], param_field: str = "linear_params") -> str:
    """Markdown table, one row per model, sorted by family then size."""
    zero_shot = zero_shot_keys(entries)
    ppl_keys = list(dict.fromkeys(k for e in entries for k in e.metrics
                                  if k.endswith("_ppl") and k != "val_ppl"))
    others = list(dict.fromkeys(k for e in entries for k in e.metrics
                                if k not in zero_shot and k not in ppl_keys and k != "val_ppl"))
    header = ["family", "size", "params", "linear params", "size (MB)", "bits", "val loss", "val ppl",
              *[f"{k[:-4]} ppl" for k in ppl_keys], *others, *zero_shot]
    if len(zero_shot) > 1:
        header.append("zero-shot avg")
    header += ["tokens", "tok/s", "MFU", "train (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {f: i for i, f in enumerate(families(entries))}
    for e in sorted(entries, key=lambda e: (order[e.family], e.x("params", param_field))):
        cells = [e.family, e.size, _human(e.params), _human(e.linear_params), f"{e.megabytes:.3g}",
                 _human(e.bits), _num(e.val_loss, 4), _num(e.value("val_ppl"), 2),
                 *[_num(e.metrics.get(k), 2) for k in ppl_keys], *[_num(e.metrics.get(k), 4) for k in others],
                 *[_num(e.metrics.get(k), 4) for k in zero_shot]]
        if len(zero_shot) > 1:
            cells.append(_num(e.value(ZERO_SHOT_AVERAGE, zero_shot), 4))
        cells += [_human(e.tokens), _human(e.tokens_per_second),
                  "–" if e.mfu is None else f"{100 * e.mfu:.1f}%", _num(e.train_seconds, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparison_table(c: Comparison) -> str:
    lines = [f"| {c.family} size | {c.axis} | {c.family} {c.metric} | {c.baseline} at equal {c.axis} | "
             "difference | ratio | from |", "|---|---|---|---|---|---|---|"]
    for p in c.points:
        how = p.method + (" (extrapolated, not counted)" if p.extrapolated and p.method != "none" else "")
        if p.method == "none":
            how = "outside the baseline's range, no law to extrapolate"
        lines.append(f"| {p.size} | {_human(p.x)} | {_num(p.value, 4)} | {_num(p.baseline_value, 4)} | "
                     f"{'–' if p.difference is None else f'{p.difference:+.4f}'} | {_num(p.ratio, 3)} | {how} |")
    return "\n".join(lines) + "\n"


def suite_report_markdown(entries: Sequence[SuiteEntry], fits: dict[str, dict[str, PowerLawFit]],
                          comparisons: Sequence[Comparison] = (), figures: Sequence[str | Path] = (),
                          title: str = "tritium suite", extra_notes: Sequence[str] = (), *,
                          pattern: PatternVerdict | None = None, metric: str = "val_loss",
                          param_field: str = "linear_params", link_base: str | Path | None = None) -> str:
    """The report: table, fitted laws (``fits[axis][family]``), comparisons, Spectra verdict, figures.

    Figure links are made relative to ``link_base`` (the report's folder) when given."""
    out = [f"# {title}\n", f"{len(entries)} models in {len(families(entries))} families. "
           f"Parameters on the x axis: {_axis_label('params', param_field)}; size in bits counts quantized "
           "linears at their packed size plus 16-bit scales, and embeddings and LM head at 16 bits.\n",
           "## Results\n", suite_table(entries, param_field)]
    out.append(f"## Fitted scaling laws: {metric} = A / N^α + ε\n")
    for axis, per_family in fits.items():
        variable = "N" if axis == "params" else "bits"
        out.append(f"Against {'parameters' if axis == 'params' else 'size in bits'}:\n")
        for fam, law in per_family.items():
            extra = f", RMSE {law.rmse:.4f} over {law.n_points} points" if law.ok else ""
            note = f" ({law.reason})" if law.ok and law.reason else ""
            out.append(f"- **{fam}**: {law.describe(variable)}{extra}{note}")
        out.append("")
    if "bits" in fits:
        out.append("Against bits the law describes the curve rather than the model: the 16-bit embedding and "
                   "LM head put a floor under the size of small low-bit models, so α and ε there are not "
                   "comparable with the laws against parameters.\n")
    if pattern is not None:
        out.append(f"## Spectra pattern: {pattern.by_params.family} lags {pattern.by_params.baseline} at equal "
                   f"parameters but wins at equal bits\n")
        out.append(f"**Verdict: {pattern.verdict}.** {pattern.reason}.\n")
    for c in comparisons:
        words = "parameters" if c.axis == "params" else "size in bits"
        out.append(f"### {c.family} vs {c.baseline} at equal {words}: {c.verdict}\n")
        out.append(f"{c.reason}.\n")
        out.append(_comparison_table(c))
    if figures:
        out.append("## Figures\n")
        pngs = [Path(f) for f in figures if Path(f).suffix == ".png"]
        for png in pngs:
            rel = png.relative_to(link_base) if link_base is not None else png
            svg = rel.with_suffix(".svg")
            out.append(f"![{png.stem}]({rel.as_posix()})  \n[{png.stem} (SVG)]({svg.as_posix()})\n")
    if extra_notes:
        out.append("## Notes\n")
        out += [f"- {n}" for n in extra_notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


@dataclass
class SuiteReportPaths:
    suite_json: Path
    report: Path
    figures: list[Path]


def write_suite_report(entries: Sequence[SuiteEntry], out_dir: str | Path, *, title: str = "tritium suite",
                       metric: str = "val_loss", param_field: str = "linear_params", family: str = "TriLM",
                       baseline: str = "FloatLM", extra_notes: Sequence[str] = (), plots: bool = True
                       ) -> SuiteReportPaths:
    """Fit, compare, plot and write ``suite.json``, ``report.md`` and ``figures/*.png|svg`` (each atomically)."""
    entries = list(entries)
    if not entries:
        raise ValueError("write_suite_report needs at least one suite entry")
    out_dir = Path(out_dir)
    fits = {axis: fit_families(entries, metric, axis, param_field) for axis in AXES}
    names = families(entries)
    pattern = None
    comparisons: list[Comparison] = []
    if family in names and baseline in names:
        pattern = spectra_pattern(entries, family, baseline, metric=metric, param_field=param_field)
        comparisons = [pattern.by_params, pattern.by_bits]
    figures = plot_suite(entries, out_dir / "figures", metric, param_field=param_field) if plots else []
    markdown = suite_report_markdown(entries, fits, comparisons, figures, title, extra_notes, pattern=pattern,
                                     metric=metric, param_field=param_field, link_base=out_dir)
    report = atomic_write_text(out_dir / "report.md", markdown)
    suite_json = atomic_write_json(out_dir / "suite.json", {
        "title": title, "metric": metric, "param_field": param_field,
        "entries": [e.to_dict() for e in entries],
        "fits": {axis: {f: law.to_dict() for f, law in per.items()} for axis, per in fits.items()},
        "pattern": pattern.to_dict() if pattern is not None else None,
        "figures": [p.relative_to(out_dir).as_posix() for p in figures],
    })
    return SuiteReportPaths(suite_json, report, figures)


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
        raise ValueError(f"{path} is not valid JSON ({err}); rewrite it with write_suite_report") from err
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path} has no 'entries' list: not a tritium suite file")
    return [SuiteEntry.from_dict(d) for d in data["entries"]]
