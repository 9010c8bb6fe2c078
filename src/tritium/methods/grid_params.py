"""Grid arithmetic with the per-group parameters held fixed.

GPTQ, AWQ's clipping search and TesseraQ all pick per-group parameters first and
then choose codes against them, so they need the grid split into "parameters" and
"codes given parameters". Every grid is treated as an affine set of integer levels:

* uniform: x = w/scale + zero, codes 0..2^k−1, w = scale·(code − zero);
* ternary: x = (w − shift)/scale, codes −1..1, w = scale·code + shift;
* GGUF blocks: as uniform with the format's fixed zero (``_0`` types), or as ternary's
  form with the fp16 min m as the shift (``_1`` types: x = (w − m)/d, w = d·code + m).

Codes are the nearest level to x (clamped), which for the uniform grid and ternary
absmean is exactly round-to-nearest; for TWN/DLT it is the nearest point of the set
{−α, 0, α} (+γ) for the variant's α and γ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..quant.grids import (
    SCALE_EPS,
    GGUFBlockGrid,
    Grid,
    GroupLayout,
    QuantizedWeight,
    TernaryGrid,
    as_fp16_values,
    gguf_block_params,
    grid_layout,
    quantize_ternary,
    uniform_params,
)


@dataclass
class GroupParams:
    """Per-group scale, and zero point (uniform, GGUF ``_0``) or shift (ternary DLT, GGUF ``_1`` min),
    each ``layout.scale_shape``."""

    scale: Tensor
    zero: Tensor | None = None
    shift: Tensor | None = None

    def to(self, device) -> "GroupParams":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return GroupParams(move(self.scale), move(self.zero), move(self.shift))


def code_range(grid: Grid) -> tuple[int, int]:
    return (-1, 1) if isinstance(grid, TernaryGrid) else (0, grid.max_code)


def layout_for(w: Tensor, grid: Grid, name: str = "weight") -> GroupLayout:
    return grid_layout(tuple(w.shape), grid, name=name)


def fitting_span(grid: Grid, layout: GroupLayout) -> int:
    """How many columns get their parameters together: a k-quant's super-block, whose sub-block
    scales are 6-bit multiples of one d, else one group."""
    if isinstance(grid, GGUFBlockGrid) and grid.super_block:
        return grid.super_block
    return layout.group_size


def rtn_params(w: Tensor, grid: Grid, layout: GroupLayout, clip: Tensor | float = 1.0) -> GroupParams:
    """The grid's own parameters for ``w``; ``clip`` shrinks the range (uniform) or the scale (ternary)."""
    w = w.float()
    if isinstance(grid, TernaryGrid):
        q = quantize_ternary(w, grid, layout)
        scale = q.scale if isinstance(clip, float) and clip == 1.0 else as_fp16_values((q.scale * clip).clamp_min(SCALE_EPS))
        return GroupParams(scale, shift=q.shift)
    if isinstance(grid, GGUFBlockGrid):
        scale, zero, low = gguf_block_params(w, grid, layout, clip)
        return GroupParams(scale, zero=zero, shift=low)
    scale, zero = uniform_params(w, grid, layout, clip)
    return GroupParams(scale, zero=zero)


def to_levels(w: Tensor, params: GroupParams, layout: GroupLayout) -> Tensor:
    """Continuous grid coordinate x of every weight (before rounding)."""
    if params.shift is not None:
        w = w - layout.expand(params.shift)
    x = w / layout.expand(params.scale)
    if params.zero is not None:
        x = x + layout.expand(params.zero)
    return x


def from_levels(codes: Tensor, params: GroupParams, layout: GroupLayout, scale: Tensor | None = None) -> Tensor:
    """Dequantize (possibly fractional) codes; ``scale`` overrides ``params.scale`` (TesseraQ's DST)."""
    scale = params.scale if scale is None else scale
    if params.zero is not None:
        codes = codes - layout.expand(params.zero)
    w = codes * layout.expand(scale)
    if params.shift is not None:
        w = w + layout.expand(params.shift)
    return w


def nearest_codes(w: Tensor, params: GroupParams, grid: Grid, layout: GroupLayout) -> Tensor:
    lo, hi = code_range(grid)
    return torch.clamp(torch.round(to_levels(w.float(), params, layout)), lo, hi)


def fake_quant_with(w: Tensor, params: GroupParams, grid: Grid, layout: GroupLayout) -> Tensor:
    return from_levels(nearest_codes(w, params, grid, layout), params, layout)


def pack(codes: Tensor, params: GroupParams, grid: Grid, layout: GroupLayout) -> QuantizedWeight:
    """Integer codes plus parameters as a :class:`QuantizedWeight` in the grid's storage dtype."""
    dtype = torch.int8 if isinstance(grid, TernaryGrid) else torch.uint8
    cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
    return QuantizedWeight(codes.detach().round().to(torch.int16).to(dtype).cpu(), cpu(params.scale), grid, layout,
                           zero=cpu(params.zero), shift=cpu(params.shift))
