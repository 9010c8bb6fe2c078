"""The scaling law ``L(N) = A / N^α + ε``, fitted per family of a suite.

The fit uses numpy only: for a fixed α the model is linear in (A, ε), so those come from a
two-variable non-negative least squares; α is searched on a log grid and refined by a
golden-section search (variable projection). N is divided by its geometric mean first so the
basis stays well conditioned whatever the model sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .records import SuiteEntry, check_axis, families, family_points


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
    check_axis(axis, param_field)
    fits = {}
    for fam in families(entries):
        points = family_points(entries, fam, metric, axis, param_field)
        fits[fam] = fit_power_law([p[1] for p in points], [p[2] for p in points]) if points else \
            PowerLawFit.failed(0, f"no {metric} values")
    return fits
