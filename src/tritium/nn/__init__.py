"""Packed modules: linears that hold only packed codes and call tritium::packed_linear."""

from .convert import (  # noqa: F401
    module_checksum,
    pack_model,
    packed_bits_report,
    packed_modules,
    replace_with_empty_packed,
    verify_packed_model,
)
from .packed_linear import PackedLinear, QuantLinear, TernaryLinear, empty_packed_linear  # noqa: F401
