"""Round-to-nearest: each weight goes to its nearest grid point, no data needed."""

from __future__ import annotations

from dataclasses import dataclass

from ..quant.grids import quantize_weight
from ..utils.progress import progress_bar
from .base import MethodConfig, register_method


@dataclass
class RTNConfig(MethodConfig):
    pass


@register_method("rtn", RTNConfig, per_linear_grids=True)
def rtn(model, layout, config: RTNConfig, linears, calibration):
    weights = {
        name: quantize_weight(module.weight.detach(), config.grid_for(name), name=name)
        for name, module in progress_bar(linears.items(), desc="rtn", unit="layer", leave=False, mininterval=2)
    }
    return weights, {}
