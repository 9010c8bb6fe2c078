"""Quantization algorithms, one file each, behind one registry.

The post-training methods register here. "dlt" (TernaryLLM distillation) trains, so it lives in
:mod:`tritium.train.distill` and registers when that module is imported, which :mod:`tritium.jobs`
(and ``tritium.config_from_dict`` / ``tritium.quantize_``) do.
"""

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
from . import gptq  # noqa: F401,E402  (registers "gptq")
from . import awq  # noqa: F401,E402  (registers "awq")
from . import tesseraq  # noqa: F401,E402  (registers "tesseraq")
