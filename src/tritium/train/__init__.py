"""Training: DLT fake-quant linears, distillation losses, data streams and a generic trainer."""

from .dlt import (  # noqa: F401
    DLTConfig,
    DLTLinear,
    FakeQuantLinear,
    dlt_codes,
    dlt_weight,
    fold_,
    quant_parameters,
    to_dlt_,
    to_fake_quant_,
)
