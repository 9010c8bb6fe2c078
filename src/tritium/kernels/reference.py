"""The reference implementations of ``tritium::packed_linear`` and ``tritium::packed_linear_a8``: the oracles every
kernel must match.

It unpacks the digits, dequantizes the weight to float32 and calls ``F.linear``, so
it is obviously right and runs on any device, slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pack.packed import PackedWeight
from ..quant.activations import ActivationGrid, dequantize_activations, quantize_activations


def packed_linear_reference(x: Tensor, packed: Tensor, scale: Tensor, zero: Tensor | None, shift: Tensor | None,
                            radix: int, in_features: int, group_size: int, implicit_zero: float,
                            kernel_layout: Tensor | None = None) -> Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(f"packed_linear: input has {x.shape[-1]} features, the layer expects {in_features}")
    weight = PackedWeight(packed, scale, radix, in_features, group_size, zero=zero, shift=shift,
                          implicit_zero=implicit_zero).validate("packed_linear").dequantize(torch.float32)
    return F.linear(x.float(), weight).to(x.dtype)


AVX2_ACTIVATION_BLOCK = 128  # activations per int8 scale on the CPU kernel's avx2 path


def round_activations_int8(x: Tensor, in_features: int, group_size: int,
                           block: int = AVX2_ACTIVATION_BLOCK) -> Tensor:
    """The activations as the CPU kernel's ``avx2`` path sees them: rounded to int8, back in float32.

    Each group of ``group_size`` inputs (the last one may be shorter) is cut into blocks of ``block``;
    a block's scale is ``absmax / 127``, and ``x`` becomes ``round(x · (127 / absmax)) · scale``
    (round half to even, float32 throughout, as the kernel computes it). An all-zero block stays zero.
    The avx2 path's output equals :func:`packed_linear_reference` on these activations up to
    summation order; rows with a non-finite value are not rounded there (they take the exact path).
    """
    if x.shape[-1] != in_features:
        raise ValueError(f"round_activations_int8: input has {x.shape[-1]} features, expected {in_features}")
    # Each float32 operation below is done in float64 and rounded once to float32: that is the correctly
    # rounded float32 result, as the kernel's own division and product give. (torch's `127.0 / t` is
    # 127·reciprocal(t), one rounding more, and would round a near-tie the other way now and then.)
    xf = x.float().double()
    out = torch.empty_like(xf, dtype=torch.float32)
    for g0 in range(0, in_features, group_size):
        g1 = min(g0 + group_size, in_features)
        for b0 in range(g0, g1, block):
            part = xf[..., b0:min(b0 + block, g1)]
            amax = part.abs().amax(-1, keepdim=True)
            safe = torch.where(amax > 0, amax, torch.ones_like(amax))
            inv = (127.0 / safe).float().double()
            q = torch.round((part * inv).float().double())
            scale = (safe / 127.0).float().double()
            out[..., b0:min(b0 + block, g1)] = torch.where(amax > 0, q * scale, torch.zeros_like(part)).float()
    return out


def a8_grid(clip_ratio: float):
    """The activation grid ``tritium::packed_linear_a8`` quantizes on: 8-bit symmetric, one scale per token."""
    return ActivationGrid(bits=8, symmetric=True, group="token", clip_ratio=clip_ratio)


def packed_linear_a8_reference(x: Tensor, packed: Tensor, scale: Tensor, zero: Tensor | None, shift: Tensor | None,
                               radix: int, in_features: int, group_size: int, implicit_zero: float, clip_ratio: float,
                               kernel_layout: Tensor | None = None) -> Tensor:
    """The reference of ``tritium::packed_linear_a8``: ``x`` fake-quantized per token to int8 (in float32, by
    :func:`tritium.quant.activations.quantize_activations`), then :func:`packed_linear_reference`.

    For a float32 ``x`` this is exactly what a packed linear computes with an 8-bit per-token activation
    quantizer on its input; for fp16/bf16 inputs the quantizer's pre-hook would also round the fake-quant
    values to that dtype, which the integer kernel (and this reference) do not."""
    if x.shape[-1] != in_features:
        raise ValueError(f"packed_linear_a8: input has {x.shape[-1]} features, the layer expects {in_features}")
    grid = a8_grid(clip_ratio)
    seen = dequantize_activations(*quantize_activations(x.float(), grid), grid)
    return packed_linear_reference(seen, packed, scale, zero, shift, radix, in_features, group_size,
                                   implicit_zero).to(x.dtype)
