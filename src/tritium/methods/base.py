"""The method registry: one config dataclass and one handler per algorithm.

``quantize_(model, config)`` looks the handler up by the config's type, as torchao
does, so a new method is a config class plus a function registered here; the CLI
and recipes find it by name.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import nn

from ..models.adapters import DecoderLayout, decoder_layout
from ..quant.grids import Grid, QuantConfigError, QuantizedWeight, UniformGrid, grid_from_dict, grid_to_dict


@dataclass
class MethodConfig:
    """Settings every method shares. Subclasses add their own hyperparameters."""

    grid: Grid = field(default_factory=lambda: UniformGrid(bits=4, group=128))
    # Module-name patterns (fnmatch) kept in float, e.g. "*.mlp.down_proj".
    skip: tuple[str, ...] = ()

    def method_args(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("grid", "skip")}


@dataclass
class QuantizationResult:
    method: str
    grid: Grid
    weights: dict[str, QuantizedWeight]
    seconds: float
    method_args: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "grid": grid_to_dict(self.grid),
            "method_args": self.method_args,
            "quantized_layers": len(self.weights),
            "seconds": self.seconds,
            **self.details,
        }


Handler = Callable[[nn.Module, DecoderLayout, MethodConfig, dict[str, nn.Linear], "torch.Tensor | None"],
                   "tuple[dict[str, QuantizedWeight], dict]"]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_class: type[MethodConfig]
    handler: Handler
    needs_calibration: bool


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_class: type[MethodConfig], needs_calibration: bool = False):
    """Decorator: register ``handler(model, layout, config, linears, calibration) -> (weights, details)``."""

    def wrap(handler: Handler) -> Handler:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodEntry(name, config_class, handler, needs_calibration)
        return handler

    return wrap


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodEntry:
    if name not in _REGISTRY:
        raise QuantConfigError(f"unknown method {name!r}: available methods are {', '.join(method_names())}")
    return _REGISTRY[name]


def _entry_for_config(config: MethodConfig) -> MethodEntry:
    # The most specific registered class wins, so a subclass config reaches its own handler.
    for cls in type(config).__mro__:
        for entry in _REGISTRY.values():
            if entry.config_class is cls:
                return entry
    raise QuantConfigError(f"no method is registered for config type {type(config).__name__}")


def config_from_dict(method: str, grid: dict | Grid, **method_args) -> MethodConfig:
    """Build a method's config from recipe values, rejecting options it does not have."""
    entry = get_method(method)
    allowed = {f.name for f in fields(entry.config_class)} - {"grid"}
    unknown = set(method_args) - allowed
    if unknown:
        raise QuantConfigError(
            f"method {method!r} has no option(s) {sorted(unknown)}; its options are {sorted(allowed)}"
        )
    if "skip" in method_args:
        method_args["skip"] = tuple(method_args["skip"] or ())
    grid_obj = grid if not isinstance(grid, dict) else grid_from_dict(grid)
    return entry.config_class(grid=grid_obj, **method_args)


def selected_linears(layout: DecoderLayout, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    linears = layout.quantizable_linears()
    chosen = {n: m for n, m in linears.items() if not any(fnmatch.fnmatch(n, p) for p in skip)}
    if not chosen:
        raise QuantConfigError(f"the skip patterns {list(skip)} exclude every one of the {len(linears)} linears")
    return chosen


@torch.no_grad()
def quantize_(model: nn.Module, config: MethodConfig, calibration: torch.Tensor | None = None) -> QuantizationResult:
    """Quantize ``model`` in place with the method ``config`` selects.

    Each selected linear's weight is replaced by its dequantized value (fake quant);
    the returned result holds the codes and scales for packing, export and sizing.
    """
    entry = _entry_for_config(config)
    layout = decoder_layout(model)
    linears = selected_linears(layout, config.skip)
    if entry.needs_calibration and calibration is None:
        raise QuantConfigError(f"method {entry.name!r} needs calibration data: pass calibration token ids")
    start = time.perf_counter()
    weights, details = entry.handler(model, layout, config, linears, calibration)
    for name, qweight in weights.items():
        module = linears[name]
        module.weight.data.copy_(qweight.dequantize(module.weight.dtype).to(module.weight.device))
    return QuantizationResult(entry.name, config.grid, weights, time.perf_counter() - start,
                              method_args=config.method_args(), details=details)
