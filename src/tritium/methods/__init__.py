"""Quantization algorithms, one file each, behind one registry."""

from . import rtn  # noqa: F401  (registers "rtn")
from .base import (  # noqa: F401
    MethodConfig,
    QuantizationResult,
    config_from_dict,
    get_method,
    method_names,
    quantize_,
    register_method,
)
from .rtn import RTNConfig  # noqa: F401
from ..train import distill as _distill  # noqa: F401,E402  (registers "dlt": TernaryLLM distillation)
