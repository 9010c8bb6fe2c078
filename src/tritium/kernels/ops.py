"""``tritium::packed_linear`` (and ``tritium::packed_linear_a8``, its int8-activation form): declared once here,
implemented per device.

    y = x · Wᵀ  with  W[n, j] = scale[n,g]·(digit[n, j] − zero[n,g]) + shift[n,g]

over the grouped digit layout of :mod:`tritium.pack`. For ternary weights (digits
t + 1, zero 1) this is α·(x·Tᵀ) + γ·Σx per group, DLT's shift included.

Implementations, chosen by the dispatcher from the input's device:

* ``CompositeExplicitAutograd``: :func:`packed_linear_reference` (any device; the oracle);
* ``CPU``: the C++ kernel of :mod:`tritium.kernels.cpu`, compiled on first use (avx512, avx2 or portable path,
  picked at run time; the avx2 path rounds activations to int8, see :func:`round_activations_int8`);
* ``CUDA``: the Triton kernel of :mod:`tritium.kernels.triton_kernels`, when triton is installed.
"""

from __future__ import annotations

import torch

from .reference import packed_linear_a8_reference, packed_linear_reference

OP_NAMESPACE = "tritium"
OP_NAME = "packed_linear"
# kernel_layout: an optional device-specific re-layout of `packed` that a kernel may use instead
# (the bit planes the CPU kernel's avx512 and avx2 paths read); implementations that do not know it ignore it.
SCHEMA = ("packed_linear(Tensor x, Tensor packed, Tensor scale, Tensor? zero, Tensor? shift, int radix, "
          "int in_features, int group_size, float implicit_zero, Tensor? kernel_layout=None) -> Tensor")

_library = torch.library.Library(OP_NAMESPACE, "DEF")
_library.define(SCHEMA)
_library.impl(OP_NAME, packed_linear_reference, "CompositeExplicitAutograd")

# y = x·Wᵀ with W in float16 and the arithmetic in float32 (a packed model's LM head, stored in fp16).
HALF_WEIGHT_SCHEMA = "linear_half_weight(Tensor x, Tensor weight) -> Tensor"


def linear_half_weight_reference(x, weight):
    return torch.nn.functional.linear(x.float(), weight.float()).to(x.dtype)


_library.define(HALF_WEIGHT_SCHEMA)
_library.impl("linear_half_weight", linear_half_weight_reference, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{OP_NAMESPACE}::linear_half_weight")
def _linear_half_weight_fake(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake(f"{OP_NAMESPACE}::{OP_NAME}")
def _packed_linear_fake(x, packed, scale, zero, shift, radix, in_features, group_size, implicit_zero,
                        kernel_layout=None):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


# The same product with x quantized per token to int8 codes first (8-bit symmetric, clip_ratio: the grid's
# clipping), as tritium.quant.activations.quantize_activations does; the CPU kernel multiplies the codes with the
# weight digits in integers, reading the layout of tritium.kernels.cpu.a8_layout (kernel_layout). Other devices
# get the reference: fake-quant activations, then the float reference.
A8_OP_NAME = "packed_linear_a8"
A8_SCHEMA = ("packed_linear_a8(Tensor x, Tensor packed, Tensor scale, Tensor? zero, Tensor? shift, int radix, "
             "int in_features, int group_size, float implicit_zero, float clip_ratio, Tensor? kernel_layout=None) "
             "-> Tensor")
_library.define(A8_SCHEMA)
_library.impl(A8_OP_NAME, packed_linear_a8_reference, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{OP_NAMESPACE}::{A8_OP_NAME}")
def _packed_linear_a8_fake(x, packed, scale, zero, shift, radix, in_features, group_size, implicit_zero, clip_ratio,
                           kernel_layout=None):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def op():
    return torch.ops.tritium.packed_linear


def a8_op():
    return torch.ops.tritium.packed_linear_a8
