"""Triton implementation of ``tritium::packed_linear`` for CUDA tensors.

One program computes a ``BLOCK_M × BLOCK_N`` tile of y. It walks the groups; in each
group it loads ``BLOCK_B`` packed bytes per output row, peels off their k digits with
``% radix`` and ``// radix`` (shifts for the 2-bit layout, multiply-shifts for base 3),
multiplies them with the matching activations in fp32 and reduces. Scale, zero point
and shift apply once per group, as in the CPU kernel. Plain broadcasting and sums, no
``tl.dot``: fp32 exactness over speed. Importing this module never fails without
triton; ``AVAILABLE`` says whether the kernel exists.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except Exception:  # triton missing or broken: CUDA tensors fall back to the reference
    AVAILABLE = False

if AVAILABLE:

    @triton.jit
    def _packed_linear_kernel(x_ptr, packed_ptr, scale_ptr, zero_ptr, shift_ptr, y_ptr,
                              M, N, IN, G, BPG, GS, implicit_zero, stride_xm, stride_ym,
                              RADIX: tl.constexpr, K: tl.constexpr, HAS_ZERO: tl.constexpr,
                              HAS_SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_B: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(0, G):
            group_len = tl.minimum(GS, IN - g * GS)
            dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for b0 in range(0, BPG, BLOCK_B):
                offs_b = b0 + tl.arange(0, BLOCK_B)
                mask_b = offs_b < BPG
                byte_ptrs = packed_ptr + (offs_n[:, None] * G + g) * BPG + offs_b[None, :]
                rest = tl.load(byte_ptrs, mask=mask_n[:, None] & mask_b[None, :], other=0).to(tl.int32)
                for i in tl.static_range(K):
                    digit = (rest % RADIX).to(tl.float32)  # [BLOCK_N, BLOCK_B]
                    rest = rest // RADIX
                    pos = offs_b * K + i
                    valid = mask_b & (pos < group_len)
                    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + g * GS + pos[None, :]
                    xv = tl.load(x_ptrs, mask=mask_m[:, None] & valid[None, :], other=0.0).to(tl.float32)
                    dot += tl.sum(xv[:, None, :] * digit[None, :, :], axis=2)
                    xsum += tl.sum(xv, axis=1)
            q = offs_n * G + g
            scale = tl.load(scale_ptr + q, mask=mask_n, other=0.0).to(tl.float32)
            if HAS_ZERO:
                zero = tl.load(zero_ptr + q, mask=mask_n, other=0.0).to(tl.float32)
                acc += scale[None, :] * (dot - zero[None, :] * xsum[:, None])
            else:
                acc += scale[None, :] * (dot - implicit_zero * xsum[:, None])
            if HAS_SHIFT:
                shift = tl.load(shift_ptr + q, mask=mask_n, other=0.0).to(tl.float32)
                acc += shift[None, :] * xsum[:, None]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


def packed_linear_triton(x, packed, scale, zero, shift, radix: int, in_features: int, group_size: int,
                         implicit_zero: float, kernel_layout=None):
    if not AVAILABLE:
        raise RuntimeError("the Triton kernel needs triton: `pip install triton`")
    from ..pack.layouts import digits_per_byte

    if x.shape[-1] != in_features:
        raise ValueError(f"packed_linear: input has {x.shape[-1]} features, the layer expects {in_features}")
    k = digits_per_byte(radix)
    out_features, groups, bytes_per_group = packed.shape
    if groups != -(-in_features // group_size) or bytes_per_group != -(-group_size // k):
        raise ValueError(f"packed_linear: packed codes {tuple(packed.shape)} do not match in_features={in_features}, "
                         f"group_size={group_size}, radix={radix}")
    x2 = x.reshape(-1, in_features).contiguous()
    rows = x2.shape[0]
    y = torch.empty((rows, out_features), device=x.device, dtype=torch.float32)
    block_m = min(16, triton.next_power_of_2(max(rows, 1)))
    block_n, block_b = 32, min(32, triton.next_power_of_2(bytes_per_group))
    grid = (triton.cdiv(rows, block_m), triton.cdiv(out_features, block_n))
    scale = scale.contiguous()
    zero_arg = zero.contiguous() if zero is not None else scale
    shift_arg = shift.contiguous() if shift is not None else scale
    _packed_linear_kernel[grid](
        x2, packed.contiguous(), scale, zero_arg, shift_arg, y,
        rows, out_features, in_features, groups, bytes_per_group, group_size, float(implicit_zero),
        x2.stride(0), y.stride(0),
        RADIX=radix, K=k, HAS_ZERO=zero is not None, HAS_SHIFT=shift is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_B=block_b,
    )
    return y.reshape(*x.shape[:-1], out_features).to(x.dtype)


def register() -> bool:
    """Register the Triton kernel as the CUDA implementation; False when triton is missing."""
    if not AVAILABLE:
        return False
    from .ops import OP_NAME, _library

    _library.impl(OP_NAME, packed_linear_triton, "CUDA")
    return True
