"""One family against a baseline at equal parameters and at equal size in bits, and Spectra's
pattern: TriLM lags FloatLM at equal parameters but wins at equal bits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .fit import PowerLawFit, fit_power_law
from .records import SuiteEntry, check_axis, families, family_points, lower_is_better


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
    check_axis(axis, param_field)
    if method not in ("auto", "interpolation", "fit"):
        raise ValueError(f"method must be 'auto', 'interpolation' or 'fit', got {method!r}")
    names = families(entries)
    for name in (family, baseline):
        if name not in names:
            raise ValueError(f"family {name!r} is not in the suite (families: {names})")
    lower = lower_is_better(metric)
    base = family_points(entries, baseline, metric, axis, param_field)
    base_x = np.array([b[1] for b in base], dtype=np.float64)
    base_y = np.array([b[2] for b in base], dtype=np.float64)
    law = fit_power_law(base_x, base_y) if lower and base_x.size else PowerLawFit.failed(base_x.size, "not fitted")

    points = []
    for e, x, value in family_points(entries, family, metric, axis, param_field):
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
