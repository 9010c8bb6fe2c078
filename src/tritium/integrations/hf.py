"""Hugging Face integration: ``from_pretrained`` loads tritium folders once ``tritium`` is imported.

The config and quantizer are registered under ``quant_method: "tritium"`` with transformers' public
hooks, so no upstream change is needed. Importing this module registers them; ``import tritium``
arranges for that to happen as soon as transformers loads its quantizers
(:func:`tritium.integrations.register_with_transformers`), so importing tritium stays cheap.

Fake-quant folders load as ordinary float weights and the config records how they were made. A folder
whose ``quantization_config`` has ``activations`` (weight + activation quantization) gets its linears'
activation quantizers back (:mod:`tritium.nn.activation_quant`), packed or not. For
packed folders the quantizer swaps the named linears for packed modules before the weights load
and checks every module against the checksum recorded at save time afterwards. A local folder is
checked against its manifest first, and refused when its tensors do not match its
``quantization_config`` (packed tensors under ``format: fake``, ``packed_modules`` naming other
linears), which would otherwise load with random linears.
"""

from __future__ import annotations

from pathlib import Path

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..quant.grids import grids_from_dicts
from ..utils.integrity import (
    QUANT_CONFIG_VERSION,
    QUANT_METHOD,
    SUPPORTED_FORMATS,
    InconsistentFolderError,
    check_config_matches_tensors,
    check_quantization_config_version,
)


@register_quantization_config(QUANT_METHOD)
class TritiumConfig(QuantizationConfigMixin):
    def __init__(self, method: str = "rtn", grid: dict | None = None, format: str = "fake",
                 modules_not_quantized: list[str] | None = None, method_args: dict | None = None,
                 packed_modules: list[str] | None = None, ternary_layout: str = "base3",
                 scale_dtype: str = "float16", checksums: dict[str, str] | None = None,
                 grid_overrides: dict[str, dict] | None = None, head: dict | None = None,
                 activations: dict | None = None, format_version: int = QUANT_CONFIG_VERSION, **kwargs):
        check_quantization_config_version({"quant_method": QUANT_METHOD, "format_version": format_version},
                                          "this tritium checkpoint")
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.method = method
        self.grid = grid or {}
        # Mixed precision: full linear name -> its grid, for the linears not on ``grid``.
        self.grid_overrides = dict(grid_overrides or {})
        self.format = format
        self.modules_not_quantized = modules_not_quantized or []
        self.method_args = method_args or {}
        # format "packed" only: which linears are packed, in which layout, and their CRC-32s
        self.packed_modules = list(packed_modules or [])
        self.ternary_layout = ternary_layout
        self.scale_dtype = scale_dtype
        self.checksums = dict(checksums or {})
        # format "packed" only: the embedding / LM head storage (tritium.nn.block_head.head_record); f16 = float
        self.head = dict(head or {"type": "f16"})
        # Weight + activation quantization (tritium.nn.activation_quant.activation_record): {"grid": {bits,
        # symmetric, group, clip_ratio}, "linears": [names], "clip_ratios": {name: ratio}}. tritium's loader
        # quantizes those linears' inputs on the fly again; plain transformers (tritium not imported) skips
        # the whole quantization_config with a warning and would run float activations. None: weights only.
        self.activations = dict(activations) if activations else None
        if format not in SUPPORTED_FORMATS:
            raise InconsistentFolderError(
                f"tritium quantization format {format!r} is not supported by this version "
                f"(supported: {', '.join(SUPPORTED_FORMATS)}); upgrade tritium"
            )

    def to_dict(self):
        out = {
            "quant_method": QUANT_METHOD,
            "format_version": QUANT_CONFIG_VERSION,
            "method": self.method,
            "grid": self.grid,
            "format": self.format,
            "modules_not_quantized": self.modules_not_quantized,
            "method_args": self.method_args,
        }
        if self.grid_overrides:
            out["grid_overrides"] = self.grid_overrides
        if self.activations:  # folders of weights-only models keep the config they always had
            out["activations"] = self.activations
        if self.format == "packed":
            out |= {"packed_modules": self.packed_modules, "ternary_layout": self.ternary_layout,
                    "scale_dtype": self.scale_dtype, "checksums": self.checksums}
            if self.head.get("type", "f16") != "f16":  # folders with a float head keep the config they always had
                out["head"] = self.head
        return out


@register_quantizer(QUANT_METHOD)
class TritiumHfQuantizer(HfQuantizer):
    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        folder = Path(str(getattr(model.config, "name_or_path", "") or ""))
        if folder.is_dir():  # a local folder (hub downloads hold only the files they need, no manifest)
            from ..utils.integrity import verify_folder, warn_unsealed

            if verify_folder(folder) is None:
                warn_unsealed(folder)
            check_config_matches_tensors(folder, {"quant_method": QUANT_METHOD, "format": config.format,
                                                  "packed_modules": config.packed_modules})
        if config.format == "packed":  # fake-quant weights are plain float tensors: nothing to swap
            from ..nn.convert import replace_with_empty_packed
            from ..quant.grids import grid_from_dict

            if not config.packed_modules:
                raise InconsistentFolderError("this tritium packed checkpoint lists no packed_modules in its "
                                              "quantization_config: the config.json is damaged; re-export the model "
                                              "with tritium")
            replace_with_empty_packed(model, config.packed_modules, grid_from_dict(config.grid),
                                      config.ternary_layout, config.scale_dtype,
                                      grid_overrides=grids_from_dicts(config.grid_overrides))
            from ..nn.block_head import replace_with_empty_head

            replace_with_empty_head(model, config.head)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.quantization_config.format == "packed":
            from ..nn.convert import verify_packed_model

            from ..nn.block_head import verify_head

            verify_packed_model(model, self.quantization_config.checksums)
            verify_head(model, self.quantization_config.head)
        if self.quantization_config.activations:  # the activations were quantized when it was evaluated
            from ..nn.activation_quant import grids_from_record, install_activation_quantizers

            install_activation_quantizers(model, grids_from_record(self.quantization_config.activations))
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self):
        return False
