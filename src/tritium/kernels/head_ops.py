"""The embedding / LM head ops, declared once here and implemented per device:

* ``tritium::block_linear(x, codes, scale, bits)``: y = x·Wᵀ with W in q8_0 (bits 8) or q4_0 (bits 4)
  blocks of 32 (:mod:`tritium.pack.blocks`);
* ``tritium::linear_16bit(x, weight)``: y = x·Wᵀ with W stored in fp16 or bf16 and fp32 arithmetic.

The reference implementations (any device) dequantize W to fp32 and call ``F.linear``: they are the
oracle the C++ CPU kernel (:mod:`tritium.kernels.head_cpu`) is tested against. Both return x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pack.blocks import BlockWeight

BITS_KIND = {8: "q8_0", 4: "q4_0"}

_library = torch.library.Library("tritium", "FRAGMENT")
_library.define("block_linear(Tensor x, Tensor codes, Tensor scale, int bits) -> Tensor")
_library.define("linear_16bit(Tensor x, Tensor weight) -> Tensor")


def block_linear_reference(x: Tensor, codes: Tensor, scale: Tensor, bits: int) -> Tensor:
    if bits not in BITS_KIND:
        raise ValueError(f"block_linear: bits must be 8 (q8_0) or 4 (q4_0), not {bits}")
    weight = BlockWeight(codes, scale, BITS_KIND[bits])
    weight.validate("block_linear")
    if x.shape[-1] != weight.cols:
        raise ValueError(f"block_linear: the input has {x.shape[-1]} features, the weight expects {weight.cols}")
    return F.linear(x.float(), weight.dequantize(torch.float32)).to(x.dtype)


def linear_16bit_reference(x: Tensor, weight: Tensor) -> Tensor:
    if weight.dtype not in (torch.float16, torch.bfloat16) or weight.dim() != 2:
        raise ValueError(f"linear_16bit: the weight must be a 2-D float16 or bfloat16 tensor, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    return F.linear(x.float(), weight.float()).to(x.dtype)


_library.impl("block_linear", block_linear_reference, "CompositeExplicitAutograd")
_library.impl("linear_16bit", linear_16bit_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("tritium::block_linear")
def _block_linear_fake(x, codes, scale, bits):
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


@torch.library.register_fake("tritium::linear_16bit")
def _linear_16bit_fake(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def block_linear(x: Tensor, codes: Tensor, scale: Tensor, bits: int) -> Tensor:
    """``x · Wᵀ`` for a q8_0 (bits 8) or q4_0 (bits 4) block matrix; the CPU kernel is built on first use."""
    if x.device.type == "cpu":
        from .head_cpu import load_head_kernel

        load_head_kernel()
    return torch.ops.tritium.block_linear(x, codes, scale, bits)


def linear_16bit(x: Tensor, weight: Tensor) -> Tensor:
    """``x · Wᵀ`` for an fp16 or bf16 ``weight`` with fp32 arithmetic (2 bytes read a weight)."""
    if x.device.type == "cpu":
        from .head_cpu import load_head_kernel

        load_head_kernel()
    return torch.ops.tritium.linear_16bit(x, weight)
