"""The method registry: one config dataclass and one handler per algorithm.

``quantize_(model, config)`` looks the handler up by the config's type, as torchao
does, so a new method is a config class plus a function registered here; the CLI
and recipes find it by name.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
from torch import nn

from ..models.adapters import DecoderLayout, decoder_layout
from ..quant.activations import ActivationGrid
from ..quant.grids import (Grid, QuantConfigError, QuantizedWeight, UniformGrid, gguf_fallback_grid, grid_from_dict,
                           grid_to_dict)


@dataclass
class MethodConfig:
    """Settings every method shares. Subclasses add their own hyperparameters."""

    grid: Grid = field(default_factory=lambda: UniformGrid(bits=4, group=128))
    # Module-name patterns (fnmatch) kept in float, e.g. "*.mlp.down_proj".
    skip: tuple[str, ...] = ()
    # Mixed precision by hand: module name or fnmatch pattern -> the grid that linear uses instead of
    # ``grid``; the first matching key wins (e.g. {"*.mlp.down_proj": UniformGrid(4, 128)}).
    grid_overrides: dict[str, Grid] = field(default_factory=dict)
    # Mixed precision under a budget (methods/mixed.py): the average bits per quantized weight, scales and
    # zero points included, to spend; each linear gets one of ``candidate_grids`` (None: ternary and
    # 2/3/4-bit at ``grid``'s group), chosen to minimise the summed sensitivity measured on
    # ``sensitivity_samples`` calibration samples.
    bits_budget: float | None = None
    candidate_grids: tuple[Grid, ...] | None = None
    sensitivity_samples: int = 16
    # Weight + activation quantization: every quantized linear's input is fake-quantized per token on this
    # grid, during calibration (the block's linears see quantized inputs) and in the model it leaves. None:
    # weights only. ``act_clip_candidates``: clipping ratios searched on each linear before calibration
    # (tritium.calib.activation_clip); ``act_clip_ratios`` holds what the search chose, by linear name.
    act_grid: ActivationGrid | None = None
    act_clip_candidates: tuple[float, ...] | None = None
    act_clip_ratios: dict[str, float] = field(default_factory=dict)

    def grid_for(self, name: str) -> Grid:
        """The grid the linear ``name`` (its full module name) is quantized on."""
        if name in self.grid_overrides:
            return self.grid_overrides[name]
        for pattern, grid in self.grid_overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return grid
        return self.grid

    def act_grid_for(self, name: str) -> ActivationGrid | None:
        """The activation grid of the linear ``name``'s input (its searched clipping ratio included), or None."""
        if self.act_grid is None or name not in self.act_clip_ratios:
            return self.act_grid
        return replace(self.act_grid, clip_ratio=self.act_clip_ratios[name])

    def method_args(self) -> dict:
        # the activation settings are the recipe's own keys (and the result's record), not the method's
        args = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("grid", "skip", "grid_overrides", *ACTIVATION_FIELDS)}
        if self.bits_budget is None:  # the mixed-precision settings mean nothing without a budget
            for key in MIXED_PRECISION_ARGS:
                args.pop(key, None)
        elif self.candidate_grids is not None:
            args["candidate_grids"] = [grid_to_dict(g) for g in self.candidate_grids]
        return args


MIXED_PRECISION_ARGS = ("bits_budget", "candidate_grids", "sensitivity_samples")
# set from the recipe's top-level act_* keys, never from method_args
ACTIVATION_FIELDS = ("act_grid", "act_clip_candidates", "act_clip_ratios")


@dataclass
class QuantizationResult:
    method: str
    grid: Grid
    weights: dict[str, QuantizedWeight]
    seconds: float
    method_args: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    # Full linear name -> its grid, for the linears not on ``grid`` (mixed precision).
    grid_overrides: dict[str, Grid] = field(default_factory=dict)
    # Full linear name -> the activation grid of its input (weight + activation quantization); empty: weights only.
    act_grids: dict[str, ActivationGrid] = field(default_factory=dict)

    def grid_for(self, name: str) -> Grid:
        return self.grid_overrides.get(name, self.grid)

    def activations_record(self) -> dict | None:
        """The activation grids as a saved folder records them (``quantization_config["activations"]``)."""
        from ..nn.activation_quant import activation_record

        return activation_record(self.act_grids)

    def describe_activations(self) -> str | None:
        from ..nn.activation_quant import describe_activations

        return describe_activations(self.act_grids)

    def grid_overrides_dict(self) -> dict[str, dict]:
        """The overrides as recipe/config.json mappings."""
        return {name: grid_to_dict(grid) for name, grid in sorted(self.grid_overrides.items())}

    def describe_grids(self) -> str:
        """``grid.describe()``, or for mixed precision how many linears sit on each grid."""
        if not self.grid_overrides:
            return self.grid.describe()
        counts: dict[str, int] = {}
        for name in self.weights:
            label = self.grid_for(name).describe()
            counts[label] = counts.get(label, 0) + 1
        return "mixed " + ", ".join(f"{label}×{n}" for label, n in sorted(counts.items()))

    def mean_code_bits(self) -> float:
        """Code bits per weight (1.58 for ternary, k for k-bit), averaged over the quantized weights."""
        total = sum(q.codes.numel() for q in self.weights.values())
        return sum(float(self.grid_for(n).bits) * q.codes.numel() for n, q in self.weights.items()) / total

    def summary(self) -> dict:
        return {
            "method": self.method,
            "grid": grid_to_dict(self.grid),
            **({"grid_overrides": self.grid_overrides_dict()} if self.grid_overrides else {}),
            "method_args": self.method_args,
            "quantized_layers": len(self.weights),
            "seconds": self.seconds,
            **({"activations": self.activations_record()} if self.act_grids else {}),
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
    # The handler quantizes each linear on ``config.grid_for(name)``, so mixed precision works with it.
    per_linear_grids: bool = False


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_class: type[MethodConfig], needs_calibration: bool = False,
                    per_linear_grids: bool = False):
    """Decorator: register ``handler(model, layout, config, linears, calibration) -> (weights, details)``.

    ``per_linear_grids``: the handler reads each linear's grid from ``config.grid_for(name)``.
    """

    def wrap(handler: Handler) -> Handler:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodEntry(name, config_class, handler, needs_calibration, per_linear_grids)
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
    allowed = {f.name for f in fields(entry.config_class)} - {"grid"} - set(ACTIVATION_FIELDS)
    unknown = set(method_args) - allowed
    if unknown & set(ACTIVATION_FIELDS):
        raise QuantConfigError(f"{sorted(unknown & set(ACTIVATION_FIELDS))} are not method_args: activation "
                               "quantization is set by the recipe's top-level act_bits, act_group, act_symmetric, "
                               "act_clip_ratio and act_clip_search (--act-bits, ... on the CLI)")
    if unknown:
        raise QuantConfigError(
            f"method {method!r} has no option(s) {sorted(unknown)}; its options are {sorted(allowed)}"
        )
    if "skip" in method_args:
        method_args["skip"] = tuple(method_args["skip"] or ())
    if method_args.get("grid_overrides") is not None:
        overrides = method_args["grid_overrides"]
        if not isinstance(overrides, dict):
            raise QuantConfigError(f"grid_overrides must map module names (or patterns) to grids, got {overrides!r}")
        method_args["grid_overrides"] = {name: g if not isinstance(g, dict) else grid_from_dict(g)
                                         for name, g in overrides.items()}
    if method_args.get("candidate_grids") is not None:
        candidates = method_args["candidate_grids"]
        if not isinstance(candidates, (list, tuple)):
            raise QuantConfigError(f"candidate_grids must be a list of grids, got {candidates!r}")
        method_args["candidate_grids"] = tuple(g if not isinstance(g, dict) else grid_from_dict(g) for g in candidates)
    grid_obj = grid if not isinstance(grid, dict) else grid_from_dict(grid)
    return entry.config_class(grid=grid_obj, **method_args)


def unmatched_patterns(names, patterns) -> list[str]:
    """The fnmatch patterns of ``patterns`` that match none of ``names``."""
    names = list(names)
    return [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in names)]


def check_activation_groups(act_grid: ActivationGrid | None, widths: dict[str, int]) -> None:
    """An activation group size must divide the input width of every linear whose input it quantizes."""
    group = getattr(act_grid, "group", "token")
    if act_grid is None or group == "token":
        return
    bad = {name: width for name, width in widths.items() if width % group}
    if bad:
        name, width = next(iter(bad.items()))
        all_widths = sorted(set(widths.values()))
        fits = [g for g in (256, 128, 64, 32, 16) if all(w % g == 0 for w in all_widths)]
        raise QuantConfigError(
            f"act_group {group} does not divide the input width {width} of {name}"
            + (f" (and {len(bad) - 1} more linears)" if len(bad) > 1 else "")
            + f"; the input widths are {', '.join(map(str, all_widths))}: pass --act-group "
            + (" or ".join(map(str, fits[:3])) + " or token" if fits else "token") + " (one scale per token)")


def selected_linears(layout: DecoderLayout, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    linears = layout.quantizable_linears()
    chosen = {n: m for n, m in linears.items() if not any(fnmatch.fnmatch(n, p) for p in skip)}
    if not chosen:
        raise QuantConfigError(f"the skip patterns {list(skip)} exclude every one of the {len(linears)} linears")
    return chosen


def apply_gguf_fallbacks(config: MethodConfig, entry: MethodEntry, linears: dict[str, nn.Linear]
                         ) -> tuple[MethodConfig, dict]:
    """Put each linear whose width its GGUF grid's row multiple does not divide on the type llama.cpp's
    quantize tool falls back to (:func:`~tritium.quant.grids.gguf_fallback_grid`), as a grid override.

    Returns the config and ``{"gguf_fallbacks": {name: {"type", "instead_of", "in_features"}}}`` for the
    result's details (empty when nothing falls back). A width no fallback fits is refused."""
    fallbacks = {}
    for name, module in linears.items():
        grid = config.grid_for(name)
        fallback = gguf_fallback_grid(grid, module.weight.shape[1], name)
        if fallback is not None:
            fallbacks[name] = {"type": fallback.type, "instead_of": grid.type, "in_features": module.weight.shape[1]}
    if not fallbacks:
        return config, {}
    if not entry.per_linear_grids:
        raise QuantConfigError(f"method {entry.name!r} quantizes every linear on one grid, but {len(fallbacks)} "
                               f"linears (e.g. {next(iter(fallbacks))}) need a GGUF fallback type: use rtn, gptq, "
                               "awq or tesseraq, or skip those linears")
    grids = {name: config.grid_for(name) for name in linears}
    grids.update({name: grid_from_dict({"kind": "gguf", "type": spec["type"]}) for name, spec in fallbacks.items()})
    return replace(config, grid_overrides=grids), {"gguf_fallbacks": fallbacks}


@torch.no_grad()
def quantize_(model: nn.Module, config: MethodConfig, calibration: torch.Tensor | None = None) -> QuantizationResult:
    """Quantize ``model`` in place with the method ``config`` selects.

    Each selected linear's weight is replaced by its dequantized value (fake quant);
    the returned result holds the codes and scales for packing, export and sizing.
    """
    from . import mixed  # mixed precision builds on this module

    entry = _entry_for_config(config)
    layout = decoder_layout(model)
    linears = selected_linears(layout, config.skip)
    mixed.check_mixed_precision(config, entry, linears)  # a bad budget fails before any calibration
    check_activation_groups(config.act_grid, {name: m.in_features for name, m in linears.items()})
    if config.act_grid is not None and config.act_clip_candidates and calibration is None:
        raise QuantConfigError("act_clip_search chooses each linear's activation clipping ratio on calibration "
                               "data: pass calibration token ids, or set act_clip_ratio instead")
    if (entry.needs_calibration or config.bits_budget is not None) and calibration is None:
        why = "to measure each linear's sensitivity for bits_budget" if not entry.needs_calibration else ""
        raise QuantConfigError(f"method {entry.name!r} needs calibration data{' ' + why if why else ''}: "
                               "pass calibration token ids")
    start = time.perf_counter()
    mixed_details = {}
    if config.bits_budget is not None:
        allocation = mixed.allocate_grids(model, layout, linears, config, calibration)
        config = replace(config, grid_overrides=allocation.grids)
        mixed_details = {"mixed_precision": allocation.report()}
    elif config.grid_overrides:
        config = replace(config, grid_overrides={name: config.grid_for(name) for name in linears})
    config, fallback_details = apply_gguf_fallbacks(config, entry, linears)
    activation_details = {}
    if config.act_grid is not None and config.act_clip_candidates:
        from ..calib.activation_clip import search_activation_clip_ratios

        clip_start = time.perf_counter()
        ratios = search_activation_clip_ratios(model, linears, config.act_grid, calibration,
                                               config.act_clip_candidates)
        config = replace(config, act_clip_ratios=ratios)
        activation_details = {"activation_clip_search": {"candidates": list(config.act_clip_candidates),
                                                         "seconds": round(time.perf_counter() - clip_start, 3)}}
    weights, details = entry.handler(model, layout, config, linears, calibration)
    for name, qweight in weights.items():
        module = linears[name]
        module.weight.data.copy_(qweight.dequantize(module.weight.dtype).to(module.weight.device))
    overrides = {name: q.grid for name, q in weights.items() if q.grid != config.grid}
    act_grids = {}
    if config.act_grid is not None:  # the model it leaves quantizes those inputs from now on, as in calibration
        from ..nn.activation_quant import install_activation_quantizers

        act_grids = {name: config.act_grid_for(name) for name in weights}
        install_activation_quantizers(model, act_grids)
    return QuantizationResult(entry.name, config.grid, weights, time.perf_counter() - start,
                              method_args=config.method_args(),
                              details={**details, **mixed_details, **fallback_details, **activation_details},
                              grid_overrides=overrides, act_grids=act_grids)
