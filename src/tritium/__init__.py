"""tritium: ternary (1.58-bit) and 2/3/4-bit quantization of large language models.

Importing tritium registers the ``tritium`` quantization method with transformers, so
``AutoModelForCausalLM.from_pretrained`` loads folders that tritium saved.
"""

from . import export as _export  # noqa: F401
from .export import export as export_model  # noqa: F401  (tritium.export stays the subpackage)
from .export import hf as _hf  # noqa: F401  (registers quant_method "tritium")
from .methods import MethodConfig, QuantizationResult, RTNConfig, config_from_dict, quantize_  # noqa: F401
from .models import decoder_layout, load_model  # noqa: F401
from .quant import TernaryGrid, UniformGrid  # noqa: F401
from .utils.errors import TritiumError  # noqa: F401

__version__ = "0.1.0"
