"""Kernels behind the custom ops ``tritium::packed_linear`` and ``tritium::packed_linear_a8`` (int8 activations)
(see :mod:`tritium.kernels.ops`).

Call :func:`packed_linear` (or :func:`packed_linear_a8`): it makes sure the CPU kernel is built (once) before the
dispatcher picks the implementation for the input's device.
"""

from __future__ import annotations

import torch

from . import ops, triton_kernels
from .a8 import activation_kernel_reason, int8_activation_reason  # noqa: F401
from .cpu import (  # noqa: F401
    CpuPathError,
    a8_kernel,
    a8_layout,
    active_path,
    available_paths,
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    planes_available,
    set_cpu_path,
)
from .reference import (  # noqa: F401
    packed_linear_a8_reference,
    packed_linear_reference,
    round_activations_int8,
)

TRITON_REGISTERED = triton_kernels.register()


def linear_half_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x · weightᵀ`` for a float16 ``weight`` with float32 arithmetic (the CPU kernel reads 2 bytes a weight)."""
    if x.device.type == "cpu":
        load_cpu_kernel()
    return torch.ops.tritium.linear_half_weight(x, weight)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                  shift: torch.Tensor | None, radix: int, in_features: int, group_size: int,
                  implicit_zero: float, kernel_layout: torch.Tensor | None = None) -> torch.Tensor:
    if x.device.type == "cpu":
        load_cpu_kernel()
    return ops.op()(x, packed, scale, zero, shift, radix, in_features, group_size, float(implicit_zero),
                    kernel_layout)


def packed_linear_a8(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                     shift: torch.Tensor | None, radix: int, in_features: int, group_size: int, implicit_zero: float,
                     clip_ratio: float = 1.0, kernel_layout: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`packed_linear` with ``x`` quantized per token to int8 first (8-bit symmetric, ``clip_ratio``), as
    :func:`tritium.quant.activations.quantize_activations` does; the CPU kernel multiplies the codes in integers.

    The CPU kernel reads :func:`tritium.kernels.cpu.a8_layout`; without ``kernel_layout`` it is built here, on
    every call (a packed layer caches it)."""
    if x.device.type == "cpu" and load_cpu_kernel() and kernel_layout is None:
        kernel_layout = a8_layout(packed, radix, in_features, group_size)
    return ops.a8_op()(x, packed, scale, zero, shift, radix, in_features, group_size, float(implicit_zero),
                       float(clip_ratio), kernel_layout)
