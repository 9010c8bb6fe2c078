"""Packed modules: linears that hold only packed codes and call tritium::packed_linear, and a block-quantized
embedding and LM head (q8_0 / q4_0); fake-quant activations on the inputs of quantized linears."""

from .activation_quant import (  # noqa: F401
    ActivationQuantizer,
    activation_grids,
    activation_quantizer_of,
    activation_quantizers,
    activation_record,
    activations_in_float,
    describe_activations,
    grids_from_record,
    install_activation_quantizers,
    remove_activation_quantizers,
)

from .block_head import (  # noqa: F401
    BlockEmbedding,
    BlockLMHead,
    check_head_quantizable,
    dequantize_head_,
    head_type_of,
    quantize_head_,
)

from .convert import (  # noqa: F401
    check_against_weight,
    module_checksum,
    pack_model,
    packed_bits_report,
    pack_with_codes,
    packed_modules,
    packed_to_quantized,
    replace_with_empty_packed,
    unpack_model,
    verify_packed_model,
)
from .packed_linear import (  # noqa: F401
    GGUFBlockLinear,
    PackedLinear,
    QuantLinear,
    TernaryLinear,
    empty_packed_linear,
    packed_class,
)
