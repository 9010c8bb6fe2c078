"""The reference implementation of ``tritium::packed_linear``: the oracle every kernel must match.

It unpacks the digits, dequantizes the weight to float32 and calls ``F.linear``, so
it is obviously right and runs on any device, slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pack.packed import PackedWeight


def packed_linear_reference(x: Tensor, packed: Tensor, scale: Tensor, zero: Tensor | None, shift: Tensor | None,
                            radix: int, in_features: int, group_size: int, implicit_zero: float,
                            kernel_layout: Tensor | None = None) -> Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(f"packed_linear: input has {x.shape[-1]} features, the layer expects {in_features}")
    weight = PackedWeight(packed, scale, radix, in_features, group_size, zero=zero, shift=shift,
                          implicit_zero=implicit_zero).validate("packed_linear").dequantize(torch.float32)
    return F.linear(x.float(), weight).to(x.dtype)
