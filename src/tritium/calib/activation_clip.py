"""The clipping ratio of each linear's activation grid, chosen on calibration data.

Per-token activation grids spend their few levels (16 at 4 bits) on each token's range, so one outlier channel
coarsens every other channel of the token. Clipping the range to ``ratio · [min, max]`` saturates the outliers
and refines the rest; the best ratio differs by linear. For each candidate ratio this measures the linear's
output error caused by quantizing its input, ``‖x·Wᵀ − Q_r(x)·Wᵀ‖²`` summed over calibration tokens (the bias
cancels), and keeps the ratio with the least error (ties go to the earlier candidate, so list 1.0 first to
prefer no clipping). It runs once, on the model as it is before calibration (float weights, float
activations upstream), and costs one forward pass over ``tokens`` calibration tokens plus a few matrix
products per linear: the errors are summed inside the hooks, so no activations are stored.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..quant.activations import ActivationGrid, fake_quantize_activations
from .capture import check_calibration_ids

# calibration tokens the search measures each linear on (whole samples, the first of the set)
ACTIVATION_CLIP_TOKENS = 2048


@torch.no_grad()
def search_activation_clip_ratios(model: nn.Module, linears: dict[str, nn.Linear], grid: ActivationGrid,
                                  calibration: Tensor, candidates: tuple[float, ...],
                                  tokens: int = ACTIVATION_CLIP_TOKENS, batch_size: int = 4) -> dict[str, float]:
    """The candidate clipping ratio with the least output error for each of ``linears`` (full names)."""
    calibration = check_calibration_ids(model, calibration)
    if not candidates:
        raise ValueError("the activation clipping search needs at least one candidate ratio")
    grids = [replace(grid, clip_ratio=float(r)) for r in candidates]
    errors = {name: torch.zeros(len(grids), dtype=torch.float64) for name in linears}

    def hook(name: str):
        def measure(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            weight = module.weight.detach().float()
            exact = x.float() @ weight.t()
            for i, candidate in enumerate(grids):
                approx = fake_quantize_activations(x, candidate).float() @ weight.t()
                errors[name][i] += float((approx - exact).pow(2).sum())
        return measure

    samples = min(calibration.shape[0], max(1, math.ceil(tokens / calibration.shape[1])))
    device = next(model.parameters()).device
    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    try:
        for start in range(0, samples, batch_size):
            model(input_ids=calibration[start:min(start + batch_size, samples)].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: float(candidates[int(torch.argmin(err))]) for name, err in errors.items()}
