"""TesseraQ (Li et al., 2024): block reconstruction with Progressive Adaptive Rounding
(PAR) and Dequantization Scale Tuning (DST), on top of an AWQ initialisation.

Per block, after AWQ's scale fold and clipping fix each group's scale/zero (or ternary
α/shift):

* every weight gets a rounding variable r; its code is floor(x) + h(r) (clamped to the
  grid), with x the weight's continuous grid coordinate and h the rectified sigmoid
  h(r) = clamp(σ(r)·1.2 − 0.1, 0, 1). r starts where h(r) = frac(x), so the soft
  weights start equal to the float weights. On a ternary grid the same rule rounds
  between the two neighbouring levels of {−1, 0, 1};
* every group gets a DST factor 2·h(v) (v = 0 gives 1), multiplying only the
  dequantization scale, so it lies in [0, 2] by construction; on a GGUF k-quant, whose
  sub-block scales are integers times one fp16 d per 256 weights, each super-block's d does;
* a schedule of stages hardens the most confident soft variables (|h(r) − ½| largest)
  until only ``soft_fractions[k]`` of each linear's variables stay soft; each stage runs
  Adam on the L2 distance between the block's output on the quantized stream and the
  float block's output. After the last stage everything is hardened.

The hard codes then fold into plain integer codes with the tuned scale (rounded to
fp16, the value stored), so round-to-nearest with that scale and zero reproduces them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.func import functional_call

from ..calib.pipeline import BlockContext, BlockResult, finite_guard
from ..calib.capture import NonFiniteError
from ..quant.grids import GGUFBlockGrid, QuantConfigError, as_fp16_values, sub_block_factors
from .awq import AWQConfig, awq_transform
from .base import register_method
from .calibrated import block_grids, run_calibrated
from .gptq import sequential_gptq
from .grid_params import GroupParams, code_range, from_levels, layout_for, pack, rtn_params, to_levels

# Fraction of each linear's rounding variables left soft after each stage's hardening
# (TesseraQ's schedule: 20% hard after the first stage, 99.5% after the twentieth).
PAPER_SOFT_FRACTIONS = (0.8, 0.65, 0.5, 0.43, 0.38, 0.34, 0.3, 0.27, 0.24, 0.21, 0.18, 0.15, 0.12, 0.1, 0.08,
                        0.06, 0.04, 0.02, 0.01, 0.005)
STRETCH, SHIFT = 1.2, 0.1  # h(r) = clamp(σ(r)·1.2 − 0.1, 0, 1)


def rectified_sigmoid(r: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(r) * STRETCH - SHIFT, 0, 1)


def inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    """The r with h(r) = h, for h in [0, 1) (σ's argument stays inside (0, 1))."""
    p = ((h + SHIFT) / STRETCH).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


@dataclass
class TesseraQConfig(AWQConfig):
    awq_init: bool = True  # start from AWQ's scales and clipping (else plain RTN parameters)
    soft_fractions: tuple[float, ...] = PAPER_SOFT_FRACTIONS
    steps_per_stage: int = 250
    batch_size: int = 4  # calibration samples per Adam step
    lr: float = 1e-3  # rounding variables
    dst: bool = True  # train the per-group dequantization scale factors
    dst_lr: float = 1e-3
    final_dst_steps: int = 0  # DST-only steps once every rounding variable is hard
    # Round with GPTQ first, under the start's group parameters held fixed, and start PAR from the weights
    # GPTQ rounded (each column plus the error feedback of the columns before it): hardening everything at
    # once then gives GPTQ's codes, so PAR and DST refine GPTQ's solution instead of plain rounding's.
    gptq_start: bool = False
    gptq_damp_percent: float = 0.01
    gptq_act_order: bool = True
    # The last N calibration samples train nothing (no AWQ search, GPTQ Hessian, PAR or DST step sees them):
    # each block's output error on them (holdout_loss, and a GPTQ start's gptq_start_holdout_loss) tells
    # an in-sample gain that carries over from one that fits the calibration samples only.
    holdout_samples: int = 0
    # Keep the start's own codes (AWQ's or RTN's rounding to nearest, or GPTQ's) in any block where PAR + DST
    # end with a higher block error than they had, measured on the held-out samples when there are any, else
    # on the calibration samples: from a good start (GPTQ under activation quantization) PAR can drift off it.
    revert_if_worse: bool = False

    def __post_init__(self):
        fractions = list(self.soft_fractions)
        if any(not 0 <= f < 1 for f in fractions) or fractions != sorted(fractions, reverse=True):
            raise QuantConfigError(
                f"soft_fractions {fractions} must decrease and lie in [0, 1): each is the share of rounding "
                "variables still soft after a stage"
            )
        if self.steps_per_stage < 0 or self.batch_size < 1:
            raise QuantConfigError("steps_per_stage must be ≥ 0 and batch_size ≥ 1")
        if isinstance(self.holdout_samples, bool) or not isinstance(self.holdout_samples, int) \
                or self.holdout_samples < 0:
            raise QuantConfigError(f"holdout_samples must be a whole number ≥ 0 (0: every calibration sample "
                                   f"trains), got {self.holdout_samples!r}")
        if not self.gptq_damp_percent >= 0:
            raise QuantConfigError(f"gptq_damp_percent must be ≥ 0 (GPTQ's default is 0.01), got {self.gptq_damp_percent}")


class RoundingState:
    """PAR + DST variables of one linear."""

    def __init__(self, name: str, weight: Tensor, params: GroupParams, grid, device, tune_scale: bool = True):
        self.name, self.grid, self.tune_scale = name, grid, tune_scale
        w = weight.detach().float().to(device)
        self.layout = layout_for(w, grid, name)
        self.params = params.to(device)
        # A k-quant's sub-block scales are d·sc with one fp16 d per super-block: DST tunes that d (each
        # super-block's factor), since a factor per sub-block would leave the sc integers.
        self.super_block_d = _super_block_d(name, grid, self.params.scale) if tune_scale else None
        self.lo, self.hi = code_range(grid)
        x = to_levels(w, self.params, self.layout)
        self.base = torch.floor(x)
        fraction = x - self.base
        self.r = inverse_rectified_sigmoid(fraction).requires_grad_(True)
        dst_shape = self.layout.scale_shape if self.super_block_d is None else self.super_block_d[0].shape
        self.v = torch.zeros(dst_shape, device=device, requires_grad=True)
        # Weights outside the grid's range round to its edge whatever h is: hard from the start.
        self.hard = (x < self.lo) | (x > self.hi)
        self.hard_value = torch.round(fraction)
        # Constants of the training-time weight, expanded once: expanding per step (and
        # back-propagating through a ragged repeat_interleave) dominated the step time.
        expand = lambda t: None if t is None else self.layout.expand(t)  # noqa: E731
        self.zero_full, self.shift_full = expand(self.params.zero), expand(self.params.shift)
        n_groups = self.layout.scale_shape[1]
        self.group_index = None if n_groups == 1 else \
            self.layout.expand(torch.arange(n_groups, device=device).view(1, -1).float())[0].long()

    @property
    def numel(self) -> int:
        return self.base.numel()

    def all_hard(self) -> bool:
        return bool(self.hard.all())

    def soft_count(self) -> int:
        return int((~self.hard).sum())

    def dst_factor(self) -> Tensor:
        return 2 * rectified_sigmoid(self.v)

    def harden(self, soft_fraction: float) -> None:
        """Harden the most confident soft variables until at most ``soft_fraction`` stay soft."""
        keep_soft = int(math.floor(soft_fraction * self.numel))
        soft = ~self.hard
        n_soft = int(soft.sum())
        if n_soft <= keep_soft:
            return
        with torch.no_grad():
            h = rectified_sigmoid(self.r)
            confidence = torch.where(soft, (h - 0.5).abs(), torch.full_like(h, float("inf")))
            if keep_soft == 0:
                newly = soft
            else:
                # The keep_soft least confident stay soft; ties broken by position (stable).
                order = torch.argsort(confidence.flatten(), stable=True)
                newly = torch.ones(self.numel, dtype=torch.bool, device=h.device)
                newly[order[:keep_soft]] = False
                newly = newly.view_as(soft) & soft
            self.hard_value = torch.where(newly, (h >= 0.5).float(), self.hard_value)
            self.hard = self.hard | newly

    def codes(self, soft: bool = True) -> Tensor:
        h = rectified_sigmoid(self.r) if soft else torch.zeros_like(self.base)
        h = torch.where(self.hard, self.hard_value, h)
        return torch.clamp(self.base + h, self.lo, self.hi)

    def scale(self, exact: bool) -> Tensor:
        """The dequantization scale with DST's factors: each group's fp16 scale times its factor, or for a
        k-quant each super-block's fp16 d times its factor, times the sub-blocks' fixed integers sc."""
        if not self.tune_scale:
            return self.params.scale
        if self.super_block_d is None:
            stored, integers = self.params.scale * self.dst_factor(), None
        else:
            d, integers = self.super_block_d
            stored = d * self.dst_factor()
        if exact:
            stored = as_fp16_values(stored.detach())
        else:  # fp16 rounding, straight-through
            stored = stored + (as_fp16_values(stored.detach()) - stored).detach()
        if integers is None:
            return stored
        return stored.repeat_interleave(integers.shape[1] // stored.shape[1], dim=1) * integers

    def weight(self, exact: bool = False) -> Tensor:
        """Soft weight for training, or (``exact``) the hard weight exactly as it will be stored."""
        if exact:
            return from_levels(self.codes(soft=False).detach(), self.params, self.layout, scale=self.scale(True))
        codes = self.codes(soft=True)
        if self.zero_full is not None:
            codes = codes - self.zero_full
        scale = self.scale(False)
        w = codes * (scale if self.group_index is None else scale[:, self.group_index])
        return w if self.shift_full is None else w + self.shift_full

    def folded(self):
        if not self.all_hard():
            raise RuntimeError(f"{self.name}: {self.soft_count()} rounding variables are still soft")
        params = GroupParams(self.scale(exact=True), self.params.zero, self.params.shift)
        return pack(self.codes(soft=False).detach(), params, self.grid, self.layout), params


def _super_block_d(name: str, grid, scale: Tensor) -> tuple[Tensor, Tensor] | None:
    """A k-quant's sub-block scales ``[out, sub-blocks]`` as (fp16 d per super-block ``[out, super-blocks]``,
    the integers sc ``[out, sub-blocks]``); None for every other grid."""
    if not (isinstance(grid, GGUFBlockGrid) and grid.super_block):
        return None
    rows, per_super = scale.shape[0], grid.super_block // grid.group
    d, integers, exact = sub_block_factors(scale.reshape(-1, per_super), grid.format.sub_scale)
    if not bool(exact.all()):
        raise QuantConfigError(f"{name}: its sub-block scales are not integer multiples of one fp16 d per 256 weights, "
                               f"as {grid.type.upper()} stores them: start TesseraQ from rtn or awq parameters")
    return d.reshape(rows, -1), integers.reshape(rows, -1)


class BlockReconstruction:
    """Trains every selected linear's rounding and scale variables of one block."""

    def __init__(self, ctx: BlockContext, config: TesseraQConfig, params: dict[str, GroupParams],
                 start_weights: dict[str, Tensor] | None = None):
        self.ctx, self.config = ctx, config
        grids = block_grids(ctx, config)
        start = start_weights or {}
        self.states = {name: RoundingState(f"{ctx.name}.{name}", start.get(name, ctx.block.get_submodule(name).weight),
                                           params[name], grids[name], ctx.device, config.dst) for name in params}
        self.dtype = next(ctx.block.parameters()).dtype
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.losses: list[float] = []

    def weights(self, exact: bool = False) -> dict[str, Tensor]:
        return {f"{name}.weight": s.weight(exact).to(self.dtype) for name, s in self.states.items()}

    def block_output(self, hidden: Tensor, exact: bool = True) -> Tensor:
        """The block's output with the trained (``exact``: stored, hard) weights."""
        with torch.no_grad():
            out = functional_call(self.ctx.block, self.weights(exact), (hidden.to(self.ctx.device),), self.ctx.kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _batches(self, steps: int):
        n = self.ctx.quant_inputs.shape[0]
        size = min(self.config.batch_size, n)
        order: list[int] = []
        for _ in range(steps):
            if len(order) < size:
                order += torch.randperm(n, generator=self.generator).tolist()
            batch, order = order[:size], order[size:]
            yield torch.tensor(batch)

    def _train(self, steps: int, optimizer, stage: str) -> float | None:
        ctx, last = self.ctx, None
        for step, index in enumerate(self._batches(steps)):
            inputs = ctx.quant_inputs[index].to(ctx.device)
            target = ctx.float_targets[index].to(ctx.device)
            out = functional_call(ctx.block, self.weights(), (inputs,), ctx.kwargs)
            out = out[0] if isinstance(out, tuple) else out
            loss = (out.float() - target.float()).pow(2).mean()
            if not torch.isfinite(loss):
                self._report_non_finite(inputs, f"the TesseraQ loss at {stage}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last = float(loss.detach())
        return last

    def _report_non_finite(self, inputs: Tensor, what: str):
        for name, state in self.states.items():
            if not torch.isfinite(state.weight()).all():
                raise NonFiniteError(f"non-finite soft weights of layer {name} in block {self.ctx.index} "
                                     f"({self.ctx.name}) at {what}: lower lr/dst_lr")
        with torch.no_grad(), finite_guard(self.ctx.block, self.ctx.name, self.ctx.index, what):
            functional_call(self.ctx.block, self.weights(), (inputs,), self.ctx.kwargs)
        raise NonFiniteError(f"non-finite {what} in block {self.ctx.index} ({self.ctx.name}): lower lr/dst_lr")

    def run(self) -> dict:
        config = self.config
        groups = [{"params": [s.r for s in self.states.values()], "lr": config.lr}]
        if config.dst:
            groups.append({"params": [s.v for s in self.states.values()], "lr": config.dst_lr})
        else:
            for s in self.states.values():
                s.v.requires_grad_(False)
        optimizer = torch.optim.Adam(groups)
        frozen = [p for p in self.ctx.block.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for stage, fraction in enumerate(config.soft_fractions):
                    for state in self.states.values():
                        state.harden(fraction)
                    self.losses.append(self._train(config.steps_per_stage, optimizer, f"stage {stage}"))
                for state in self.states.values():
                    state.harden(0.0)
                if config.dst and config.final_dst_steps:
                    self.losses.append(self._train(config.final_dst_steps, optimizer, "the final DST stage"))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        factors = torch.cat([s.dst_factor().detach().flatten() for s in self.states.values()])
        return {"stage_losses": [None if x is None else round(x, 8) for x in self.losses], "dst_min": float(factors.min()),
                "dst_max": float(factors.max())}


def split_holdout(ctx: BlockContext, holdout: int) -> tuple[BlockContext, BlockContext | None]:
    """The block's context on the samples that train, and on the last ``holdout`` ones (None when 0)."""
    if not holdout:
        return ctx, None
    n = ctx.quant_inputs.shape[0]
    if holdout >= n:
        raise QuantConfigError(f"holdout_samples {holdout} leaves none of the {n} calibration samples to train on: "
                               "lower holdout_samples or raise the calibration samples")

    def part(rows: slice) -> BlockContext:
        return replace(ctx, quant_inputs=ctx.quant_inputs[rows], float_inputs=ctx.float_inputs[rows],
                       float_targets=ctx.float_targets[rows])

    return part(slice(0, n - holdout)), part(slice(n - holdout, n))


def tesseraq_block(ctx: BlockContext, config: TesseraQConfig, observe: list | None = None) -> BlockResult:
    stats: dict = {}
    ctx, held = split_holdout(ctx, config.holdout_samples)
    start = time.perf_counter()
    if config.awq_init:
        params, awq_stats = awq_transform(ctx, config)
        stats.update({f"awq.{k}": v for k, v in awq_stats.items()})
    else:
        grids = block_grids(ctx, config)
        params = {name: rtn_params(m.weight.detach().float(), grids[name], layout_for(m.weight, grids[name], name))
                  for name, m in ctx.linears.items()}
    start_weights = None
    if config.gptq_start:
        start_weights, stats["gptq_start_loss"], held_loss = _gptq_start(ctx, config, params, held)
        if held is not None:
            stats["gptq_start_holdout_loss"] = held_loss
    stats["init_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    reconstruction = BlockReconstruction(ctx, config, params, start_weights)
    stats.update(reconstruction.run())
    # The block's output error with its stored weights, the measure gptq_start_loss uses, so a start
    # that PAR made worse shows, and two settings can be compared block by block.
    stats["final_loss"] = _output_error(ctx, reconstruction.block_output)
    if held is not None:
        stats["holdout_loss"] = _output_error(held, reconstruction.block_output)
    if config.revert_if_worse:
        reconstruction = _keep_the_better(ctx, held, config, params, start_weights, reconstruction, stats)
    stats["reconstruction_seconds"] = round(time.perf_counter() - start, 3)
    weights = {}
    for name, state in reconstruction.states.items():
        weights[name], _ = state.folded()
    if observe is not None:
        observe.append(reconstruction)
    return BlockResult(weights, stats)


def _keep_the_better(ctx: BlockContext, held: BlockContext | None, config: TesseraQConfig,
                     params: dict[str, GroupParams], start_weights, trained: BlockReconstruction,
                     stats: dict) -> BlockReconstruction:
    """``trained``, or the start's own codes (every variable hardened at once, DST factors 1) where those give
    the lower block error on the judging samples (held-out when there are any); ``stats`` then describe the
    start's codes, with PAR's errors kept as ``par_final_loss`` (and ``par_holdout_loss``)."""
    start = BlockReconstruction(ctx, config, params, start_weights)
    for state in start.states.values():
        state.harden(0.0)
    judge, key = (ctx, "final_loss") if held is None else (held, "holdout_loss")
    start_error = _output_error(judge, start.block_output)
    stats["start_" + key] = start_error
    stats["reverted_to_start"] = start_error < stats[key]
    if not stats["reverted_to_start"]:
        return trained
    stats["par_final_loss"] = stats["final_loss"]
    stats["final_loss"] = start_error if held is None else _output_error(ctx, start.block_output)
    if held is not None:
        stats["par_holdout_loss"], stats["holdout_loss"] = stats["holdout_loss"], start_error
    return start


def _gptq_start(ctx: BlockContext, config: TesseraQConfig, params: dict[str, GroupParams],
                held: BlockContext | None = None):
    """GPTQ's compensated weights under ``params`` for PAR to start from, and the block's output error with
    GPTQ's own codes (on ``ctx``'s samples, and on ``held``'s or None); the block's float weights are put
    back afterwards."""
    grids = block_grids(ctx, config)
    originals = {name: ctx.block.get_submodule(name).weight.detach().clone() for name in params}
    try:
        runs = sequential_gptq(ctx, grids, config.gptq_damp_percent, config.gptq_act_order, static_groups=True,
                               block_size=128, params=params)
        loss = _output_error(ctx, ctx.forward)
        held_loss = None if held is None else _output_error(held, held.forward)
    finally:
        for name, weight in originals.items():
            ctx.block.get_submodule(name).weight.data.copy_(weight)
    return {name: run.compensated for name, run in runs.items()}, loss, held_loss


def _output_error(ctx: BlockContext, block_output, batch: int = 8) -> float:
    """Mean squared error of the block's output on the quantized stream against the float block's."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, ctx.quant_inputs.shape[0], batch):
            out = block_output(ctx.quant_inputs[i:i + batch].to(ctx.device)).float()
            target = ctx.float_targets[i:i + batch].to(ctx.device).float()
            total += float((out - target).pow(2).sum())
            count += out.numel()
    return total / max(count, 1)


@register_method("tesseraq", TesseraQConfig, needs_calibration=True, per_linear_grids=True)
def tesseraq(model, layout, config: TesseraQConfig, linears, calibration):
    return run_calibrated("tesseraq", lambda ctx: tesseraq_block(ctx, config), model, layout, config, linears,
                          calibration)
