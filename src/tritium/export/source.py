"""What every exporter reads: a model whose quantized linears hold their dequantized weights,
plus each linear's exact codes and scales (a :class:`~tritium.quant.grids.QuantizedWeight`).

Sources are a `tritium quantize` run folder or model folder (packed or fake-quant with its codes
sidecar), or a model in memory: one packed by :func:`tritium.nn.pack_model`, or one quantized in
place by :func:`tritium.quantize_` together with its :class:`~tritium.methods.QuantizationResult`.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..quant.grids import Grid, QuantizedWeight, grid_from_dict
from .registry import ExportError


@dataclass
class ExportSource:
    model: nn.Module  # quantized linears are plain nn.Linear holding their dequantized weights
    tokenizer: object | None
    weights: dict[str, QuantizedWeight]  # full linear name -> its exact codes and scales
    grid: Grid
    grid_overrides: dict[str, Grid] = field(default_factory=dict)
    tritium_config: dict = field(default_factory=dict)  # the tritium quantization_config (method, skip, ...)
    folder: Path | None = None  # the model folder it was read from, if any
    origin: str = "model in memory"

    def grid_for(self, name: str) -> Grid:
        return self.grid_overrides.get(name, self.grid)


@dataclass(frozen=True)
class FolderPlan:
    """A source folder resolved without loading it: enough for the checks that come first."""

    folder: Path  # the model folder (RUN/model or the folder itself)
    run_folder: Path | None  # the `tritium quantize` run folder around it, if any
    tritium_config: dict
    grid: Grid
    grid_overrides: dict[str, Grid]
    model_config: dict = field(default_factory=dict)  # the folder's config.json

    def default_out(self, name: str) -> Path:
        """RUN/<name> beside the model of a run, else <model><-name or .suffix> beside the model folder."""
        if self.run_folder is not None:
            return self.run_folder / name
        if name.startswith("model."):  # a file name such as model.gguf
            return self.folder.with_name(self.folder.name + name[len("model"):])
        return self.folder.with_name(f"{self.folder.name}-{name}")


def plan_folder(path: str | os.PathLike) -> FolderPlan:
    """Resolve a run or model folder and read its tritium quantization_config; refuse anything else."""
    from .codes import has_codes
    from .hf import grids_from_dicts

    folder, _ = model_folder(str(path))
    qconfig = tritium_quantization_config(folder, "export")
    if qconfig.get("format") != "packed" and not has_codes(folder):
        raise ExportError(f"{folder} is a fake-quant folder without codes: re-run `tritium quantize` (it writes "
                          "tritium_codes.safetensors) or pack it with `tritium pack`, then export that")
    run_folder = Path(path) if folder != Path(path) else None  # _model_folder returned RUN/model
    model_config = json.loads((folder / "config.json").read_text())
    return FolderPlan(folder, run_folder, qconfig, grid_from_dict(qconfig["grid"]),
                      grids_from_dicts(qconfig.get("grid_overrides")), model_config)


def load_folder_source(plan: FolderPlan) -> ExportSource:
    """Load a planned folder: packed modules are unpacked, a fake folder's codes are checked against its weights."""
    from ..models import load_model
    from ..nn import check_against_weight, packed_modules, packed_to_quantized, unpack_model
    from .codes import load_codes

    folder = plan.folder
    model, tokenizer, _ = load_model(folder, dtype="auto")
    if plan.tritium_config.get("format") == "packed":
        if not packed_modules(model):
            raise ExportError(f"{folder}: config.json says packed but the model holds no packed modules")
        weights = unpack_model(model, plan.grid, plan.grid_overrides)
    else:
        codes = load_codes(folder)
        weights = {}
        for name, weight in codes.weights.items():
            check_against_weight(name, weight, model.get_submodule(name).weight)
            weights[name] = packed_to_quantized(weight, plan.grid_overrides.get(name, plan.grid), name)
    _forget_tritium_quantization(model)
    return ExportSource(model, tokenizer, weights, plan.grid, dict(plan.grid_overrides), dict(plan.tritium_config),
                        folder, str(folder))


def model_grids(model: nn.Module, result=None) -> tuple[Grid, dict[str, Grid], dict]:
    """(grid, per-linear overrides, tritium quantization_config) of a model in memory, without copying it."""
    from ..nn import packed_modules
    from ..quant.grids import grid_to_dict
    from .hf import grids_from_dicts

    if not isinstance(model, nn.Module):
        raise ExportError(f"export takes a model folder, a run folder or a torch model, not {type(model).__name__}")
    from ..nn.activation_quant import activation_grids, describe_activations

    if activation_grids(model):
        raise ExportError(activations_refusal(describe_activations(activation_grids(model)), "export"))
    if result is not None:
        config = {"quant_method": "tritium", "method": result.method, "grid": grid_to_dict(result.grid),
                  "method_args": dict(result.method_args), "grid_overrides": result.grid_overrides_dict()}
        return result.grid, dict(result.grid_overrides), config
    qconfig = getattr(model.config, "quantization_config", None)
    qconfig = qconfig.to_dict() if hasattr(qconfig, "to_dict") else qconfig
    if not packed_modules(model) or not qconfig or qconfig.get("quant_method") != "tritium":
        raise ExportError("a model in memory needs its codes: pass result=<the QuantizationResult of "
                          "tritium.quantize_>, or a model packed and loaded from a tritium folder")
    return grid_from_dict(qconfig["grid"]), grids_from_dicts(qconfig.get("grid_overrides")), dict(qconfig)


def model_source(model: nn.Module, result=None, tokenizer=None) -> ExportSource:
    """An in-memory source; the caller's model is copied, never changed.

    With ``result`` (the QuantizationResult of :func:`tritium.quantize_`) the model may be
    fake-quantized or packed; without it the model must be packed and carry the tritium
    ``quantization_config`` it was loaded with (its grids come from there).
    """
    from ..nn import packed_modules, unpack_model

    grid, overrides, config = model_grids(model, result)
    copied = copy.deepcopy(model)
    if packed_modules(copied):
        weights = unpack_model(copied, grid, overrides)
    else:
        weights = dict(result.weights)
        for name, qweight in weights.items():
            _check_fake_weight(name, qweight, copied.get_submodule(name).weight)
    _forget_tritium_quantization(copied)
    return ExportSource(copied, tokenizer, weights, grid, overrides, config)


def _check_fake_weight(name: str, qweight: QuantizedWeight, weight: torch.Tensor) -> None:
    """The fake-quant weight must be the codes' dequantized value (up to its dtype's rounding)."""
    if tuple(weight.shape) != tuple(qweight.codes.shape):
        raise ExportError(f"{name}: the result's codes are {tuple(qweight.codes.shape)} but the model's weight is "
                          f"{tuple(weight.shape)}: the result belongs to another model")
    want = qweight.dequantize(torch.float32).to(weight.device).to(weight.dtype).float()
    got = weight.detach().float()
    tolerance = torch.finfo(weight.dtype).eps * float(got.abs().max()) if got.numel() else 0.0
    if float((want - got).abs().max()) > tolerance:
        raise ExportError(f"{name}: the model's weight is not the result's dequantized codes: pass the model that "
                          "tritium.quantize_ quantized in place together with its result")


def _forget_tritium_quantization(model: nn.Module) -> None:
    """Drop tritium's quantization_config and quantizer: the exporters write their own format's."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def model_folder(path: str) -> tuple[Path, Path]:
    """(the model folder, the default packed folder) of a quantize run or a model folder."""
    from ..models import ModelSourceError

    path = Path(path)
    if not path.exists():
        raise ModelSourceError(f"{path} does not exist: pass a `tritium quantize` run folder or its model/ folder")
    if (path / "model" / "config.json").is_file():
        return path / "model", path / "packed"
    if (path / "config.json").is_file():
        return path, path.with_name(path.name + "-packed")
    raise ModelSourceError(f"{path} holds neither model/config.json (a `tritium quantize` run) nor config.json "
                           "(a model folder)")


def tritium_quantization_config(folder: Path, command: str) -> dict:
    from ..models.loader import read_quantization_config

    qconfig = read_quantization_config(folder)  # the caller has checked the folder against its manifest
    if not qconfig or qconfig.get("quant_method") != "tritium":
        raise ExportError(f"{folder} is not a tritium-quantized model: quantize it first with "
                          f"`tritium quantize --model {folder} ...`, then `tritium {command}` the run")
    if qconfig.get("activations"):
        from ..nn.activation_quant import describe_activations, grids_from_record

        raise ExportError(f"{folder}: " + activations_refusal(
            describe_activations(grids_from_record(qconfig["activations"])), command))
    return qconfig


def activations_refusal(activations: str, command: str) -> str:
    """Why a model whose activations are quantized cannot be exported or packed (yet)."""
    return (f"its linears' inputs are quantized ({activations}), and `tritium {command}` writes weights that run on "
            "float activations, so the model it wrote would not be the one evaluated: evaluate and run the fake-quant "
            "folder with tritium (`tritium eval`), or quantize the weights only (leave out --act-bits) to export")
