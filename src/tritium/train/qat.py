"""Uniform 2/3/4-bit quantization-aware training (LSQ / OmniQuant style).

Each quantization group holds a learnable scale ``s`` and zero point ``z`` over a latent float
weight ``W``; the forward weight is

    ŵ = s·(clamp(round(W/s) + round(z), 0, 2^b − 1) − round(z))

with rounding straight-through (STE). Autograd then gives LSQ's gradients: to ``W`` the identity
inside the clamp range and 0 outside; to ``s`` ``round(W/s) − W/s`` inside and the clamped code
minus ``z`` outside; to ``z`` 0 inside and ``−s`` outside. The zero point is rounded in the forward
because it is stored as a k-bit integer (grids.storage_bits), and the scale is rounded to fp16
because it is stored in fp16: the forward computes exactly what :meth:`to_quantized` exports.

``freeze_codes`` fixes the integer codes (EfficientQAT's end-to-end step E2E-QP): then only ``s``
and ``z`` train, and ŵ = s·(codes − round(z)) has their exact gradients.

``scale_gradient="codes"`` keeps the latents training but takes the codes as constants when
differentiating in ``s`` and ``z``: ``s`` then gets ``q − z`` everywhere, as under frozen codes,
instead of LSQ's ``round(W/s) − W/s``. LSQ's term is 0 at the centre of every rounding cell, which is
exactly where a PTQ start puts every latent (``load_codes``), so from such a start LSQ barely moves
the scales while the frozen-codes gradient moves them at once (BENCHMARKS.md, issue 14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant.grids import (
    SCALE_EPS,
    GroupLayout,
    QuantConfigError,
    QuantizedWeight,
    UniformGrid,
    as_fp16_values,
    dequantize,
    round_ste,
    straight_through,
    uniform_params,
)


def effective_scale_zero(scale: Tensor, zero: Tensor, grid: UniformGrid, fp16_scales: bool = True
                         ) -> tuple[Tensor, Tensor]:
    """The scale and zero point the forward uses (fp16 scale, integer zero), straight-through to the parameters."""
    s = scale.clamp_min(SCALE_EPS)
    if fp16_scales:
        s = straight_through(s, as_fp16_values(s.detach()))
    z = torch.clamp(round_ste(zero), 0, grid.max_code)
    return s, z


SCALE_GRADIENTS = ("lsq", "codes")
# A latent placed from the float weights stays this fraction of a step inside its code's cell, clear of the
# rounding edge whatever the arithmetic.
CELL_MARGIN = 0.05


def uniform_qat_weight(latent: Tensor, scale: Tensor, zero: Tensor, layout: GroupLayout, grid: UniformGrid,
                       codes: Tensor | None = None, fp16_scales: bool = True, scale_gradient: str = "lsq") -> Tensor:
    """ŵ from the latent weight (or from fixed ``codes``), with LSQ's straight-through gradients, or with
    ``scale_gradient="codes"`` the frozen-codes gradients in ``s`` and ``z`` (module docstring).

    ``fp16_scales=False`` skips the fp16 rounding of the scale, so that float64 gradient checks see a
    smooth function of it; training always rounds (that is what gets stored).
    """
    s, z = effective_scale_zero(scale.to(latent.dtype), zero.to(latent.dtype), grid, fp16_scales)
    if codes is not None or scale_gradient == "codes":
        return CodesGradientFakeQuant.apply(latent, s, z, layout, grid.max_code, codes)
    s_full, z_full = layout.expand(s), layout.expand(z)
    q = torch.clamp(round_ste(latent / s_full) + z_full, 0, grid.max_code)
    # (q − z)·s in this order, as grids.dequantize computes it, so export reproduces it bit for bit
    return (q - z_full) * s_full


class CodesGradientFakeQuant(torch.autograd.Function):
    """ŵ = s·(q − z) with q = clamp(round(W/s) + z, 0, 2^b − 1), or q = fixed ``codes``, and the frozen-codes
    gradients: Σ_group g·(q − z) to s, −s·Σ_group g to z, and g inside the clamp range (0 outside) to the latent.

    The same numbers as the chain of autograd ops it replaces, in a few in-place passes with one byte per
    weight saved (codes, range mask): that chain's ten full-size temporaries and the backward of the group
    broadcast took about a third of a SmolLM2 distillation step on the CPU (BENCHMARKS.md, eighth session)."""

    @staticmethod
    def forward(ctx, latent, s, z, layout, max_code, codes):
        s_full, z_full = layout.expand(s), layout.expand(z)
        if codes is None:
            q = torch.div(latent, s_full).round_().add_(z_full)
            inside = (q >= 0) & (q <= max_code)
            q.clamp_(0, max_code)
            saved_codes = q.to(torch.uint8)
        else:
            q, inside, saved_codes = codes.to(latent.dtype), None, codes
        weight = q.sub_(z_full).mul_(s_full)
        ctx.layout = layout
        ctx.save_for_backward(saved_codes, inside, s, z)
        return weight

    @staticmethod
    def backward(ctx, grad):
        codes, inside, s, z = ctx.saved_tensors
        layout = ctx.layout
        per_group = lambda t: layout.reduce(t, lambda g: g.sum(-1))  # noqa: E731
        grad_latent = grad_s = grad_z = None
        if ctx.needs_input_grad[0] and inside is not None:
            grad_latent = grad * inside
        if ctx.needs_input_grad[1]:
            grad_s = per_group(codes.to(grad.dtype).sub_(layout.expand(z)).mul_(grad))
        if ctx.needs_input_grad[2]:
            grad_z = per_group(grad).mul_(s).neg_()
        return grad_latent, grad_s, grad_z, None, None, None


def freeze_codes_(module: nn.Linear, codes: Tensor) -> None:
    """Keep ``codes`` fixed in a QAT linear: its latent weight and bias stop training, only its scales do (E2E-QP)."""
    module.frozen_codes = codes
    module.weight.requires_grad_(False)
    if module.bias is not None:
        module.bias.requires_grad_(False)


class UniformQATLinear(nn.Linear):
    """An ``nn.Linear`` whose forward weight is on a uniform k-bit grid with learnable scale and zero point.

    ``weight`` holds the latent floats; it stays an ``nn.Linear`` so adapters and evaluation see the usual layout.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, grid: UniformGrid, device=None,
                 dtype=None, name: str = "weight", scale_gradient: str = "lsq"):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not isinstance(grid, UniformGrid):
            raise QuantConfigError(f"{name}: UniformQATLinear needs a uniform grid, got {grid.describe()}")
        if scale_gradient not in SCALE_GRADIENTS:
            raise QuantConfigError(f"scale_gradient={scale_gradient!r} is unknown: use one of {SCALE_GRADIENTS}")
        self.scale_gradient = scale_gradient
        self.grid = grid
        self.layout = GroupLayout.for_weight((out_features, in_features), grid.group, grid.ragged_groups, name=name)
        shape = self.layout.scale_shape
        self.scale = nn.Parameter(torch.ones(shape, device=device, dtype=torch.float32))
        zero = torch.full(shape, float(2 ** (grid.bits - 1)), device=device, dtype=torch.float32)
        if grid.symmetric:  # a symmetric grid's zero point is implicit: it never trains
            self.register_buffer("zero", zero)
        else:
            self.zero = nn.Parameter(zero)
        self.register_buffer("frozen_codes", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: UniformGrid, name: str = "weight",
                    scale_gradient: str = "lsq") -> "UniformQATLinear":
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise QuantConfigError(f"{name}: the weight holds NaN or Inf values; fix the checkpoint before training")
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, grid, device=w.device,
                     dtype=w.dtype, name=name, scale_gradient=scale_gradient)
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
            module.reset_quantizer()
        return module

    @torch.no_grad()
    def reset_quantizer(self) -> None:
        """Scale and zero point of round-to-nearest (grids' min/max rule), so the first forward is RTN."""
        scale, zero = uniform_params(self.weight.float(), self.grid, self.layout)
        self.scale.copy_(scale)
        self.zero.copy_(zero)

    @torch.no_grad()
    def load_codes(self, codes: Tensor, scale: Tensor, zero: Tensor, reference: Tensor | None = None) -> bool:
        """Start from a PTQ result: its scale and zero point, and each latent weight at the centre of
        its code's rounding cell (the dequantized value), half a step from either threshold; or, with
        ``reference`` (the float weights), at the float weight's position clamped into its code's cell,
        so weights that the PTQ rounded against their float value sit at the threshold they crossed.
        Returns whether the float positions were used."""
        if not torch.equal(scale.float(), as_fp16_values(scale.float())):
            raise QuantConfigError("the start's scales are not fp16 values, which the QAT forward uses: "
                                   "re-quantize it with fp16 scales")
        self.scale.copy_(scale)
        self.zero.copy_(zero)
        centres = dequantize(codes, scale.float(), self.layout, zero=zero.float())
        if reference is None:
            self.weight.copy_(centres)
            return False
        s, _ = effective_scale_zero(self.scale.float(), self.zero.float(), self.grid)
        half = (0.5 - CELL_MARGIN) * self.layout.expand(s)
        self.weight.copy_(torch.minimum(torch.maximum(reference.float(), centres - half), centres + half))
        if not torch.equal(self.codes(), codes.to(torch.uint8)):  # never: the margin keeps them off the edges
            self.weight.copy_(centres)
            return False
        return True

    @torch.no_grad()
    def freeze_codes(self) -> None:
        """Fix the current codes; from now on only the scale and zero point train (E2E-QP)."""
        freeze_codes_(self, self.codes())

    @torch.no_grad()
    def codes(self) -> Tensor:
        if self.frozen_codes is not None:
            return self.frozen_codes
        s, z = effective_scale_zero(self.scale.float(), self.zero.float(), self.grid)
        q = torch.round(self.weight.float() / self.layout.expand(s)) + self.layout.expand(z)
        return q.clamp_(0, self.grid.max_code).to(torch.uint8)

    def quantized_weight(self) -> Tensor:
        return uniform_qat_weight(self.weight, self.scale, self.zero, self.layout, self.grid, self.frozen_codes,
                                  scale_gradient=self.scale_gradient)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeight:
        """Codes, fp16 scales and integer zero points: ``dequantize()`` equals the forward weight exactly."""
        s, z = effective_scale_zero(self.scale.detach().float(), self.zero.detach().float(), self.grid)
        return QuantizedWeight(self.codes(), s.detach(), self.grid, self.layout, zero=z.detach())

    def extra_repr(self) -> str:
        frozen = ", codes frozen" if self.frozen_codes is not None else ""
        return f"{super().extra_repr()}, qat {self.grid.describe()}{frozen}"
