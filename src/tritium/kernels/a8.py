"""Which grids the packed kernels run with integer activations (``tritium::packed_linear_a8``).

The int8 path quantizes each token's activations to int8 codes (8-bit symmetric, one scale per token, the grid's
clipping ratio), exactly as :func:`tritium.quant.activations.quantize_activations` does, and multiplies them with
the weight digits in integers. Its CPU kernel covers digits of up to 4 bits: ternary weights (with DLT's shift)
and uniform 2-, 3- and 4-bit codes (with their zero points). :func:`activation_kernel_reason` is what preflight
asks before a packed weight + activation job runs (``tritium.jobs.preflight.packed_activation_reason``).
"""

from __future__ import annotations

from ..quant.activations import ActivationGrid
from ..quant.grids import GGUFBlockGrid, TernaryGrid, UniformGrid

A8_SUPPORTED = ("A8 (8-bit symmetric activations, one scale per token) on ternary and uniform 2-, 3- and 4-bit "
                "weights")
A8_MAX_RADIX = 16  # digits of up to 4 bits


def int8_activation_reason(act_grid) -> str | None:
    """Why the int8 path cannot quantize activations on ``act_grid`` (None: it can)."""
    if not isinstance(act_grid, ActivationGrid):
        return f"{act_grid!r} is no activation grid"
    if act_grid.bits != 8:
        return f"the integer-activation kernel takes 8-bit activations, not {act_grid.bits}-bit ones"
    if not act_grid.symmetric:
        return "the integer-activation kernel takes symmetric activations (no zero point), not asymmetric ones"
    if act_grid.group != "token":
        return (f"the integer-activation kernel takes one activation scale per token, not one per group of "
                f"{act_grid.group}")
    return None


def weight_grid_reason(weight_grid) -> str | None:
    """Why the int8 path cannot multiply packed weights on ``weight_grid`` (None: it can)."""
    if isinstance(weight_grid, TernaryGrid):
        return None
    if isinstance(weight_grid, UniformGrid):
        if weight_grid.bits <= 4:
            return None
        return f"the integer-activation kernel reads weight digits of up to 4 bits, not {weight_grid.bits}-bit codes"
    if isinstance(weight_grid, GGUFBlockGrid):
        return f"the integer-activation kernel has no path for llama.cpp's {weight_grid.describe()} block format"
    return f"the integer-activation kernel has no path for {weight_grid!r}"


def activation_kernel_reason(weight_grid, act_grid) -> str | None:
    """None when the packed kernels run ``weight_grid`` weights with inputs on ``act_grid`` in integers; else why
    not, naming what they run."""
    reason = int8_activation_reason(act_grid) or weight_grid_reason(weight_grid)
    return None if reason is None else f"{reason} (it runs {A8_SUPPORTED})"
