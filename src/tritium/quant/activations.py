"""Activation grids: dynamic quantization of a linear layer's input, per token.

Weights are quantized once; activations change with every input, so their scale (and zero
point) is computed on the fly from each token's values, as QuaRot and BitNet b1.58 do.
``group="token"`` gives each token (row of the last dimension) one scale; an integer group
splits the hidden dimension into groups of that size, each with its own scale.

The integer form (:func:`quantize_activations`) is what an integer kernel consumes; the
fake-quant form (:func:`fake_quantize_activations`) is the same numbers dequantized, with a
straight-through gradient for training. Both round half to even (``torch.round``), so a
kernel that rounds with ``nearbyint`` reproduces the codes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import torch
from torch import Tensor

from .grids import QuantConfigError, straight_through

SUPPORTED_ACTIVATION_BITS = (4, 6, 8)
ActivationGroup = Union[int, Literal["token"]]
# A token of all zeros gets this scale instead of 0, so its codes are 0 and nothing divides by zero.
ACTIVATION_SCALE_EPS = 1e-8


@dataclass(frozen=True)
class ActivationGrid:
    """k-bit dynamic activation grid.

    Symmetric: codes in [−2^(k−1), 2^(k−1) − 1], x ≈ scale·code, scale = clip·max|x| / (2^(k−1) − 1).
    Asymmetric: codes in [0, 2^k − 1], x ≈ scale·(code − zero), from clip·min and clip·max of the token.
    ``clip_ratio`` < 1 clips outliers (its best value is searched on calibration data).
    """

    bits: int = 8
    symmetric: bool = True
    group: ActivationGroup = "token"
    clip_ratio: float = 1.0
    kind: str = field(default="activation", init=False)

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_ACTIVATION_BITS:
            raise QuantConfigError(
                f"act_bits={self.bits!r} is not supported: choose one of {SUPPORTED_ACTIVATION_BITS}"
            )
        if self.group != "token" and (isinstance(self.group, bool) or not isinstance(self.group, int)
                                      or self.group <= 0):
            raise QuantConfigError(
                f"act_group={self.group!r} is not valid: use 'token' (one scale per token) or a positive group size"
            )
        if not isinstance(self.clip_ratio, (int, float)) or isinstance(self.clip_ratio, bool) \
                or not 0.0 < float(self.clip_ratio) <= 1.0:
            raise QuantConfigError(f"act_clip_ratio={self.clip_ratio!r} must be in (0, 1]")

    @property
    def max_code(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def min_code(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    def describe(self) -> str:
        group = "" if self.group == "token" else f"g{self.group}"
        return f"A{self.bits}{group}{'' if self.symmetric else '-asym'}"


def _grouped(x: Tensor, grid: ActivationGrid) -> Tensor:
    if grid.group == "token":
        return x.unsqueeze(-2)
    width = x.shape[-1]
    if width % grid.group:
        raise QuantConfigError(
            f"act_group={grid.group} does not divide the activation width {width}: "
            f"choose a divisor of {width} or act_group='token'"
        )
    return x.reshape(*x.shape[:-1], width // grid.group, grid.group)


def activation_params(x: Tensor, grid: ActivationGrid) -> tuple[Tensor, Tensor | None]:
    """Scale (and zero point) per token or per group, shaped ``[..., groups, 1]``, in float32."""
    g = _grouped(x.detach().float(), grid)
    if grid.symmetric:
        peak = g.abs().amax(dim=-1, keepdim=True) * grid.clip_ratio
        return (peak / grid.max_code).clamp_min(ACTIVATION_SCALE_EPS), None
    low = (g.amin(dim=-1, keepdim=True) * grid.clip_ratio).clamp_max(0.0)
    high = (g.amax(dim=-1, keepdim=True) * grid.clip_ratio).clamp_min(0.0)
    scale = ((high - low) / grid.max_code).clamp_min(ACTIVATION_SCALE_EPS)
    return scale, torch.round(-low / scale)


def quantize_activations(x: Tensor, grid: ActivationGrid) -> tuple[Tensor, Tensor, Tensor | None]:
    """Integer codes (int32, the shape of ``x``), the scale and the zero point (None when symmetric).

    ``x ≈ scale · (codes − zero)`` per group, with scale and zero shaped ``[..., groups, 1]``.
    """
    scale, zero = activation_params(x, grid)
    g = _grouped(x.float(), grid)
    shifted = g / scale if zero is None else g / scale + zero
    codes = torch.clamp(torch.round(shifted), grid.min_code, grid.max_code)
    return codes.reshape(x.shape).to(torch.int32), scale, zero


def dequantize_activations(codes: Tensor, scale: Tensor, zero: Tensor | None, grid: ActivationGrid) -> Tensor:
    g = _grouped(codes.float(), grid)
    values = g * scale if zero is None else (g - zero) * scale
    return values.reshape(codes.shape)


def fake_quantize_activations(x: Tensor, grid: ActivationGrid | None) -> Tensor:
    """``x`` quantized and dequantized in its own dtype, with a straight-through gradient; ``grid=None`` is a no-op."""
    if grid is None:
        return x
    codes, scale, zero = quantize_activations(x, grid)
    return straight_through(x, dequantize_activations(codes, scale, zero, grid).to(x.dtype))
