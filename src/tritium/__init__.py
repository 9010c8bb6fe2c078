"""tritium: ternary (1.58-bit) and 2/3/4-bit quantization of large language models.

Importing tritium registers the ``tritium`` quantization method with transformers, so
``AutoModelForCausalLM.from_pretrained`` loads folders that tritium saved. The registration waits
until transformers loads its quantizers (:mod:`tritium.integrations`), and the names below load on
first use, so ``import tritium.quant`` pulls in neither transformers nor the trainer.
"""

from __future__ import annotations

import importlib

from .integrations import register_with_transformers
from .utils.errors import TritiumError

__version__ = "0.1.0"

# public name -> (module, attribute); loaded on first access (PEP 562)
_LAZY = {
    "export_model": ("tritium.export", "export"),  # tritium.export stays the subpackage
    "MethodConfig": ("tritium.methods", "MethodConfig"),
    "QuantizationResult": ("tritium.methods", "QuantizationResult"),
    "RTNConfig": ("tritium.methods", "RTNConfig"),
    "config_from_dict": ("tritium.methods", "config_from_dict"),
    "quantize_": ("tritium.methods", "quantize_"),
    "decoder_layout": ("tritium.models", "decoder_layout"),
    "load_model": ("tritium.models", "load_model"),
    "ActivationGrid": ("tritium.quant.activations", "ActivationGrid"),
    "GGUFBlockGrid": ("tritium.quant", "GGUFBlockGrid"),
    "TernaryGrid": ("tritium.quant", "TernaryGrid"),
    "UniformGrid": ("tritium.quant", "UniformGrid"),
}
# names from the method registry: every method, "dlt" included, is registered before they are used
_NEEDS_PLUGINS = {"MethodConfig", "QuantizationResult", "RTNConfig", "config_from_dict", "quantize_"}
_SUBPACKAGES = {"calib", "cli", "data", "eval", "export", "integrations", "jobs", "kernels", "methods", "models",
                "nn", "pack", "quant", "recipes", "runner", "runtime", "spectra", "train", "utils"}

__all__ = ["TritiumError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        if name in _NEEDS_PLUGINS:
            importlib.import_module("tritium.jobs.plugins")
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tritium.{name}")
    raise AttributeError(f"module 'tritium' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


register_with_transformers()
