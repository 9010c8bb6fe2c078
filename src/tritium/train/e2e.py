"""End-to-end scale tuning after post-training quantization (EfficientQAT's E2E-QP), as a step of a
quantize recipe.

A recipe's ``e2e:`` section (``loss``, ``data`` and ``train``, as in a distill recipe) makes the
quantize job continue its PTQ result: the integer codes stay fixed and only the scales, zero points
and shifts train, end to end against the float model by OFF + KL. Block reconstruction fits each
block to the float block's output given quantized inputs; it never sees the loss at the logits, which
is where the last errors of a 2- or 3-bit model add up.
"""

from __future__ import annotations

from ..quant.grids import GGUFBlockGrid, Grid, QuantConfigError, TernaryGrid, UniformGrid
from .distill import DistillConfig

E2E_KEYS = ("loss", "data", "train")


def check_e2e_settings(settings, grid: Grid, bits_budget=None) -> dict:
    """The ``e2e:`` section checked before any work; returns it as a dict. A grid whose student has no
    learnable scales, a mixed-precision result, or an option the trainer does not know fail here."""
    if not isinstance(settings, dict):
        raise QuantConfigError(f"e2e must be a mapping with {', '.join(E2E_KEYS)} (as a distill recipe's "
                               f"method_args), got {settings!r}")
    unknown = sorted(set(settings) - set(E2E_KEYS))
    if unknown:
        raise QuantConfigError(f"e2e has no option(s) {unknown}; it takes {', '.join(E2E_KEYS)}")
    if bits_budget is not None:
        raise QuantConfigError("e2e scale tuning trains one grid; a --bits-budget result mixes several: drop e2e "
                               "or the bit budget")
    if not (isinstance(grid, (UniformGrid, GGUFBlockGrid)) or (isinstance(grid, TernaryGrid) and grid.variant == "dlt")):
        raise QuantConfigError(f"e2e tunes learnable scales, which {grid.describe()} has not: use a uniform grid, a "
                               "GGUF grid (gguf:TYPE) or the ternary dlt variant")
    if "train" not in settings or not any(k in settings["train"] for k in ("tokens", "steps")):
        raise QuantConfigError("e2e needs a budget: e2e.train.tokens (or steps)")
    if not (settings.get("data") or {}).get("sources"):
        raise QuantConfigError("e2e needs training text: e2e.data.sources (e.g. [wikitext2-valid]; never a test split)")
    # every option checked by the trainer's own dataclasses (init_from is checked when the start exists)
    DistillConfig(grid=grid, **{k: dict(settings[k]) for k in settings})
    return dict(settings)


def e2e_config(settings: dict, grid: Grid, skip, start_folder: str) -> DistillConfig:
    """The distill config that tunes the scales of the PTQ result saved in ``start_folder``."""
    return DistillConfig(grid=grid, skip=tuple(skip), trainable="scales", init_from=str(start_folder),
                         **{k: dict(settings[k]) for k in settings})
