"""Kernels behind one custom op, ``tritium::packed_linear`` (see :mod:`tritium.kernels.ops`).

Call :func:`packed_linear`: it makes sure the CPU kernel is built (once) before the
dispatcher picks the implementation for the input's device.
"""

from __future__ import annotations

import torch

from . import ops, triton_kernels
from .cpu import (  # noqa: F401
    CpuPathError,
    active_path,
    available_paths,
    bit_planes,
    cpu_kernel_status,
    load_cpu_kernel,
    planes_available,
    set_cpu_path,
)
from .reference import packed_linear_reference, round_activations_int8  # noqa: F401

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
