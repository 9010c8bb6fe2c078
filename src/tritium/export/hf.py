"""Hugging Face integration: ``from_pretrained`` loads tritium folders after ``import tritium``.

The config and quantizer are registered under ``quant_method: "tritium"`` with
transformers' public hooks, so no upstream change is needed. Folders saved with
``format: fake`` hold dequantized float weights on the quantization grid; they load
as ordinary weights and the config records how they were made.
"""

from __future__ import annotations

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "tritium"
SUPPORTED_FORMATS = ("fake",)


@register_quantization_config(QUANT_METHOD)
class TritiumConfig(QuantizationConfigMixin):
    def __init__(self, method: str = "rtn", grid: dict | None = None, format: str = "fake",
                 modules_not_quantized: list[str] | None = None, method_args: dict | None = None, **kwargs):
        self.quant_method = QUANT_METHOD
        self.method = method
        self.grid = grid or {}
        self.format = format
        self.modules_not_quantized = modules_not_quantized or []
        self.method_args = method_args or {}
        if format not in SUPPORTED_FORMATS:
            raise ValueError(
                f"tritium quantization format {format!r} is not supported by this version "
                f"(supported: {', '.join(SUPPORTED_FORMATS)}); upgrade tritium"
            )

    def to_dict(self):
        return {
            "quant_method": QUANT_METHOD,
            "method": self.method,
            "grid": self.grid,
            "format": self.format,
            "modules_not_quantized": self.modules_not_quantized,
            "method_args": self.method_args,
        }


@register_quantizer(QUANT_METHOD)
class TritiumHfQuantizer(HfQuantizer):
    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        return model  # fake-quant weights are plain float tensors

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self):
        return False


def save_fake_quantized(model, tokenizer, folder, method: str, grid: dict, skip=(), method_args: dict | None = None):
    """Save ``model`` (already fake-quantized in place) with its ``quantization_config``, atomically."""
    from ..utils.io import atomic_directory

    model.config.quantization_config = TritiumConfig(
        method=method, grid=grid, format="fake", modules_not_quantized=list(skip), method_args=method_args or {}
    )
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder
