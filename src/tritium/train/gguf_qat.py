"""Quantization-aware training and end-to-end scale tuning on a llama.cpp block format (``gguf:TYPE``).

A :class:`GGUFQATLinear` keeps the format's own parameters, so every step's forward weight is one the
format stores exactly, and its GGUF export is bit for bit what trained:

* per block (the simple types Q4_0 … Q8_0, TQ1_0/TQ2_0) or per 256-weight super-block (the k-quants) one
  fp16 value d, and for the types with a min one fp16 m (simple) or dmin (k-quants); these train (d and
  dmin in the log, so ``lr_quant`` is a relative step whatever their size; m in steps of d), rounded to
  fp16 in the forward with a straight-through gradient;
* the k-quants' sub-block integers sc and m (4, 6 or 8 bits) stay as the start has them. They are discrete,
  and a PTQ start's step 0 must be its own model: re-deriving them by llama.cpp's search at each step
  would change a GPTQ/AWQ/TesseraQ start's scales at once and move discontinuously whenever d moves. Kept
  fixed, d scales the 8 or 16 sub-blocks of its super-block together, d·sc stays an exact float32
  product (an 11-bit by at most 8-bit integer product), and the encoder recovers d and sc from it.

The forward weight is w = (d·sc)·(q − zero) for the types without a min, (d·sc)·q − dmin·m for the
k-quants with one and d·q + m for Q4_1/Q5_1, in the float32 operations of
:func:`~tritium.quant.grids.dequantize`, which export reads back. The codes q come from the latent
weights by rounding (straight through, LSQ's gradients in d, or with ``scale_gradient="codes"`` the
frozen-codes ones, as :mod:`tritium.train.qat` has them) or, with ``freeze_codes`` (E2E-QP), are fixed;
then d and dmin get their exact gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant.grids import (
    FP16_SMALLEST,
    GGUFBlockGrid,
    QuantConfigError,
    QuantizedWeight,
    as_fp16_values,
    dequantize,
    grid_layout,
    quantize_weight,
    round_ste,
    straight_through,
    sub_block_factors,
)
from .qat import CELL_MARGIN, SCALE_GRADIENTS, freeze_codes_


def _fp16_ste(t: Tensor) -> Tensor:
    return straight_through(t, as_fp16_values(t.detach()))


class GGUFQATLinear(nn.Linear):
    """An ``nn.Linear`` whose forward weight is on the GGUF block format ``grid``; ``weight`` holds the latents.

    Parameters, per super-block (k-quants) or block: ``log_d`` (|d| = ``d_start``·exp(log_d); ``d_sign`` keeps
    each d's sign, as Q4_0's and the signed k-quants' d may be negative) and for the types with a min ``m``
    (dmin = ``m_start``·exp(m) for the k-quants, the min ``m_start`` + m·``d_start`` for Q4_1/Q5_1). Buffers:
    the start's values, the sub-block integers ``sc`` and ``sub_min`` (ones and None outside the k-quants)
    and the frozen codes, if any.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, grid: GGUFBlockGrid, device=None,
                 dtype=None, name: str = "weight", scale_gradient: str = "lsq"):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not isinstance(grid, GGUFBlockGrid):
            raise QuantConfigError(f"{name}: GGUFQATLinear needs a GGUF grid, got {grid.describe()}")
        if scale_gradient not in SCALE_GRADIENTS:
            raise QuantConfigError(f"scale_gradient={scale_gradient!r} is unknown: use one of {SCALE_GRADIENTS}")
        self.scale_gradient = scale_gradient
        self.grid = grid
        self.layout = grid_layout((out_features, in_features), grid, name=name)  # refuses a width it cannot hold
        rows, n_groups = self.layout.scale_shape
        self.per_super = grid.super_block // grid.group if grid.super_block else 1
        heads = (rows, n_groups // self.per_super)
        # d = d_start·exp(log_d): Adam moves a parameter by about its learning rate per step, and a k-quant's
        # d is the sub-block scale over up to 127, so an absolute d would move by many times its size; in the
        # log the step is relative, as large for Q6_K's d as for TQ2_0's
        self.log_d = nn.Parameter(torch.zeros(heads, device=device))
        self.register_buffer("d_start", torch.ones(heads, device=device))  # |d| of the start
        self.register_buffer("d_sign", torch.ones(heads, device=device))
        self.register_buffer("sc", torch.ones(rows, n_groups, device=device))
        self.register_buffer("sub_min", None)
        self.register_parameter("m", None)
        self.register_buffer("m_start", None)
        if grid.has_min:
            # k-quants: dmin = dmin_start·exp(m), as d; Q4_1/Q5_1: the min m_start + m·|d_start| (any sign, so not
            # in the log; in steps of the block's d, so its learning rate means what d's does)
            self.m = nn.Parameter(torch.zeros(heads, device=device))
            self.m_start = torch.zeros(heads, device=device)
            if grid.super_block:
                self.sub_min = torch.zeros(rows, n_groups, device=device)
        self.register_buffer("frozen_codes", None)
        self.name = name

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: GGUFBlockGrid, name: str = "weight",
                    scale_gradient: str = "lsq") -> "GGUFQATLinear":
        """The linear's weight as latents, its quantizer the format's round-to-nearest (grids' rules)."""
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, grid, device=w.device,
                     dtype=w.dtype, name=name, scale_gradient=scale_gradient)
        rtn = quantize_weight(w.float(), grid, name=name)  # refuses NaN or Inf
        with torch.no_grad():
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.load_codes(rtn.codes, rtn.scale, rtn.zero, rtn.shift, reference=w.float())
        return module

    # ------------------------------------------------------------------ parameters as the format stores them

    def _by_group(self, per_head: Tensor) -> Tensor:
        return per_head.repeat_interleave(self.per_super, dim=1) if self.per_super > 1 else per_head

    def _scale_shift(self) -> tuple[Tensor, Tensor | None]:
        """Per group: d·sc and the shift (−dmin·m, or m), as fp16 values times the integers, straight through."""
        d = _fp16_ste((self.d_start * torch.exp(self.log_d)).clamp_min(FP16_SMALLEST)) * self.d_sign
        scale = self._by_group(d) * self.sc
        if self.m is None:
            return scale, None
        if self.sub_min is None:  # Q4_1, Q5_1: the min itself, an fp16 value
            return scale, _fp16_ste(self.m_start + self.m * self.d_start)
        dmin = _fp16_ste(self.m_start * torch.exp(self.m))
        return scale, -(self._by_group(dmin) * self.sub_min)

    def _zero(self, like: Tensor) -> Tensor | None:
        return None if self.grid.has_min else torch.full_like(like, float(self.grid.fixed_zero))

    def _codes_from(self, latent: Tensor, scale: Tensor, shift: Tensor | None, ste: bool) -> Tensor:
        """The nearest codes of the latents, as grids.affine_codes rounds them."""
        x = latent if shift is None else latent - self.layout.expand(shift)
        x = x / self.layout.expand(scale)
        if not self.grid.has_min:
            x = x + self.grid.fixed_zero
        return torch.clamp(round_ste(x) if ste else torch.round(x), 0, self.grid.max_code)

    # ------------------------------------------------------------------ start, freeze, forward, export

    @torch.no_grad()
    def load_codes(self, codes: Tensor, scale: Tensor, zero: Tensor | None, shift: Tensor | None,
                   reference: Tensor | None = None) -> bool:
        """Start from a result on this format: its codes, d (and dmin or m) and sub-block integers, so the
        first forward is exactly its weight. The latents sit at their cells' centres or, with ``reference``
        (the float weights), at the float positions clamped into their cells. Returns whether the float
        positions were used."""
        grid, name = self.grid, self.name
        scale = scale.float()
        if grid.super_block:
            d, sc, exact = sub_block_factors(scale.reshape(-1, self.per_super), grid.format.sub_scale)
            if not bool(exact.all()):
                raise QuantConfigError(f"{name}: the start's sub-block scales are not {grid.format.sub_scale.bits}-bit "
                                       f"multiples of one fp16 d per super-block: it is not on {grid.describe()}")
            d, sc = d.reshape(self.d_start.shape), sc.reshape(self.sc.shape)
        else:
            d, sc = scale, torch.ones_like(scale)
            if not torch.equal(as_fp16_values(d), d):
                raise QuantConfigError(f"{name}: the start's scales are not fp16 values: it is not on {grid.describe()}")
        if bool((d == 0).any()) or bool((sc == 0).any()):
            raise QuantConfigError(f"{name}: the start has a block whose scale is 0, which the student cannot "
                                   "divide by: quantize it again on the GGUF grid (its scales are never 0)")
        self.log_d.zero_()  # exp(0) = 1 exactly: the start's d, bit for bit
        self.d_start.copy_(d.abs())
        self.d_sign.copy_(torch.sign(d))
        self.sc.copy_(sc)
        if grid.has_min:
            self.m.zero_()
            if shift is None:
                raise QuantConfigError(f"{name}: a {grid.describe()} start needs its mins (shifts)")
            if grid.super_block:
                dmin, m, exact = sub_block_factors((-shift.float()).reshape(-1, self.per_super), grid.format.sub_min)
                if not bool(exact.all()) or bool((dmin < 0).any()):
                    raise QuantConfigError(f"{name}: the start's sub-block mins are not {grid.format.sub_min.bits}-bit "
                                           f"multiples of one fp16 dmin ≥ 0: it is not on {grid.describe()}")
                self.m_start.copy_(dmin.reshape(self.m_start.shape))
                self.sub_min.copy_(m.reshape(self.sub_min.shape))
            else:
                self.m_start.copy_(shift.float())
        elif zero is not None and not bool((zero == grid.fixed_zero).all()):
            raise QuantConfigError(f"{name}: a {grid.describe()} start has the fixed zero {grid.fixed_zero}")
        codes = codes.to(torch.uint8)
        s, b = (t.detach() if t is not None else None for t in self._scale_shift())
        if not torch.equal(s, scale) or (b is not None and not torch.equal(b, shift.float())):
            raise RuntimeError(f"{name}: the student's d·sc and mins do not reproduce the start's")  # never: exact
        centres = dequantize(codes, s, self.layout, zero=self._zero(s), shift=b)
        placed = False
        if reference is not None:
            half = (0.5 - CELL_MARGIN) * self.layout.expand(s.abs())
            self.weight.copy_(torch.minimum(torch.maximum(reference.float(), centres - half), centres + half))
            placed = torch.equal(self.codes(), codes)
        if not placed:
            self.weight.copy_(centres)
            if not torch.equal(self.codes(), codes):
                raise RuntimeError(f"{name}: the cells' centres do not round back to the start's codes")
        return placed

    @torch.no_grad()
    def freeze_codes(self) -> None:
        """Fix the current codes; from now on only d and dmin (or m) train (E2E-QP)."""
        freeze_codes_(self, self.codes())

    @torch.no_grad()
    def codes(self) -> Tensor:
        if self.frozen_codes is not None:
            return self.frozen_codes
        scale, shift = self._scale_shift()
        return self._codes_from(self.weight.float(), scale, shift, ste=False).to(torch.uint8)

    def quantized_weight(self) -> Tensor:
        scale, shift = self._scale_shift()
        if self.frozen_codes is not None:
            q = self.frozen_codes.float()
        elif self.scale_gradient == "codes":  # the codes as constants in d and dmin (train/qat.py says why)
            q = self._codes_from(self.weight.float(), scale.detach(), None if shift is None else shift.detach(),
                                 ste=True)
        else:
            q = self._codes_from(self.weight.float(), scale, shift, ste=True)
        return dequantize(q, scale, self.layout, zero=self._zero(scale), shift=shift).to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeight:
        """Codes, d·sc and the mins exactly as the forward used them: ``dequantize()`` is the forward weight and
        the GGUF encoder stores it bit for bit."""
        scale, shift = (t.detach().float() if t is not None else None for t in self._scale_shift())
        return QuantizedWeight(self.codes(), scale, self.grid, self.layout, zero=self._zero(scale), shift=shift)

    def extra_repr(self) -> str:
        frozen = ", codes frozen" if self.frozen_codes is not None else ""
        return f"{super().extra_repr()}, qat {self.grid.describe()}{frozen}"

    def quant_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.log_d, self.m) if isinstance(p, nn.Parameter)]
