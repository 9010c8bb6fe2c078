"""GPTQ (Frantar et al., 2022): quantize a linear column by column, spreading each
column's rounding error over the columns not yet quantized through the inverse Hessian
H = 2·XᵀX/n of the linear's inputs.

Per block, linears go in the order data flows (q/k/v, o, gate/up, down): each group's
Hessian is measured on inputs that already pass through the quantized earlier group
("true sequential"), the inputs coming from the quantized previous blocks.

Group parameters are taken from a group's columns just before its first column is
quantized (after the updates from earlier groups), as GPTQ does. With activation
ordering the columns are visited by decreasing Hessian diagonal; then the parameters of
every group are fixed up front from the original weights ("static groups"), so each
column keeps the group it has in storage. The same holds on the ternary grids: a group's
α (and DLT shift γ) come from the group before its updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..calib.pipeline import BlockContext, BlockResult
from ..models.adapters import ATTENTION_LINEARS, MLP_LINEARS
from ..quant.grids import Grid, GroupLayout, QuantConfigError
from .base import register_method
from .calibrated import CalibratedConfig, block_grids, run_calibrated
from .grid_params import GroupParams, code_range, fitting_span, layout_for, pack, rtn_params

# Linears that read the same input are quantized together, in the order data flows.
SEQUENTIAL_GROUPS = (ATTENTION_LINEARS[:3], ATTENTION_LINEARS[3:], MLP_LINEARS[:2], MLP_LINEARS[2:])


@dataclass
class GPTQConfig(CalibratedConfig):
    damp_percent: float = 0.01  # λ = damp_percent · mean(diag H), added to the diagonal
    act_order: bool = False  # visit columns by decreasing Hessian diagonal (implies static groups)
    static_groups: bool = False  # fix every group's parameters from the original weights up front
    block_size: int = 128  # columns per lazy batch update (rounded to a multiple of the group size)
    true_sequential: bool = True  # measure each group's Hessian after quantizing the earlier groups


class _ColumnQuantizer:
    """Quantizes single columns against per-group parameters (filled lazily for dynamic groups)."""

    def __init__(self, w: Tensor, grid: Grid, layout: GroupLayout, params: GroupParams | None = None):
        self.grid, self.layout = grid, layout
        self.lo, self.hi = code_range(grid)
        self.grouped = not layout.per_tensor and layout.n_groups > 1
        # Static groups keep these parameters. Dynamic ones use them only as placeholders with the grid's
        # own parts (zero point and/or shift): fit_groups overwrites each group before its first column.
        if params is None:
            self.params = rtn_params(w, grid, layout)
        else:
            copy = lambda t: None if t is None else t.detach().float().clone().to(w.device)  # noqa: E731
            self.params = GroupParams(copy(params.scale), copy(params.zero), copy(params.shift))

    def group_of(self, column: int) -> int:
        return 0 if not self.grouped else column // self.layout.group_size

    def fit_groups(self, columns: Tensor, first: int) -> None:
        """Take the parameters of the groups from ``first`` on from their current columns
        ``[out, span]``: one group, or a k-quant's super-block of groups that share one d."""
        cols = columns.shape[1]
        fitted = rtn_params(columns, self.grid, GroupLayout(columns.shape[0], cols, min(self.layout.group_size, cols)))
        n = fitted.scale.shape[1]
        self.params.scale[:, first:first + n] = fitted.scale
        if fitted.zero is not None:
            self.params.zero[:, first:first + n] = fitted.zero
        if fitted.shift is not None:
            self.params.shift[:, first:first + n] = fitted.shift

    def quantize(self, column: Tensor, original_index: int) -> tuple[Tensor, Tensor]:
        g = self.group_of(original_index)
        p = self.params
        scale = p.scale[:, g] if p.scale.shape[0] > 1 else p.scale[0, g].expand_as(column)
        take = lambda t: None if t is None else (t[:, g] if t.shape[0] > 1 else t[0, g].expand_as(column))  # noqa: E731
        zero, shift = take(p.zero), take(p.shift)
        x = column - shift if shift is not None else column
        x = x / scale
        if zero is not None:
            x = x + zero
        code = torch.clamp(torch.round(x), self.lo, self.hi)
        value = (code - zero if zero is not None else code) * scale
        if shift is not None:
            value = value + shift
        return code, value


def gptq_quantize(w: Tensor, hessian: Tensor, grid: Grid, damp_percent: float = 0.01, act_order: bool = False,
                  static_groups: bool = False, block_size: int = 128, name: str = "weight"):
    """GPTQ on one weight ``[out, in]`` with Hessian ``[in, in]``.

    Returns ``(QuantizedWeight, proxy_loss)`` where proxy_loss is GPTQ's Σ err²/d of the
    rounding errors, the Hessian-weighted output error it minimises.
    """
    run = gptq_columns(w, hessian, grid, damp_percent=damp_percent, act_order=act_order, static_groups=static_groups,
                       block_size=block_size, name=name)
    return pack(run.codes, run.params, grid, run.layout), run.proxy_loss


@dataclass
class GPTQColumns:
    """What one GPTQ pass over a weight decided: the codes, the group parameters they use, and
    ``compensated``, each column as it was just before its rounding (the original column plus the
    error feedback of the columns rounded before it), whose round-to-nearest is ``codes``."""

    codes: Tensor
    params: GroupParams
    layout: GroupLayout
    compensated: Tensor
    proxy_loss: float


def gptq_columns(w: Tensor, hessian: Tensor, grid: Grid, params: GroupParams | None = None, damp_percent: float = 0.01,
                 act_order: bool = False, static_groups: bool = False, block_size: int = 128,
                 name: str = "weight") -> GPTQColumns:
    """GPTQ's column loop. ``params`` fixes every group's parameters up front (static groups under
    parameters chosen elsewhere, e.g. AWQ's clipping); without it they come from the weights."""
    layout = layout_for(w, grid, name)
    if hessian.shape != (w.shape[1], w.shape[1]):
        raise QuantConfigError(f"{name}: Hessian of shape {tuple(hessian.shape)} does not match the weight {tuple(w.shape)}")
    if not torch.isfinite(hessian).all():
        raise QuantConfigError(f"{name}: the Hessian holds NaN/Inf; the calibration activations overflowed")
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = static_groups or act_order or params is not None
    quantizer = _ColumnQuantizer(W, grid, layout, params)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(columns, device=W.device)
    hinv = _inverse_hessian_factor(H, damp_percent, name)
    span = fitting_span(grid, layout)  # the columns whose parameters are fitted together
    if quantizer.grouped:  # a lazy batch must start where such a span starts
        block_size = max(1, block_size // span) * span
    codes = torch.zeros_like(W)
    compensated = torch.zeros_like(W)
    loss = torch.zeros(W.shape[0], device=W.device)
    perm_list = perm.tolist()
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1, Hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i
            if quantizer.grouped and not static and j % span == 0:
                # Spans never straddle a lazy batch, so the span's current columns are all in W1.
                quantizer.fit_groups(W1[:, i:i + span], j // layout.group_size)
            column, d = W1[:, i], Hinv1[i, i]
            code, value = quantizer.quantize(column, perm_list[j])
            codes[:, j] = code
            compensated[:, j] = column
            loss += (column - value) ** 2 / d**2
            err = (column - value) / d
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
    inverse = torch.argsort(perm)
    return GPTQColumns(codes[:, inverse], quantizer.params, layout, compensated[:, inverse], float(loss.sum() / 2))


def _inverse_hessian_factor(H: Tensor, damp_percent: float, name: str) -> Tensor:
    """Upper Cholesky factor of H⁻¹ after dampening; more dampening if H is not positive definite."""
    mean_diag = torch.mean(torch.diag(H))
    damp = damp_percent
    for _ in range(6):
        damped = H + damp * mean_diag * torch.eye(H.shape[0], device=H.device)
        factor, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            hinv = torch.cholesky_inverse(factor)
            factor, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info == 0:
                return factor
        damp *= 10
    raise QuantConfigError(
        f"{name}: the Hessian is not positive definite even with dampening {damp:g}; "
        "use more calibration samples or a larger damp_percent"
    )


def collect_hessians(ctx: BlockContext, names: tuple[str, ...]) -> dict[str, tuple[Tensor, int]]:
    """Σ xxᵀ and the token count of each named linear's inputs over the quantized stream."""
    sums: dict[str, list] = {}

    def hook(name):
        def accumulate(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            entry = sums.setdefault(name, [torch.zeros(x.shape[1], x.shape[1], device=x.device), 0])
            entry[0].addmm_(x.t(), x)
            entry[1] += x.shape[0]
        return accumulate

    ctx.forward_observed(ctx.quant_inputs, names, hook, "collecting GPTQ Hessians")
    return {n: (s, count) for n, (s, count) in sums.items()}


def sequential_gptq(ctx: BlockContext, grids: dict, damp_percent: float, act_order: bool, static_groups: bool,
                    block_size: int, true_sequential: bool = True,
                    params: dict[str, GroupParams] | None = None) -> dict[str, GPTQColumns]:
    """GPTQ over one block's linears in the order data flows, each group's Hessians measured after the
    earlier groups are quantized. Leaves each linear holding its GPTQ-dequantized weight."""
    groups = SEQUENTIAL_GROUPS if true_sequential else (sum(SEQUENTIAL_GROUPS, ()),)
    results = {}
    for group in groups:
        names = tuple(n for n in group if n in ctx.linears and (params is None or n in params))
        if not names:
            continue
        hessians = collect_hessians(ctx, names)
        for name in names:
            xtx, count = hessians[name]
            hessian = 2 * xtx / count
            ctx.check_finite(hessian, "Hessian", layer=name)
            module = ctx.linears[name]
            run = gptq_columns(module.weight, hessian, grids[name], None if params is None else params[name],
                               damp_percent, act_order, static_groups, block_size, name=f"{ctx.name}.{name}")
            # Later groups see this group's quantized outputs.
            dequantized = pack(run.codes, run.params, grids[name], run.layout).dequantize(module.weight.dtype)
            module.weight.data.copy_(dequantized.to(module.weight.device))
            results[name] = run
    return results


def gptq_block(ctx: BlockContext, config: GPTQConfig) -> BlockResult:
    grids = block_grids(ctx, config)
    runs = sequential_gptq(ctx, grids, config.damp_percent, config.act_order, config.static_groups, config.block_size,
                           config.true_sequential)
    weights = {name: pack(run.codes, run.params, grids[name], run.layout) for name, run in runs.items()}
    stats = {f"{name}.proxy_loss": run.proxy_loss for name, run in runs.items()}
    return BlockResult(weights, stats)


@register_method("gptq", GPTQConfig, needs_calibration=True, per_linear_grids=True)
def gptq(model, layout, config: GPTQConfig, linears, calibration):
    return run_calibrated("gptq", lambda ctx: gptq_block(ctx, config), model, layout, config, linears, calibration)
