"""Fake-quant activations on the inputs of a model's quantized linears (weight + activation quantization).

:func:`install_activation_quantizers` puts an :class:`ActivationQuantizer` on each named module as a forward
pre-hook: the module's input is quantized per token on its :class:`~tritium.quant.activations.ActivationGrid`
and dequantized again (with a straight-through gradient) before the module runs. It works on any module
whose first argument is the activation, so on ``nn.Linear`` and on tritium's packed linears alike; the
modules not named (embeddings, the LM head, skipped linears) stay float.
A packed linear whose CPU kernel quantizes activations itself (8-bit per token on ternary or ≤ 4-bit codes,
:meth:`tritium.nn.packed_linear.PackedLinear.integer_activation_grid`) gets its input untouched and computes the
same codes in its kernel, with integer products.

A hook lives in the module's own hook table, so it follows the model through ``copy.deepcopy`` and is found
again there (:func:`activation_quantizers`) without any handle. Saved folders record the grids in their
``quantization_config`` (:func:`activation_record`), and tritium installs them again when it loads the folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..quant.activations import ActivationGrid, fake_quantize_activations
from ..quant.grids import QuantConfigError


class ActivationQuantizer:
    """A forward pre-hook that fake-quantizes its module's first input on ``grid``.

    ``enabled`` False lets the input through untouched (a float reference inside a quantized block).
    ``channel_scale`` s, set by AWQ's scale search only, quantizes x / s and hands on Q(x / s)·s: what the
    module would see once s is folded into the producer before it (x / s) and into this module's weight (·s).
    """

    def __init__(self, grid: ActivationGrid):
        if not isinstance(grid, ActivationGrid):
            raise QuantConfigError(f"an activation quantizer needs an ActivationGrid, not {type(grid).__name__}")
        self.grid = grid
        self.enabled = True
        self.channel_scale: Tensor | None = None

    def fake(self, x: Tensor) -> Tensor:
        """``x`` as the module sees it: quantized and dequantized on the grid, same dtype."""
        if self.channel_scale is None:
            return fake_quantize_activations(x, self.grid)
        s = self.channel_scale.to(device=x.device, dtype=torch.float32)
        return (fake_quantize_activations(x.float() / s, self.grid) * s).to(x.dtype)

    def __call__(self, module: nn.Module, args: tuple):
        if not self.enabled or not args or not isinstance(args[0], Tensor):
            return None
        integer_grid = getattr(module, "integer_activation_grid", None)  # a packed linear with an int8 kernel
        if integer_grid is not None and integer_grid(args[0]) is self.grid:
            return None  # its kernel quantizes the input to these very codes itself and multiplies in integers
        return (self.fake(args[0]), *args[1:])

    def __repr__(self) -> str:
        return f"ActivationQuantizer({self.grid.describe()}, clip_ratio={self.grid.clip_ratio})"


def activation_quantizer_of(module: nn.Module) -> ActivationQuantizer | None:
    """The activation quantizer installed on ``module`` itself, or None."""
    return next((hook for hook in module._forward_pre_hooks.values() if isinstance(hook, ActivationQuantizer)), None)


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """Every installed activation quantizer, by module name (relative to ``model``)."""
    found = {}
    for name, module in model.named_modules():
        quantizer = activation_quantizer_of(module)
        if quantizer is not None:
            found[name] = quantizer
    return found


def activation_grids(model: nn.Module) -> dict[str, ActivationGrid]:
    """The grid of every installed activation quantizer, by module name."""
    return {name: q.grid for name, q in activation_quantizers(model).items()}


def remove_activation_quantizers(model: nn.Module) -> int:
    """Remove every activation quantizer from ``model`` and its submodules; returns how many there were."""
    return sum(remove_activation_quantizers_of(module) for module in model.modules())


def remove_activation_quantizers_of(module: nn.Module) -> int:
    """Remove the quantizer of ``module`` itself (not its submodules'); returns how many there were (0 or 1)."""
    keys = [key for key, hook in module._forward_pre_hooks.items() if isinstance(hook, ActivationQuantizer)]
    for key in keys:
        del module._forward_pre_hooks[key]
    return len(keys)


def install_activation_quantizers(model: nn.Module, grids: Mapping[str, ActivationGrid]
                                  ) -> dict[str, ActivationQuantizer]:
    """Fake-quantize the input of each module named in ``grids`` (relative to ``model``) on its grid, replacing
    a quantizer already there. A module that is not there is an error, never skipped."""
    installed = {}
    for name, grid in grids.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise QuantConfigError(f"cannot quantize the activations of {name!r}: the model has no such module") from err
        remove_activation_quantizers_of(module)
        quantizer = ActivationQuantizer(grid)
        module.register_forward_pre_hook(quantizer)
        installed[name] = quantizer
    return installed


@contextmanager
def activations_in_float(model: nn.Module) -> Iterator[None]:
    """Inside the block, every activation quantizer of ``model`` (and its submodules) lets inputs through."""
    quantizers = list(activation_quantizers(model).values())
    before = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, enabled in zip(quantizers, before):
            q.enabled = enabled


# --------------------------------------------------------------------------- the saved record


def activation_grid_to_dict(grid: ActivationGrid) -> dict:
    return {"bits": grid.bits, "symmetric": grid.symmetric, "group": grid.group, "clip_ratio": float(grid.clip_ratio)}


def activation_grid_from_dict(settings: Mapping) -> ActivationGrid:
    unknown = set(settings) - {"bits", "symmetric", "group", "clip_ratio"}
    if unknown:
        raise QuantConfigError(f"an activation grid has no setting(s) {sorted(unknown)}: the keys are bits, "
                               "symmetric, group, clip_ratio")
    return ActivationGrid(**dict(settings))


def activation_record(grids: Mapping[str, ActivationGrid]) -> dict | None:
    """What a saved folder's ``quantization_config["activations"]`` holds for ``grids`` (None when empty): the
    grid, the linears whose inputs it quantizes, and each linear's clipping ratio where a search chose one other
    than the grid's. Only grids that differ in nothing but their clipping ratio share one record."""
    if not grids:
        return None
    names = sorted(grids)
    base = replace(grids[names[0]], clip_ratio=1.0)
    if any(replace(grids[n], clip_ratio=1.0) != base for n in names):
        raise QuantConfigError("the linears' activation grids differ in more than their clipping ratio; one "
                               "record holds one grid")
    ratios = [float(grids[n].clip_ratio) for n in names]
    common = max(set(ratios), key=ratios.count)  # the most frequent ratio is the grid's, the rest are listed
    record = {"grid": activation_grid_to_dict(replace(base, clip_ratio=common)), "linears": names}
    others = {n: r for n, r in zip(names, ratios) if r != common}
    if others:
        record["clip_ratios"] = others
    return record


def grids_from_record(record: Mapping) -> dict[str, ActivationGrid]:
    """The inverse of :func:`activation_record`: each linear's grid, its own clipping ratio included."""
    if not isinstance(record, Mapping) or not isinstance(record.get("grid"), Mapping) \
            or not isinstance(record.get("linears"), list):
        raise QuantConfigError(f"the activations record {record!r} is damaged: it needs a grid and a list of linears; "
                               "re-export the model with tritium")
    grid = activation_grid_from_dict(record["grid"])
    ratios = dict(record.get("clip_ratios") or {})
    stray = sorted(set(ratios) - set(record["linears"]))
    if stray:
        raise QuantConfigError(f"the activations record gives clipping ratios to {stray[:3]}, which it does not list "
                               "among its linears: the config is damaged; re-export the model with tritium")
    return {name: replace(grid, clip_ratio=float(ratios[name])) if name in ratios else grid
            for name in record["linears"]}


def describe_activations(grids: Mapping[str, ActivationGrid]) -> str | None:
    """``A8``, ``A4-asym``, with ``clip searched`` when the linears' ratios differ; None for no activations."""
    if not grids:
        return None
    first = next(iter(grids.values()))
    ratios = {float(g.clip_ratio) for g in grids.values()}
    if len(ratios) > 1:
        return f"{first.describe()} (clip searched per linear)"
    ratio = ratios.pop()
    return first.describe() + (f" (clip {ratio:g})" if ratio != 1.0 else "")
