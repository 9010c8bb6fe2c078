"""Dual Learnable Ternarization (TernaryLLM): a ternary fake-quant linear that trains.

Each quantization group holds a learnable scale α and shift γ; the forward weight is
``α·T + γ`` with ``T = sign(W − γ)·[|W − γ| > Δ]`` and TWN's threshold
``Δ = 0.7·mean|W − γ|`` over the group (``ternary_threshold: twn``, TernaryLLM's), or the
threshold tied to the scale, ``Δ = α/2`` (``seq``: ParetoQ's stretched elastic quantizer, where
T rounds (W − γ)/α to the nearest level, so each level sits at the centre of its cell and, with
``ste_clip: 1.5``, the three cells split the clip range ±1.5·α evenly). The latent float weights
``W`` train through a straight-through estimator clipped to the ternary range ``|W − γ| ≤ clip·|α|``;
α and γ get their exact gradients (T is piecewise constant, so ∂ŵ/∂α = T and ∂ŵ/∂γ = 1 almost
everywhere). The grid math (groups, threshold, least-squares α) is tritium.quant.grids'.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant.grids import (
    SCALE_EPS,
    TWN_THRESHOLD_FACTOR,
    GGUFBlockGrid,
    GroupLayout,
    GroupSpec,
    QuantConfigError,
    QuantizedWeight,
    TernaryGrid,
    as_fp16_values,
    fake_quantize,
    quantize_ternary,
    quantize_weight,
    grid_layout,
    straight_through,
    ternary_codes_threshold,
)
from .gguf_qat import GGUFQATLinear
from .qat import UniformQATLinear, freeze_codes_

SHIFT_INITS = ("mean", "zero")
TERNARY_THRESHOLDS = ("twn", "seq")
# Under ``seq`` the threshold is half the level: T = clamp(round((W − γ)/α), −1, 1).
SEQ_THRESHOLD_FACTOR = 0.5


@dataclass
class DLTConfig:
    """How a model's linears become DLT linears."""

    group: GroupSpec = 128
    # A group size that does not divide a width is an error unless this is set (then the last group is shorter).
    ragged_groups: bool = False
    # γ starts at the group mean ("mean", TernaryLLM) or at 0 ("zero", plain TWN with a learnable shift).
    shift_init: str = "mean"
    # Whether γ trains; with shift_init="zero" and learn_shift=False this is TWN with a learnable scale.
    learn_shift: bool = True
    # The latent weights get gradient where |W − γ| ≤ ste_clip·|α| (the ternary range); None passes it everywhere.
    ste_clip: float | None = 1.0
    # Where a latent turns into ±1: TWN's Δ = 0.7·mean|W − γ| ("twn", TernaryLLM) or Δ = α/2 ("seq", ParetoQ's
    # stretched elastic quantizer; its clip range is ste_clip: 1.5).
    ternary_threshold: str = "twn"
    # Module-name patterns (fnmatch) kept in float, e.g. "*.mlp.down_proj".
    skip: tuple[str, ...] = ()
    # The LM head stays float by default, as in TernaryLLM; a tied head cannot be ternarized without its embedding.
    quantize_lm_head: bool = False

    def __post_init__(self):
        if self.shift_init not in SHIFT_INITS:
            raise QuantConfigError(f"shift_init={self.shift_init!r} is unknown: use one of {SHIFT_INITS}")
        if self.ste_clip is not None and self.ste_clip <= 0:
            raise QuantConfigError(f"ste_clip must be positive (in units of α) or null, got {self.ste_clip}")
        if self.ternary_threshold not in TERNARY_THRESHOLDS:
            raise QuantConfigError(f"ternary_threshold={self.ternary_threshold!r} is unknown: use one of "
                                   f"{TERNARY_THRESHOLDS}")
        if (self.ternary_threshold == "seq" and self.ste_clip is not None
                and self.ste_clip <= SEQ_THRESHOLD_FACTOR):
            raise QuantConfigError(f"ternary_threshold: seq turns a latent into ±1 at |W − γ| > α/2, so ste_clip "
                                   f"{self.ste_clip} leaves no ±1 latent a gradient: use ste_clip above 0.5 "
                                   "(ParetoQ's range is 1.5)")
        self.skip = tuple(self.skip or ())

    @property
    def grid(self) -> TernaryGrid:
        return TernaryGrid(variant="dlt", group=self.group, ragged_groups=self.ragged_groups)


def _group_sum(x: Tensor, layout: GroupLayout) -> Tensor:
    return layout.reduce(x, lambda g: g.sum(-1))


def dlt_threshold(centered: Tensor, alpha: Tensor | None, layout: GroupLayout, rule: str = "twn") -> Tensor:
    """Δ per group for latents already centred (W − γ): TWN's 0.7·mean|W − γ|, or α/2 under ``seq``."""
    if rule == "seq":
        return SEQ_THRESHOLD_FACTOR * alpha.abs()
    return TWN_THRESHOLD_FACTOR * layout.reduce(centered, lambda g: g.abs().mean(-1))


def dlt_codes(weight: Tensor, shift: Tensor, layout: GroupLayout, alpha: Tensor | None = None,
              rule: str = "twn") -> Tensor:
    """T ∈ {−1, 0, 1} (int8): the threshold of ``rule`` applied to W − γ, group by group (``seq`` needs α).
    The sign is that of W − γ: a negative α's flip is :meth:`DLTLinear.codes`' business."""
    centered = weight - layout.expand(shift)
    return ternary_codes_threshold(centered, dlt_threshold(centered, alpha, layout, rule), layout)


# How far inside its cell a latent placed from the float weights sits, as a fraction of the threshold Δ:
# enough that the fixed point of Δ (which moves with the latents) cannot carry it across.
CELL_MARGIN = 0.05


def _float_positions_in_cells(reference: Tensor, codes: Tensor, alpha: Tensor, shift: Tensor, layout: GroupLayout,
                              edge: float, iterations: int = 12, rule: str = "twn") -> Tensor | None:
    """Latents W with dlt_codes(W, γ) = ``codes`` that stay as close as the cells allow to ``reference``:
    zeros clamped inside ±(1 − m)·Δ, ±1s to T·[(1 + m)·Δ, edge·α] (a wrong sign goes to the near edge).
    TWN's Δ = 0.7·mean|W − γ| depends on the result, so the projection repeats a fixed ``iterations`` times
    for Δ to settle (``seq``'s α/2 does not move), and the codes are checked after: None when they are not
    reproduced (Δ still moving, or a group whose threshold would pass the clip edge)."""
    u = reference - layout.expand(shift)
    ceiling = layout.expand(edge * alpha)
    nonzero = codes != 0
    magnitude = torch.where(torch.sign(u) == codes, u.abs(), torch.zeros_like(u))
    placed = u
    for _ in range(iterations):
        delta = layout.expand(dlt_threshold(placed, alpha, layout, rule))
        low = (1 + CELL_MARGIN) * delta
        high = torch.maximum(ceiling, low)
        ones = codes * torch.minimum(torch.maximum(magnitude, low), high)
        zeros = u.clamp(-(1 - CELL_MARGIN) * delta, (1 - CELL_MARGIN) * delta)
        placed = torch.where(nonzero, ones, zeros)
    latents = placed + layout.expand(shift)
    if not torch.equal(dlt_codes(latents, shift, layout, alpha, rule), codes.to(torch.int8)):
        return None
    return latents


class DLTWeight(torch.autograd.Function):
    """ŵ = α·T + γ with the clipped straight-through gradient to W and exact ones to α, γ."""

    @staticmethod
    def forward(ctx, weight: Tensor, alpha: Tensor, shift: Tensor, layout: GroupLayout, ste_clip: float | None,
                rule: str = "twn"):
        shift_full = layout.expand(shift)
        alpha_full = layout.expand(alpha)
        codes = dlt_codes(weight, shift, layout, alpha, rule)
        t = codes.to(weight.dtype)
        # Only int8 codes and a bool mask are kept for backward: a quarter and an eighth of the weight's bytes.
        inside = None
        if ste_clip is not None:
            inside = (weight - shift_full).abs() <= ste_clip * alpha_full.abs()
        ctx.save_for_backward(codes, inside if inside is not None else torch.empty(0))
        ctx.layout, ctx.clipped = layout, inside is not None
        return alpha_full * t + shift_full

    @staticmethod
    def backward(ctx, grad: Tensor):
        codes, inside = ctx.saved_tensors
        layout = ctx.layout
        grad_weight = grad_alpha = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_weight = grad * inside if ctx.clipped else grad
        if ctx.needs_input_grad[1]:
            grad_alpha = _group_sum(grad * codes.to(grad.dtype), layout)
        if ctx.needs_input_grad[2]:
            grad_shift = _group_sum(grad, layout)
        return grad_weight, grad_alpha, grad_shift, None, None, None


def dlt_weight(weight: Tensor, alpha: Tensor, shift: Tensor, layout: GroupLayout,
               ste_clip: float | None = 1.0, rule: str = "twn") -> Tensor:
    return DLTWeight.apply(weight, alpha, shift, layout, ste_clip, rule)


class DLTLinear(nn.Linear):
    """An ``nn.Linear`` whose forward weight is DLT-ternary; ``weight`` holds the latent floats.

    It stays an ``nn.Linear`` so architecture adapters and evaluation see the usual layout.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, config: DLTConfig,
                 device=None, dtype=None, name: str = "weight"):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.layout = GroupLayout.for_weight((out_features, in_features), config.group, config.ragged_groups, name=name)
        self.ste_clip = config.ste_clip
        self.threshold_rule = config.ternary_threshold
        self.grid = config.grid
        shape = self.layout.scale_shape
        self.alpha = nn.Parameter(torch.ones(shape, device=device, dtype=torch.float32))
        shift = torch.zeros(shape, device=device, dtype=torch.float32)
        if config.learn_shift:
            self.shift = nn.Parameter(shift)
        else:
            self.register_buffer("shift", shift)
        self.register_buffer("frozen_codes", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: DLTConfig, name: str = "weight") -> "DLTLinear":
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise QuantConfigError(f"{name}: the weight holds NaN or Inf values; fix the checkpoint before training")
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                     device=w.device, dtype=w.dtype, name=name)
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
            module.reset_quantizer(config.shift_init)
        return module

    @torch.no_grad()
    def reset_quantizer(self, shift_init: str = "mean") -> None:
        """α, γ so that the first forward is the least-squares ternary fit (grids' dlt or twn rule)."""
        variant = "dlt" if shift_init == "mean" else "twn"
        fit = quantize_ternary(self.weight.float(), TernaryGrid(variant=variant, group=self.grid.group,
                                                                  ragged_groups=self.grid.ragged_groups), self.layout)
        self.alpha.copy_(fit.scale)
        self.shift.copy_(fit.shift if fit.shift is not None else torch.zeros_like(fit.scale))

    @torch.no_grad()
    def load_codes(self, codes: Tensor, alpha: Tensor, shift: Tensor, reference: Tensor | None = None) -> bool:
        """Start from a PTQ result: its α, γ and codes T, so the first forward is exactly α·T + γ.

        Without ``reference`` the latents are placed at γ + c·α·T. Any c > 0 reproduces T (TWN's
        threshold 0.7·mean|W − γ| scales with the latents), so c puts the ±1 latents midway between
        that threshold and the STE clip edge ``ste_clip·α``: there a step of either sign gets a gradient.
        With ``reference`` (the float weights) each latent keeps the float weight's position, moved
        only as far as needed into its code's cell and inside the clip, so weights the PTQ found
        near a threshold stay near it and can flip early. Returns whether that placement held (else,
        rarely, the midway one is used).
        """
        t = codes.float()
        self.alpha.copy_(alpha)
        self.shift.copy_(shift)
        rule = self.threshold_rule
        if reference is not None:
            latents = _float_positions_in_cells(reference.float(), t, alpha.float(), shift.float(), self.layout,
                                                self._clip_edge(), rule=rule)
            if latents is not None:
                self.weight.copy_(latents)
                return True
        edge = self._clip_edge()
        if rule == "seq":
            # Δ = α/2 does not depend on the latents: midway between it and the edge (the level itself at 1.5).
            c = torch.full_like(alpha, (SEQ_THRESHOLD_FACTOR + edge) / 2)
        else:
            nonzero = self.layout.reduce(t.abs(), lambda g: g.mean(-1))
            # c·α = (Δ + edge·α)/2 with Δ = 0.7·f·c·α (f: the group's nonzero fraction)
            c = edge / (2 - TWN_THRESHOLD_FACTOR * nonzero)
        self.weight.copy_(self.layout.expand(shift) + self.layout.expand(c * alpha) * t)
        if not torch.equal(self._latent_codes(), codes.to(torch.int8)):
            raise QuantConfigError("the start's codes could not be reproduced by the DLT threshold: "
                                   "is its scale α positive in every group?")
        return False

    def _clip_edge(self) -> float:
        """The STE clip edge in units of α; without a clip, TWN's 1 and SEQ's stretched 1.5 place the latents."""
        if self.ste_clip is not None:
            return self.ste_clip
        return 1.5 if self.threshold_rule == "seq" else 1.0

    def _latent_codes(self) -> Tensor:
        """T of the latents as the forward computes it (before a negative α's flip)."""
        return dlt_codes(self.weight.detach().float(), self.shift.detach().float(), self.layout,
                         self.alpha.detach().float(), self.threshold_rule)

    @torch.no_grad()
    def freeze_codes(self) -> None:
        """Fix the current codes T; from now on only α and γ train (E2E-QP), with exact gradients T and 1."""
        freeze_codes_(self, self._latent_codes())

    def _frozen_scale_shift(self) -> tuple[Tensor, Tensor]:
        """With frozen codes, α and γ as they are stored (α > 0, both fp16), straight-through to the parameters:
        so the exported codes stay the frozen ones (no sign flip) and the export equals the forward exactly."""
        alpha = self.alpha.clamp_min(SCALE_EPS)
        return (straight_through(alpha, as_fp16_values(alpha.detach())),
                straight_through(self.shift, as_fp16_values(self.shift.detach())))

    def quantized_weight(self) -> Tensor:
        if self.frozen_codes is not None:
            alpha, shift = self._frozen_scale_shift()
            t = self.frozen_codes.to(self.weight.dtype)
            return self.layout.expand(alpha.to(t.dtype)) * t + self.layout.expand(shift.to(t.dtype))
        alpha, shift = self.alpha.to(self.weight.dtype), self.shift.to(self.weight.dtype)
        return dlt_weight(self.weight, alpha, shift, self.layout, self.ste_clip, self.threshold_rule)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @torch.no_grad()
    def codes(self) -> Tensor:
        """The codes T the forward uses now, with the sign a negative α gives them (as :meth:`to_quantized`)."""
        if self.frozen_codes is not None:
            return self.frozen_codes
        return self._latent_codes() * self.layout.expand(torch.where(self.alpha.detach() < 0, -1, 1).to(torch.int8))

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeight:
        """Codes and fp16 scale/shift, as packing and export store them.

        The codes are the ones the last forward used; α and γ are rounded to fp16 (so the stored weight
        differs from the training forward by that rounding only). A negative α flips its group's codes.
        With frozen codes the forward already uses the stored α and γ, so the export equals it exactly.
        """
        if self.frozen_codes is not None:
            alpha, shift = (t.detach().float() for t in self._frozen_scale_shift())
            return QuantizedWeight(self.frozen_codes, alpha, self.grid, self.layout, shift=shift)
        shift = self.shift.detach().float()
        codes = self.codes()
        scale = as_fp16_values(self.alpha.detach().float().abs().clamp_min(SCALE_EPS))
        return QuantizedWeight(codes, scale, self.grid, self.layout, shift=as_fp16_values(shift))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, dlt {self.grid.describe()}, ste_clip={self.ste_clip}, "
                f"threshold={self.threshold_rule}")


class FakeQuantLinear(nn.Linear):
    """A linear trained through a fixed grid with the plain STE (the absmean/BitNet baseline)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, grid, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.grid = grid

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid, name: str = "weight") -> "FakeQuantLinear":
        quantize_weight(linear.weight.detach(), grid, name=name)  # fail now on a bad group or NaN
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, grid, w.device, w.dtype)
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, fake_quantize(self.weight, self.grid), self.bias)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeight:
        return quantize_weight(self.weight.detach().float(), self.grid)


# --------------------------------------------------------------------------- whole models


def _target_linears(model: nn.Module, skip: tuple[str, ...], include_lm_head: bool) -> dict[str, nn.Linear]:
    from ..models.adapters import decoder_layout

    layout = decoder_layout(model)
    linears = dict(layout.quantizable_linears())
    if include_lm_head:
        head = layout.lm_head
        if head is None or not isinstance(head, nn.Linear):
            raise QuantConfigError("quantize_lm_head is set but the model has no linear LM head")
        if head.weight is layout.embed_tokens.weight:
            raise QuantConfigError(
                "quantize_lm_head is set but the LM head is tied to the input embedding: ternarizing it would change "
                "the embedding too. Keep the head in float (quantize_lm_head: false) or untie the weights first."
            )
        name = next(n for n, m in model.named_modules() if m is head)
        linears[name] = head
    chosen = {n: m for n, m in linears.items() if not any(fnmatch.fnmatch(n, p) for p in skip)}
    if not chosen:
        raise QuantConfigError(f"the skip patterns {list(skip)} exclude every one of the {len(linears)} linears")
    return chosen


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def to_dlt_(model: nn.Module, config: DLTConfig) -> dict[str, DLTLinear]:
    """Swap the decoder linears (and the head if asked) for DLT linears in place; returns them by name.

    Embeddings and norms stay float. Checks every layer's group size before changing anything.
    """
    targets = _target_linears(model, config.skip, config.quantize_lm_head)
    return _swap_linears(model, targets, config.group, config.ragged_groups,
                         lambda name, linear: DLTLinear.from_linear(linear, config, name=name))


def to_fake_quant_(model: nn.Module, grid, skip: tuple[str, ...] = (), quantize_lm_head: bool = False
                   ) -> dict[str, FakeQuantLinear]:
    """Swap the decoder linears for plain-STE fake-quant linears on ``grid`` (baselines such as absmean)."""
    targets = _target_linears(model, tuple(skip), quantize_lm_head)
    return _swap_linears(model, targets, grid.group, grid.ragged_groups,
                         lambda name, linear: FakeQuantLinear.from_linear(linear, grid, name=name))


def to_uniform_qat_(model: nn.Module, grid, skip: tuple[str, ...] = (), quantize_lm_head: bool = False,
                    scale_gradient: str = "lsq") -> dict[str, UniformQATLinear]:
    """Swap the decoder linears for uniform-grid QAT linears (learnable scale and zero point per group)."""
    targets = _target_linears(model, tuple(skip), quantize_lm_head)
    return _swap_linears(model, targets, grid.group, grid.ragged_groups,
                         lambda name, linear: UniformQATLinear.from_linear(linear, grid, name=name,
                                                                           scale_gradient=scale_gradient))


def to_gguf_qat_(model: nn.Module, grid, skip: tuple[str, ...] = (), quantize_lm_head: bool = False,
                 grids: dict | None = None, scale_gradient: str = "lsq") -> dict[str, GGUFQATLinear]:
    """Swap the decoder linears for QAT linears on the GGUF block format ``grid``: each on ``grids[name]`` where
    given (a start's per-linear types), else on ``grid`` or, where its blocks do not divide the linear's width,
    on the type llama.cpp's quantize tool falls back to. Every layout is checked before anything changes."""
    from ..quant.grids import gguf_fallback_grid

    targets = _target_linears(model, tuple(skip), quantize_lm_head)
    chosen = {}
    for name, linear in targets.items():
        own = (grids or {}).get(name)
        chosen[name] = own or gguf_fallback_grid(grid, linear.in_features, name) or grid
        grid_layout(tuple(linear.weight.shape), chosen[name], name=name)
    swapped = {}
    for name, linear in targets.items():
        swapped[name] = GGUFQATLinear.from_linear(linear, chosen[name], name=name, scale_gradient=scale_gradient)
        _replace(model, name, swapped[name])
    return swapped


def _swap_linears(model: nn.Module, targets: dict[str, nn.Linear], group, ragged: bool, make) -> dict:
    """Replace each target with ``make(name, linear)``, after checking every layer's grouping,
    so a group size that does not fit one layer leaves the model untouched."""
    for name, linear in targets.items():
        GroupLayout.for_weight(tuple(linear.weight.shape), group, ragged, name=name)
    swapped = {}
    for name, linear in targets.items():
        swapped[name] = make(name, linear)
        _replace(model, name, swapped[name])
    return swapped


TRAINABLE_LINEARS = (DLTLinear, FakeQuantLinear, UniformQATLinear, GGUFQATLinear)


def quant_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(latent weights and biases of the fake-quant linears, their α/γ or scale/zero): the two optimizer groups."""
    latent, quant = [], []
    for module in model.modules():
        if isinstance(module, TRAINABLE_LINEARS):
            latent += [p for p in (module.weight, module.bias) if p is not None]
            if isinstance(module, DLTLinear):
                quant += [p for p in (module.alpha, module.shift) if isinstance(p, nn.Parameter)]
            elif isinstance(module, UniformQATLinear):
                quant += [p for p in (module.scale, module.zero) if isinstance(p, nn.Parameter)]
            elif isinstance(module, GGUFQATLinear):
                quant += module.quant_parameters()
    return latent, quant


@torch.no_grad()
def fold_(model: nn.Module, method: str = "dlt", method_args: dict | None = None, details: dict | None = None,
          grid=None):
    """Replace every DLT / uniform-QAT / fake-quant linear by a plain ``nn.Linear`` holding its dequantized weight.

    Returns a ``QuantizationResult`` whose weights (codes, fp16 scale, fp16 shift) feed packing and export;
    the folded model computes exactly ``QuantizedWeight.dequantize()``. GGUF linears may sit on several types
    (llama.cpp's fallbacks): those not on ``grid`` (the model's main grid) are the result's grid overrides.
    """
    from ..methods.base import QuantizationResult

    start = time.perf_counter()
    weights: dict[str, QuantizedWeight] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, TRAINABLE_LINEARS):
            continue
        qweight = module.to_quantized()
        grid = grid or qweight.grid
        if qweight.grid != grid and not (isinstance(module, GGUFQATLinear) and isinstance(grid, GGUFBlockGrid)):
            raise QuantConfigError(f"{name}: mixed grids in one model ({grid.describe()} and {qweight.grid.describe()})")
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        plain.weight.copy_(qweight.dequantize(module.weight.dtype))
        if module.bias is not None:
            plain.bias.copy_(module.bias)
        _replace(model, name, plain)
        weights[name] = qweight
    if not weights:
        raise QuantConfigError("the model holds no DLT, QAT or fake-quant linears to fold: call to_dlt_ first")
    overrides = {name: q.grid for name, q in weights.items() if q.grid != grid}
    return QuantizationResult(method, grid, weights, time.perf_counter() - start,
                              method_args=dict(method_args or {}), details=dict(details or {}),
                              grid_overrides=overrides)
