"""Grids, fake-quant and the straight-through estimator, as pure functions."""

from .grids import (  # noqa: F401
    SUPPORTED_BITS,
    TERNARY_VARIANTS,
    Grid,
    GroupLayout,
    QuantConfigError,
    QuantizedWeight,
    TernaryGrid,
    UniformGrid,
    dequantize,
    fake_quantize,
    grid_from_dict,
    grid_to_dict,
    least_squares_alpha,
    quantize_ternary,
    quantize_uniform,
    quantize_weight,
    round_ste,
    storage_bits,
    uniform_codes,
    uniform_params,
)
