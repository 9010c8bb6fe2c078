"""A packed weight matrix: grouped digit bytes plus fp16 scales (and zero points, shifts).

Every grid reads as one formula, which the kernels implement:

    w[n, j] = scale[n, g] · (digit[n, j] − zero[n, g]) + shift[n, g]      (g = j // group_size)

Ternary codes t ∈ {−1, 0, 1} are stored as digits t + 1 with an implicit zero of 1;
uniform k-bit codes are their own digits with a stored zero point (or the implicit
2^(k−1) of a symmetric grid); DLT has a shift. GGUF-grid codes are their own digits too:
the ``_0`` types with the format's implicit zero 2^(k−1), the ``_1`` types with no zero and
their fp16 min as the shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..quant.grids import GGUFBlockGrid, QuantizedWeight, TernaryGrid, UniformGrid
from .layouts import (
    PackError,
    code_bits_per_weight,
    group_sizes,
    pack_grouped,
    packed_length,
    ternary_radix,
    uniform_radix,
    unpack_grouped,
)

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class PackedWeight:
    packed: Tensor  # uint8 [out, n_groups, bytes_per_group]
    scale: Tensor  # [out, n_groups] in the storage dtype
    radix: int
    in_features: int
    group_size: int
    zero: Tensor | None = None  # [out, n_groups]; None: every group uses `implicit_zero`
    shift: Tensor | None = None  # [out, n_groups]
    implicit_zero: float = 0.0

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def n_groups(self) -> int:
        return self.packed.shape[1]

    def validate(self, name: str = "weight") -> "PackedWeight":
        """Check that every part fits the declared shape; raise a clear error if not."""
        sizes = group_sizes(self.in_features, self.group_size)
        expected = (len(sizes), packed_length(self.group_size, self.radix))
        if self.packed.dtype != torch.uint8 or self.packed.dim() != 3 or tuple(self.packed.shape[1:]) != expected:
            raise PackError(
                f"{name}: packed codes have dtype {self.packed.dtype} and shape {tuple(self.packed.shape)}, "
                f"expected uint8 [out, {expected[0]}, {expected[1]}] for in_features={self.in_features}, "
                f"group_size={self.group_size}, radix={self.radix}: the data is truncated, corrupt or mislabelled"
            )
        for part in ("scale", "zero", "shift"):
            t = getattr(self, part)
            if t is None:
                continue
            if tuple(t.shape) != (self.out_features, len(sizes)):
                raise PackError(
                    f"{name}: {part} has shape {tuple(t.shape)}, expected {(self.out_features, len(sizes))}"
                )
            if not torch.isfinite(t.float()).all():
                raise PackError(f"{name}: {part} holds NaN or Inf values: the data is corrupt")
        return self

    def digits(self) -> Tensor:
        return unpack_grouped(self.packed, self.radix, self.in_features, self.group_size)

    def group_params(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(scale, zero, shift) as float32 ``[out, n_groups]`` (shift may be None)."""
        scale = self.scale.float()
        zero = self.zero.float() if self.zero is not None else torch.full_like(scale, self.implicit_zero)
        shift = self.shift.float() if self.shift is not None else None
        return scale, zero, shift

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        scale, zero, shift = self.group_params()
        sizes = torch.tensor(group_sizes(self.in_features, self.group_size), device=scale.device)
        expand = lambda t: t.repeat_interleave(sizes, dim=1)  # noqa: E731
        w = (self.digits().float() - expand(zero)) * expand(scale)
        if shift is not None:
            w = w + expand(shift)
        return w.to(dtype)

    def bits_report(self) -> dict:
        return bits_per_weight(self)


def _stored(t: Tensor, dtype: torch.dtype, name: str, part: str) -> Tensor:
    stored = t.to(dtype)
    if not torch.equal(stored.float(), t.float()):
        worst = (stored.float() - t.float()).abs().max().item()
        raise PackError(
            f"{name}: the {part} values are not exactly representable in {dtype} (max error {worst:.3g}); "
            f"pack with scale_dtype='float32' or quantize with scales rounded to {dtype}"
        )
    return stored


def pack_quantized(qweight: QuantizedWeight, ternary_layout: str = "base3", scale_dtype: str = "float16",
                   name: str = "weight") -> PackedWeight:
    """Pack a :class:`QuantizedWeight` exactly; its dequantized value is unchanged."""
    if scale_dtype not in SCALE_DTYPES:
        raise PackError(f"scale_dtype {scale_dtype!r} is unknown: choose one of {sorted(SCALE_DTYPES)}")
    dtype = SCALE_DTYPES[scale_dtype]
    layout, grid = qweight.layout, qweight.grid
    out_features, in_features = layout.out_features, layout.in_features
    group_size = in_features if layout.per_tensor else layout.group_size
    n_groups = len(group_sizes(in_features, group_size))

    def per_group(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float().reshape(-1, 1).expand(out_features, n_groups) \
            if layout.per_tensor else t.float()

    scale, zero, shift = per_group(qweight.scale), per_group(qweight.zero), per_group(qweight.shift)
    codes = qweight.codes
    if tuple(codes.shape) != (out_features, in_features):
        raise PackError(f"{name}: codes have shape {tuple(codes.shape)}, the layout says {(out_features, in_features)}")
    if isinstance(grid, TernaryGrid):
        radix = ternary_radix(ternary_layout)
        if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) > 1):
            raise PackError(f"{name}: ternary codes must lie in {{-1, 0, 1}}")
        digits, implicit_zero, zero = codes.to(torch.int16) + 1, 1.0, None
    elif isinstance(grid, UniformGrid):
        radix = uniform_radix(grid.bits)
        digits, implicit_zero = codes, 0.0
        if zero is None:
            raise PackError(f"{name}: a uniform-grid weight needs its zero points")
        if grid.symmetric and bool((zero == 2 ** (grid.bits - 1)).all()):
            zero, implicit_zero = None, float(2 ** (grid.bits - 1))
    elif isinstance(grid, GGUFBlockGrid):
        radix = grid.levels  # 5- and 6-bit codes take a byte each here; the GGUF file packs them densely
        if grid.super_block:  # d·sc and dmin·m are exact float32 products, not fp16 values
            dtype = torch.float32
        digits, implicit_zero = codes, 0.0
        if grid.has_min:
            if zero is not None or shift is None:
                raise PackError(f"{name}: a {grid.describe()} weight holds its min as a shift and no zero point")
        else:
            if zero is None or shift is not None or not bool((zero == grid.fixed_zero).all()):
                raise PackError(f"{name}: a {grid.describe()} weight needs the fixed zero {grid.fixed_zero} "
                                "and no shift")
            zero, implicit_zero = None, float(grid.fixed_zero)
    else:
        raise PackError(f"{name}: grid {grid!r} has no packed layout")
    packed = pack_grouped(digits, group_size, radix)
    return PackedWeight(
        packed=packed,
        scale=_stored(scale, dtype, name, "scale").contiguous(),
        radix=radix,
        in_features=in_features,
        group_size=group_size,
        zero=None if zero is None else _stored(zero, dtype, name, "zero point").contiguous(),
        shift=None if shift is None else _stored(shift, dtype, name, "shift").contiguous(),
        implicit_zero=implicit_zero,
    ).validate(name)


def bits_per_weight(weight: PackedWeight) -> dict:
    """Storage cost per weight: packed codes (padding included) plus scales, zero points, shifts."""
    n = weight.out_features * weight.in_features
    code_bits = weight.packed.numel() * 8
    scale_bits = weight.scale.numel() * weight.scale.element_size() * 8
    zero_bits = 0 if weight.zero is None else weight.zero.numel() * weight.zero.element_size() * 8
    shift_bits = 0 if weight.shift is None else weight.shift.numel() * weight.shift.element_size() * 8
    total = code_bits + scale_bits + zero_bits + shift_bits
    return {
        "weights": n,
        "code_bits_per_weight": code_bits / n,
        "layout_code_bits_per_weight": code_bits_per_weight(weight.radix, weight.group_size),
        "scale_bits_per_weight": scale_bits / n,
        "zero_bits_per_weight": zero_bits / n,
        "shift_bits_per_weight": shift_bits / n,
        "bits_per_weight": total / n,
        "bytes": total // 8,
    }


def bits_report(weights: dict[str, PackedWeight]) -> dict:
    """Totals over many packed matrices: overall bits per weight and bytes."""
    if not weights:
        raise PackError("bits_report needs at least one packed weight")
    per = {name: bits_per_weight(w) for name, w in weights.items()}
    n = sum(r["weights"] for r in per.values())
    total_bits = sum(r["bits_per_weight"] * r["weights"] for r in per.values())
    code_bits = sum(r["code_bits_per_weight"] * r["weights"] for r in per.values())
    return {"weights": n, "bits_per_weight": total_bits / n, "code_bits_per_weight": code_bits / n,
            "bytes": int(total_bits // 8), "layers": per}
