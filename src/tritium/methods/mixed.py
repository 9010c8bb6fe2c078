"""Mixed precision under a bit budget: each linear gets its own grid, so that the average bits
per weight (codes, fp16 scales and zero points, as :func:`storage_bits` counts them) spends a
target such as 2.5 where it hurts least.

Sensitivity: for linear W and candidate grid g, the output error of round-to-nearest,
E‖(W − Q_g(W))x‖², taken with the inputs' correlations dropped: Σ_ij (W − Q_g(W))²_ij · E[x_j²].
The second moments E[x_j²] (the diagonal of XᵀX/n, llama.cpp's "importance matrix") come
from one float forward pass over a few calibration samples, so the measure costs one
forward plus an RTN per linear and candidate, whatever method then quantizes.

Allocation: every linear starts on its cheapest candidate; then, while some upgrade still fits
the budget, the one that removes the most sensitivity per extra bit is taken (a greedy
marginal-gain knapsack). The budget is a ceiling: the result lands at or below it, within the
step of the smallest upgrade left, which on a real model is far below 0.01 bits per weight.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models.adapters import DecoderLayout
from ..quant.grids import (GGUFBlockGrid, Grid, GroupLayout, QuantConfigError, TernaryGrid, UniformGrid,
                           gguf_fallback_grid, grid_layout, quantize_weight, storage_bits)

# The allocation is expected to land this close below the budget (bits per weight).
BUDGET_TOLERANCE = 0.01
SENSITIVITY_BATCH = 4  # calibration samples per forward pass of the sensitivity measurement


K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def default_gguf_candidates(grid: GGUFBlockGrid) -> tuple[GGUFBlockGrid, ...]:
    """llama.cpp's own mixes: the k-quants Q2_K to Q6_K for a k-quant grid, with TQ1_0/TQ2_0 below them for a
    ternary one; for a simple type its 4-, 5- and 8-bit kin (Q4_0, Q5_0, Q8_0, or Q4_1, Q5_1, Q8_0)."""
    if grid.super_block or grid.is_ternary:
        return tuple(GGUFBlockGrid(t) for t in ((grid.type,) if grid.is_ternary else ()) + K_QUANTS)
    suffix = "1" if grid.has_min else "0"
    return tuple(GGUFBlockGrid(t) for t in (f"q4_{suffix}", f"q5_{suffix}", "q8_0"))


def default_candidates(grid: Grid) -> tuple[Grid, ...]:
    """Ternary and 2/3/4-bit at ``grid``'s group (and its ternary variant or uniform symmetry); for a GGUF grid
    the GGUF types of :func:`default_gguf_candidates`."""
    if isinstance(grid, GGUFBlockGrid):
        return default_gguf_candidates(grid)
    variant = grid.variant if isinstance(grid, TernaryGrid) else "twn"
    symmetric = grid.symmetric if isinstance(grid, UniformGrid) else False
    return (TernaryGrid(variant, grid.group, grid.ragged_groups),
            *(UniformGrid(bits, grid.group, symmetric, grid.ragged_groups) for bits in (2, 3, 4)))


def candidates_of(config) -> tuple[Grid, ...]:
    candidates = config.candidate_grids
    candidates = tuple(candidates) if candidates is not None else default_candidates(config.grid)
    if not candidates:
        raise QuantConfigError("candidate_grids is empty: list at least one grid, or leave it unset for "
                               "ternary and 2/3/4-bit at the recipe's group")
    if len(set(candidates)) != len(candidates):
        raise QuantConfigError(f"candidate_grids lists a grid twice: {[g.describe() for g in candidates]}")
    return candidates


def linear_grid(candidate: Grid, module: nn.Linear, name: str) -> Grid:
    """The grid ``candidate`` puts ``module`` on: itself, or for a GGUF type whose blocks do not divide the
    linear's width the type llama.cpp's quantize tool falls back to (as the methods do), so that the bits
    counted are the bits stored."""
    return gguf_fallback_grid(candidate, module.in_features, name) or candidate


def linear_grids(linears: dict[str, nn.Linear], candidates: tuple[Grid, ...]) -> dict[str, list[Grid]]:
    return {name: [linear_grid(g, module, name) for g in candidates] for name, module in linears.items()}


def bits_table(linears: dict[str, nn.Linear], candidates: tuple[Grid, ...]) -> dict[str, list[float]]:
    """Storage bits of each linear's weight on each candidate, scales and zero points (a GGUF type's d, dmin
    and sub-block integers) included; a group that does not divide fails here."""
    table = {}
    for name, grids in linear_grids(linears, candidates).items():
        module = linears[name]
        shape = (module.out_features, module.in_features)
        table[name] = [storage_bits(grid_layout(shape, g, name) if isinstance(g, GGUFBlockGrid) else
                                    GroupLayout.for_weight(shape, g.group, g.ragged_groups, name), g) for g in grids]
    return table


def reachable_range(table: dict[str, list[float]], n_weights: int) -> tuple[float, float]:
    """The lowest and highest average bits per weight any allocation over ``table`` gives."""
    low = sum(min(bits) for bits in table.values()) / n_weights
    high = sum(max(bits) for bits in table.values()) / n_weights
    return low, high


def _weight_count(linears: dict[str, nn.Linear]) -> int:
    return sum(m.out_features * m.in_features for m in linears.values())


def check_mixed_precision(config, entry, linears: dict[str, nn.Linear]) -> None:
    """Reject mixed-precision settings that cannot work, before any calibration or evaluation:
    a method that reads one grid, overrides naming no linear, and a budget outside the reachable range."""
    budget, overrides = config.bits_budget, config.grid_overrides
    if budget is None and config.candidate_grids is not None:
        raise QuantConfigError("candidate_grids only matter under a bit budget: set bits_budget too (--bits-budget)")
    if budget is None and not overrides:
        return
    if not entry.per_linear_grids:
        raise QuantConfigError(f"method {entry.name!r} quantizes every linear on one grid: bits_budget and "
                               "grid_overrides work with rtn, gptq, awq and tesseraq")
    for pattern in overrides:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linears):
            raise QuantConfigError(f"grid_overrides key {pattern!r} names none of the quantized linears "
                                   f"(e.g. {next(iter(linears))!r}); use full module names or fnmatch patterns")
    if budget is None:
        return
    if overrides:
        raise QuantConfigError("set either bits_budget (the allocator picks every linear's grid) or grid_overrides "
                               "(you pick them), not both")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise QuantConfigError(f"bits_budget must be a number of bits per weight such as 2.5, got {budget!r}")
    if config.sensitivity_samples < 1:
        raise QuantConfigError(f"sensitivity_samples must be at least 1, got {config.sensitivity_samples}")
    candidates = candidates_of(config)
    low, high = reachable_range(bits_table(linears, candidates), _weight_count(linears))
    if not low - 1e-9 <= budget <= high + 1e-9:
        names = ", ".join(g.describe() for g in candidates)
        raise QuantConfigError(
            f"bits_budget {budget:g} cannot be reached: on the candidates {names}, scales and zero points included, "
            f"the {len(linears)} quantized linears of this model average between {low:.3f} and {high:.3f} bits per "
            "weight. Choose a budget in that range (--bits-budget), or change candidate_grids")


# --------------------------------------------------------------------------- sensitivity


class _StopForward(Exception):
    """Raised after the last decoder block: the norm and LM head are not needed."""


@torch.no_grad()
def input_second_moments(model: nn.Module, layout: DecoderLayout, linears: dict[str, nn.Linear],
                         calibration: Tensor) -> dict[str, Tensor]:
    """E[x_j²] of every input channel of each linear, over the tokens of ``calibration`` (float model)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    def stop(module, args, output):
        raise _StopForward

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    handles.append(layout.blocks[-1].register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        for start in range(0, calibration.shape[0], SENSITIVITY_BATCH):
            try:
                model(calibration[start:start + SENSITIVITY_BATCH].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in linears}


def rtn_sensitivity(weight: Tensor, second_moment: Tensor, grid: Grid, name: str = "weight") -> float:
    """Σ_ij (W − Q(W))²_ij · E[x_j²]: the RTN output error with the input correlations dropped."""
    w = weight.detach().float()
    error = quantize_weight(w, grid, name=name).dequantize() - w
    return float((error.pow(2) * second_moment.to(error.device)).sum())


# --------------------------------------------------------------------------- allocation


def allocate(bits: list[list[float]], errors: list[list[float]], budget_bits: float) -> list[int]:
    """Pick one option per item so that Σ bits ≤ ``budget_bits`` with a small Σ error.

    Greedy marginal gain: start from each item's cheapest option, then repeatedly take the
    upgrade (to any dearer option that does not raise the error) with the largest error
    drop per extra bit among those that still fit. Returns the chosen option of each item.
    """
    choice = [min(range(len(b)), key=lambda j: (b[j], e[j])) for b, e in zip(bits, errors)]
    total = sum(b[j] for b, j in zip(bits, choice))
    if total > budget_bits:
        raise QuantConfigError(f"the cheapest allocation takes {total:.0f} bits, more than the budget "
                               f"{budget_bits:.0f}")
    while True:
        best = None  # (gain per bit, item, option)
        for i, (b, e) in enumerate(zip(bits, errors)):
            now = choice[i]
            for j in range(len(b)):
                extra = b[j] - b[now]
                if extra <= 0 or e[j] > e[now] or total + extra > budget_bits:
                    continue
                rate = (e[now] - e[j]) / extra
                if best is None or rate > best[0]:
                    best = (rate, i, j)
        if best is None:
            return choice
        _, i, j = best
        total += bits[i][j] - bits[i][choice[i]]
        choice[i] = j


@dataclass
class Allocation:
    """Each linear's grid under a bit budget, and what the allocator saw."""

    grids: dict[str, Grid]  # full linear name -> grid
    candidates: tuple[Grid, ...]
    bits_budget: float
    achieved_bits: float  # average bits per weight, scales and zero points included
    reachable: tuple[float, float]
    bits: dict[str, float]  # per linear: bits per weight on its grid
    weights: dict[str, int]  # per linear: its weight count
    sensitivity: dict[str, list[float]]  # per linear: the measure on each candidate

    def report(self) -> dict:
        """The allocation per layer, JSON-ready (results.json, results.md's table)."""
        labels = [g.describe() for g in self.candidates]
        counts = {label: 0 for label in labels}
        for grid in self.grids.values():  # a GGUF fallback type may be no candidate itself
            counts[grid.describe()] = counts.get(grid.describe(), 0) + 1
        return {
            "bits_budget": self.bits_budget,
            "achieved_bits_per_weight": round(self.achieved_bits, 5),
            "reachable_bits_per_weight": [round(x, 5) for x in self.reachable],
            "candidates": labels,
            "measure": "RTN output error with input second moments: sum (W - Q(W))^2 * E[x^2]",
            "counts": counts,
            "layers": {name: {"grid": grid.describe(), "label": short_label(grid), "weights": self.weights[name],
                              "bits_per_weight": round(self.bits[name], 4),
                              "sensitivity": dict(zip(labels, self.sensitivity[name]))}
                       for name, grid in self.grids.items()},
        }


def short_label(grid: Grid) -> str:
    """One table cell: "T" for ternary, "W3" for 3-bit (the group is the same for every candidate), a GGUF
    type's own name ("Q4_K")."""
    if isinstance(grid, GGUFBlockGrid):
        return grid.type.upper()
    return "T" if isinstance(grid, TernaryGrid) else f"W{grid.bits}"


def allocate_grids(model: nn.Module, layout: DecoderLayout, linears: dict[str, nn.Linear], config,
                   calibration: Tensor) -> Allocation:
    """Measure every linear's sensitivity on each candidate, then spend ``config.bits_budget``."""
    from ..calib.capture import check_calibration_ids

    candidates = candidates_of(config)
    table = bits_table(linears, candidates)
    n_weights = _weight_count(linears)
    calibration = check_calibration_ids(model, calibration)[: config.sensitivity_samples]
    moments = input_second_moments(model, layout, linears, calibration)
    own = linear_grids(linears, candidates)
    sensitivity = {name: [rtn_sensitivity(module.weight, moments[name], g, name) for g in own[name]]
                   for name, module in linears.items()}
    names = list(linears)
    choice = allocate([table[n] for n in names], [sensitivity[n] for n in names], config.bits_budget * n_weights)
    grids = {name: own[name][j] for name, j in zip(names, choice)}
    achieved = sum(table[name][j] for name, j in zip(names, choice)) / n_weights
    if config.bits_budget - achieved > BUDGET_TOLERANCE:
        warnings.warn(f"the bit allocation reaches {achieved:.4f} bits per weight, {config.bits_budget - achieved:.4f} "
                      f"below the budget {config.bits_budget:g}: the model's {len(names)} linears are too few or too "
                      "large for a closer fit", RuntimeWarning, stacklevel=2)
    counts = {name: m.out_features * m.in_features for name, m in linears.items()}
    return Allocation(grids, candidates, float(config.bits_budget), achieved, reachable_range(table, n_weights),
                      {name: table[name][j] / counts[name] for name, j in zip(names, choice)}, counts, sensitivity)
