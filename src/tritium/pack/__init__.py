"""Packed storage: exact bit layouts for ternary and 2/3/4-bit codes, with size accounting."""

from .layouts import (  # noqa: F401
    TERNARY_LAYOUTS,
    PackError,
    code_bits_per_weight,
    digits_per_byte,
    group_sizes,
    pack_bits,
    pack_digits,
    pack_grouped,
    pack_ternary,
    pack_uniform,
    packed_length,
    ternary_radix,
    uniform_radix,
    unpack_bits,
    unpack_digits,
    unpack_grouped,
    unpack_ternary,
    unpack_uniform,
)
from .packed import PackedWeight, bits_per_weight, bits_report, pack_quantized  # noqa: F401
from .blocks import BLOCK_SIZE, HEAD_TYPES, BlockWeight, HeadTypeError, quantize_blocks  # noqa: F401
