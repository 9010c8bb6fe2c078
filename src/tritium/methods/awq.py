"""AWQ (Lin et al., 2023): activation-aware per-channel scaling, then weight clipping.

For each group of linears that read the same input (``DecoderLayout.scale_groups``),
search s = x̄^α / w̄^(1−α) over a grid of α, where x̄ is the mean |activation| of each
input channel and w̄ the mean group-normalised |weight|. As in AWQ, a candidate is scored
on the output of the module that holds the group (:func:`inspected_module`: the whole
attention for q/k/v, so the error goes through the softmax; the whole MLP for gate/up;
the linear itself for o and down), with the consumers' weights replaced by Q(W·s)/s and
everything else in float, against that module's float output on calibration samples.
s = 1 (plain RTN) is always a candidate, so the search never does worse on its objective.
The scale folds into the producer (a norm, respecting Gemma's 1 + w offset, or a
linear), its inverse into the consumers, leaving the float function unchanged.
Without a producer (v→o under grouped-query attention) the group is left unscaled.

Then, per linear, a clipping search shrinks each group's range (uniform) or scales its
α (ternary) by the ratio that minimises that group's contribution to the linear's output
error (AWQ's clipping objective is per linear too).

With activations quantized (the pipeline's ``activation_grids``), a candidate s is scored
on the module's output with each consumer reading Q_a(x/s)·s, what it reads once s is
folded, against the module's output with float activations: the weight and the activation
error together (s smooths the activations as it scales the weights). The clipping search
then measures each group's error on the quantized inputs Q_a(x/s).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..calib.pipeline import BlockContext, BlockResult
from ..nn.activation_quant import activation_quantizer_of, activation_quantizers, activations_in_float
from ..quant.grids import GGUFBlockGrid, Grid, GroupLayout, QuantConfigError, TernaryGrid
from .base import register_method
from .calibrated import CalibratedConfig, block_grids, run_calibrated
from .grid_params import GroupParams, fake_quant_with, layout_for, nearest_codes, pack, rtn_params

SCALE_FLOOR = 1e-4  # keeps s^(−1) finite for channels that never activate


@dataclass
class AWQConfig(CalibratedConfig):
    n_grid: int = 20  # α ∈ {0, 1/n, ..., (n−1)/n}
    duo_scaling: bool = True  # s = x̄^α / w̄^(1−α); False: s = x̄^α
    # Calibration tokens for the scale search, taken as whole samples (the attention needs
    # whole sequences): ceil(search_tokens / seqlen) samples, at least one.
    search_tokens: int = 4096
    clip: bool = True  # run the clipping search after scaling
    clip_n_grid: int = 20
    clip_max_shrink: float = 0.5  # uniform: ranges shrink to (1 − i/n) for i < max_shrink·n
    ternary_scale_range: tuple[float, float] = (0.6, 1.6)  # ternary: α multipliers searched
    clip_tokens: int = 512  # tokens sampled for the clipping search
    clip_skip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")  # their error goes through softmax


def _sampled_rows(total: int, keep: int, seed: int) -> Tensor:
    if keep >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:keep].sort().values


def search_samples(n_samples: int, seqlen: int, tokens: int, seed: int) -> Tensor:
    """Indices of the whole calibration samples that hold about ``tokens`` tokens, drawn at random."""
    count = min(n_samples, max(1, math.ceil(tokens / seqlen)))
    return _sampled_rows(n_samples, count, seed)


def inspected_module(consumers: tuple[str, ...]) -> str:
    """The deepest module holding every consumer, whose output AWQ's scale search scores:
    ``self_attn`` for q/k/v, ``mlp`` for gate/up, the linear itself when it is alone."""
    common = []
    for parts in zip(*(name.split(".") for name in consumers)):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def scale_objective(ctx: BlockContext, consumers: tuple[str, ...], selected: list[str],
                    grid: Grid | dict[str, Grid], hidden: Tensor):
    """AWQ's scale objective for one scale group, as a function of the scale s.

    Runs the block once on ``hidden`` (block inputs) to record the calls and float outputs
    of the module holding ``consumers``; the returned function replays those calls with
    each selected consumer's weight W replaced by Q(W·s)/s (that is (x/s)·Q(W·s)ᵀ, what the
    folded model computes) and gives the mean squared error of the module's output.
    ``grid`` is one grid for every consumer, or each consumer's own (mixed precision).
    """
    grids = grid if isinstance(grid, dict) else {name: grid for name in selected}
    root = inspected_module(consumers)
    module = ctx.block.get_submodule(root)
    quantizers = {name: q for name, q in ((n, activation_quantizer_of(ctx.block.get_submodule(n))) for n in selected)
                  if q is not None}
    calls = []

    def hook(_name):
        def record(_module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            calls.append((args, dict(kwargs), out.detach()))
        return record

    if not activation_quantizers(module):
        ctx.forward_observed(hidden, [root], hook, "recording the AWQ scale search's module", with_kwargs=True)
    else:
        # Activations quantized: the module's inputs are recorded as they arrive (a lone linear's before its
        # own quantizer rounds them), and the target is the module's output with float activations, so
        # each candidate s is scored on the weight and the activation error together (s also changes what
        # the activation grid sees: x / s).
        def inputs_hook(_name):
            def record(_module, args, kwargs):
                calls.append((args, dict(kwargs), None))
            return record

        ctx.forward_observed(hidden, [root], inputs_hook, "recording the AWQ scale search's module",
                             with_kwargs=True, before=True)
        with torch.no_grad(), activations_in_float(module):
            for i, (args, kwargs, _) in enumerate(calls):
                out = module(*args, **kwargs)
                calls[i] = (args, kwargs, (out[0] if isinstance(out, tuple) else out).detach())

    def relative_key(name: str) -> str:  # the weight's name inside the inspected module
        if name == root:
            return "weight"
        return (name[len(root) + 1:] if root else name) + ".weight"

    keys = {name: relative_key(name) for name in selected}
    weights = {name: ctx.block.get_submodule(name).weight.detach() for name in selected}
    layouts = {name: layout_for(w, grids[name]) for name, w in weights.items()}

    @torch.no_grad()
    def loss_for(s: Tensor) -> float:
        overrides = {}
        for name, w in weights.items():
            scaled = w.float() * s
            g, layout = grids[name], layouts[name]
            q = fake_quant_with(scaled, rtn_params(scaled, g, layout), g, layout) / s
            overrides[keys[name]] = q.to(w.dtype)
        total, count = 0.0, 0
        for quantizer in quantizers.values():  # the consumers' inputs as the folded model has them: x / s
            quantizer.channel_scale = s
        try:
            for args, kwargs, target in calls:
                out = functional_call(module, overrides, args, kwargs)
                out = out[0] if isinstance(out, tuple) else out
                total += float((out.float() - target.float()).pow(2).sum())
                count += target.numel()
        finally:
            for quantizer in quantizers.values():
                quantizer.channel_scale = None
        return total / count

    return loss_for


def collect_inputs(ctx: BlockContext, names: list[str], keep_tokens: int, seed: int):
    """Per linear: mean |x| per input channel over every token, and ``keep_tokens`` sampled input rows."""
    n, seqlen = ctx.quant_inputs.shape[:2]
    rows = _sampled_rows(n * seqlen, keep_tokens, seed)
    state = {name: {"abs_sum": None, "count": 0, "rows": []} for name in names}
    offset = {"tokens": {name: 0 for name in names}}

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            entry = state[name]
            start = offset["tokens"][name]
            absolute = x.abs().sum(0)
            entry["abs_sum"] = absolute if entry["abs_sum"] is None else entry["abs_sum"] + absolute
            entry["count"] += x.shape[0]
            local = rows[(rows >= start) & (rows < start + x.shape[0])] - start
            entry["rows"].append(x[local.to(x.device)])
            offset["tokens"][name] = start + x.shape[0]
        return record

    # before any activation quantizer: the statistics and rows are of the inputs as they arrive, so that after
    # a fold (x / s) the clipping search can quantize them as the folded model will
    ctx.forward_observed(ctx.quant_inputs, names, hook, "collecting AWQ activation statistics", before=True)
    # Rows were kept in token order; shuffle them (the same way for every linear) so that
    # taking a prefix later is still a uniform sample.
    shuffle = torch.randperm(min(keep_tokens, n * seqlen), generator=torch.Generator().manual_seed(seed + 1))
    return {name: (s["abs_sum"] / s["count"], torch.cat(s["rows"])[shuffle.to(ctx.device)]) for name, s in state.items()}


def _group_normalised_weight_mean(weights: list[Tensor], grids: list[Grid]) -> Tensor:
    parts = []
    for w, grid in zip(weights, grids):
        layout = layout_for(w, grid)
        absolute = w.abs().float()
        group_max = layout.expand(layout.reduce(absolute, lambda g: g.amax(-1))).clamp_min(1e-12)
        parts.append(absolute / group_max)
    return torch.cat(parts).mean(0)


def search_scale(loss_for, x_mean: Tensor, weights: list[Tensor], grids: list[Grid], n_grid: int, duo_scaling: bool):
    """The per-input-channel scale s among AWQ's candidates that minimises ``loss_for(s)``;
    ``grids`` holds each weight's grid.

    Returns ``(s, α or None for the identity, loss, identity_loss)``.
    """
    identity = torch.ones_like(x_mean)
    best_loss = identity_loss = loss_for(identity)
    best_scale, best_alpha = identity, None
    w_mean = _group_normalised_weight_mean(weights, grids) if duo_scaling else None
    for step in range(n_grid):
        alpha = step / n_grid
        s = x_mean.clamp_min(SCALE_FLOOR).pow(alpha)
        if duo_scaling:
            s = s / w_mean.clamp_min(SCALE_FLOOR).pow(1 - alpha)
        s = s.clamp_min(SCALE_FLOOR)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales so neither side's range explodes
        loss = loss_for(s)
        if loss < best_loss:
            best_loss, best_scale, best_alpha = loss, s, alpha
    return best_scale, best_alpha, best_loss, identity_loss


@torch.no_grad()
def fold_scale(block: nn.Module, producer: str, consumers: tuple[str, ...], s: Tensor, norm_offset: float) -> None:
    """Divide the producer's output channels by ``s`` and multiply the consumers' input channels by it."""
    op = block.get_submodule(producer)
    s = s.to(op.weight.device)
    if isinstance(op, nn.Linear):
        op.weight.div_(s.view(-1, 1).to(op.weight.dtype))
        if op.bias is not None:
            op.bias.div_(s.to(op.bias.dtype))
    elif getattr(op, "weight", None) is not None and op.weight.dim() == 1:
        # A norm computes x̂·(offset + w): the new w keeps offset + w divided by s.
        op.weight.copy_(((op.weight.float() + norm_offset) / s - norm_offset).to(op.weight.dtype))
        if getattr(op, "bias", None) is not None:
            op.bias.div_(s.to(op.bias.dtype))
    else:
        raise QuantConfigError(f"cannot fold an AWQ scale into {producer} ({type(op).__name__}): not a norm or linear")
    for name in consumers:
        consumer = block.get_submodule(name)
        consumer.weight.mul_(s.view(1, -1).to(consumer.weight.dtype))


def clip_ratios(grid: Grid, config: AWQConfig) -> list[float]:
    if isinstance(grid, TernaryGrid) or (isinstance(grid, GGUFBlockGrid) and grid.is_ternary):  # TQ1_0, TQ2_0 too
        low, high = config.ternary_scale_range
        ratios = torch.linspace(low, high, config.clip_n_grid).tolist()
        return sorted(set([1.0] + ratios))
    return [1 - i / config.clip_n_grid for i in range(int(config.clip_max_shrink * config.clip_n_grid))]


def search_clip(w: Tensor, x: Tensor, grid: Grid, layout: GroupLayout, ratios: list[float]) -> Tensor:
    """Per-group clip ratio minimising each group's contribution to the output error ``[out, n_groups]``."""
    w = w.float()
    shape = layout.scale_shape
    best_err = torch.full(shape, float("inf"), device=w.device)
    best_ratio = torch.ones(shape, device=w.device)
    bounds = _group_bounds(layout)
    for ratio in ratios:
        delta = fake_quant_with(w, rtn_params(w, grid, layout, clip=ratio), grid, layout) - w
        if layout.per_tensor:
            err = (x @ delta.t()).pow(2).sum().reshape(1, 1)
        else:
            err = torch.stack([(x[:, a:b] @ delta[:, a:b].t()).pow(2).sum(0) for a, b in bounds], dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def _group_bounds(layout: GroupLayout) -> list[tuple[int, int]]:
    return [(start, min(start + layout.group_size, layout.in_features))
            for start in range(0, layout.in_features, layout.group_size)]


def awq_transform(ctx: BlockContext, config: AWQConfig) -> tuple[dict[str, GroupParams], dict]:
    """Scale search and fold for every scale group, then the clipping search.

    Modifies ``ctx.block`` in place (the folds) and returns each selected linear's
    quantization parameters for its now-scaled weight.
    """
    grids, stats = block_grids(ctx, config), {}
    names = [n for group in ctx.scale_groups for n in group.consumers if n in ctx.linears]
    if not names:
        return {}, stats
    inputs = collect_inputs(ctx, names, config.clip_tokens, ctx.seed)
    n, seqlen = ctx.quant_inputs.shape[:2]
    samples = search_samples(n, seqlen, config.search_tokens, ctx.seed + 2).to(ctx.quant_inputs.device)
    hidden = ctx.quant_inputs[samples]
    for group in ctx.scale_groups:
        selected = [n for n in group.consumers if n in ctx.linears]
        if group.producer is None or not selected:
            continue
        x_mean = inputs[selected[0]][0]
        weights = [ctx.block.get_submodule(n).weight.detach() for n in selected]
        # Recorded after the earlier groups' folds, so the module sees its inputs as they now are.
        loss_for = scale_objective(ctx, group.consumers, selected, {n: grids[n] for n in selected}, hidden)
        s, alpha, loss, identity_loss = search_scale(loss_for, x_mean, weights, [grids[n] for n in selected],
                                                     config.n_grid,
                                                     config.duo_scaling)
        ctx.check_finite(s, "AWQ scales", layer=group.producer)
        fold_scale(ctx.block, group.producer, group.consumers, s, ctx.norm_weight_offset)
        for name in selected:  # the consumers now read x / s
            mean, rows = inputs[name]
            inputs[name] = (mean / s, rows / s)
        stats[f"{group.producer}.alpha"] = alpha
        stats[f"{group.producer}.loss_ratio"] = loss / identity_loss if identity_loss > 0 else 1.0
    params = {}
    for name in names:
        w, grid = ctx.block.get_submodule(name).weight.detach().float(), grids[name]
        layout = layout_for(w, grid, f"{ctx.name}.{name}")
        clip: Tensor | float = 1.0
        if config.clip and name not in config.clip_skip:
            rows = inputs[name][1][: config.clip_tokens]
            quantizer = activation_quantizer_of(ctx.block.get_submodule(name))
            if quantizer is not None:  # the weight's error as the linear meets it: on quantized inputs
                rows = quantizer.fake(rows)
            clip = search_clip(w, rows, grid, layout, clip_ratios(grid, config))
            stats[f"{name}.mean_clip"] = float(clip.mean())
        params[name] = rtn_params(w, grid, layout, clip=clip)
    return params, stats


def awq_block(ctx: BlockContext, config: AWQConfig) -> BlockResult:
    params, stats = awq_transform(ctx, config)
    weights, grids = {}, block_grids(ctx, config)
    for name, p in params.items():
        w, grid = ctx.block.get_submodule(name).weight.detach().float(), grids[name]
        layout = layout_for(w, grid, name)
        weights[name] = pack(nearest_codes(w, p, grid, layout), p, grid, layout)
    return BlockResult(weights, stats)


@register_method("awq", AWQConfig, needs_calibration=True, per_linear_grids=True)
def awq(model, layout, config: AWQConfig, linears, calibration):
    return run_calibrated("awq", lambda ctx: awq_block(ctx, config), model, layout, config, linears, calibration)
