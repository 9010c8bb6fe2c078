"""Encode quantized weights as GGUF tensor blocks, exactly.

llama.cpp's ternary types TQ1_0 (1.6875 bits) and TQ2_0 (2.0625 bits) hold 256-weight
blocks with one fp16 scale each and no shift, so they fit a tensor only when its rows
divide into 256-blocks of constant scale. Everything else goes to an exact fallback:
Q4_0 (w = d·(q − 8)) for ternary without shift, Q4_1 (w = d·q + m) for ternary with a
DLT shift and for ≤4-bit uniform codes, both over 32-weight blocks. F16 is the last resort.

TQ blocks are written by the ``gguf`` package's own quantizer: for a block holding
α·T its absmax is α, so it reproduces T and α exactly. Q4_0/Q4_1 blocks are built here
because their generic quantizers search a min/max range and would not keep the codes.

A model quantized on a GGUF grid (:class:`~tritium.quant.grids.GGUFBlockGrid`: Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, the k-quants Q2_K to Q6_K, TQ1_0 and TQ2_0) is written in that very type:
its codes, fp16 d and fp16 m (for the k-quants d, dmin and the sub-block integers sc, m they
multiply) go into the blocks bit for bit, so llama.cpp's dequantizer gives exactly tritium's
float32 weights. The byte layouts are llama.cpp's block structs (ggml-common.h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from ..utils.errors import TritiumError
from ..quant.grids import GGUFBlockGrid, QuantizedWeight, SubScaleCode, TernaryGrid, UniformGrid, sub_block_factors

TQ_BLOCK = 256
Q4_BLOCK = 32
TERNARY_TYPES = {"tq1_0": GGMLQuantizationType.TQ1_0, "tq2_0": GGMLQuantizationType.TQ2_0}


class GGUFTypeError(TritiumError, ValueError):
    """The requested GGUF type cannot hold a tensor exactly."""


@dataclass(frozen=True)
class TensorChoice:
    qtype: GGMLQuantizationType
    reason: str
    fallback: bool = False  # not the type asked for: the report lists it


def _scale_constant_over(qw: QuantizedWeight, block: int) -> bool:
    """True when every ``block``-wide slice of every row shares one scale (and shift)."""
    layout = qw.layout
    if layout.in_features % block:
        return False
    return layout.per_tensor or layout.n_groups == 1 or (
        layout.group_size % block == 0 and layout.in_features % layout.group_size == 0
    )


def _blocks_align(qw: QuantizedWeight, block: int) -> bool:
    """True when group boundaries fall on ``block`` boundaries, so each block has one scale."""
    layout = qw.layout
    return layout.in_features % block == 0 and (layout.per_tensor or layout.group_size % block == 0)


def choose_tensor_type(qw: QuantizedWeight, preferred: str, allow_fallback: bool = True,
                       name: str = "tensor") -> TensorChoice:
    """The GGUF type that stores ``qw`` exactly: a GGUF grid's own type, else (ternary)
    the ternary type ``preferred``, else an exact fallback."""
    if preferred not in TERNARY_TYPES:
        raise GGUFTypeError(f"unknown GGUF ternary type {preferred!r}: use one of {', '.join(TERNARY_TYPES)}")
    grid = qw.grid
    if isinstance(grid, GGUFBlockGrid):
        return TensorChoice(GGMLQuantizationType[grid.type.upper()], f"quantized on the {grid.describe()} grid")
    shifted = qw.shift is not None and bool(torch.any(qw.shift != 0))
    if isinstance(grid, TernaryGrid) and not shifted and _scale_constant_over(qw, TQ_BLOCK):
        return TensorChoice(TERNARY_TYPES[preferred], "ternary, 256-blocks of constant scale")
    why_not = ("it is not ternary" if not isinstance(grid, TernaryGrid) else
               "it has a DLT shift, which TQ types cannot store" if shifted else
               f"its rows ({qw.layout.in_features} wide, groups of {qw.layout.group_size}) do not split into "
               f"256-weight blocks of constant scale")
    if not allow_fallback:
        raise GGUFTypeError(
            f"{name}: {preferred.upper()} cannot hold this tensor exactly because {why_not}. "
            "Allow the exact fallback types (Q4_0/Q4_1) or requantize with per-channel scales or groups of 256."
        )
    if _blocks_align(qw, Q4_BLOCK):
        if isinstance(grid, TernaryGrid) and not shifted:
            return TensorChoice(GGMLQuantizationType.Q4_0, f"fallback: {why_not}", fallback=True)
        if isinstance(grid, TernaryGrid) or (isinstance(grid, UniformGrid) and grid.bits <= 4):
            return TensorChoice(GGMLQuantizationType.Q4_1, f"fallback: {why_not}", fallback=True)
    return TensorChoice(GGMLQuantizationType.F16, f"fallback: {why_not}, and no 4-bit type aligns with its groups",
                        fallback=True)


def _per_block(stat: torch.Tensor, qw: QuantizedWeight, block: int) -> np.ndarray:
    """Per-group statistics repeated to one value per ``block`` weights: [rows, in/block]."""
    full = qw.layout.expand(stat)  # [out, in]
    return full[:, ::block].numpy().astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[n_blocks, 32] codes 0..15 → [n_blocks, 16] bytes: low nibble weight j, high nibble weight j+16."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _q4_blocks(codes: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    header = [d.reshape(-1, 1).astype(np.float16).view(np.uint8)]
    if m is not None:
        header.append(m.reshape(-1, 1).astype(np.float16).view(np.uint8))
    return np.concatenate([*header, _pack_nibbles(codes.reshape(-1, Q4_BLOCK))], axis=1)


def _fp16_bytes(values: torch.Tensor, part: str, name: str) -> np.ndarray:
    """One fp16 per block as [n_blocks, 2] bytes, refused unless the values are fp16 already (nothing may round)."""
    exact = values.detach().cpu().float().numpy().reshape(-1, 1)
    half = exact.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), exact):
        raise GGUFTypeError(f"{name}: its {part} values are not fp16 values, so the GGUF blocks could not hold them "
                            "exactly; quantize on the GGUF grid again (its scales are fp16 by construction)")
    return half.view(np.uint8)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """[n_blocks, 32] 5-bit codes → [n_blocks, 4] bytes: a little-endian uint32 whose bit j is bit 4 of code j."""
    bits = (q.astype(np.uint32) >> 4) & 1
    words = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return words.astype("<u4").reshape(-1, 1).view(np.uint8)


def _sub_block_factors(values: np.ndarray, code: SubScaleCode, part: str, gtype: str, name: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``values`` [n_super, sub-blocks] as an fp16 d and the integers k with d·k each value
    exactly (:func:`~tritium.quant.grids.sub_block_factors`), or an error naming the tensor."""
    d, k, exact = sub_block_factors(torch.from_numpy(np.ascontiguousarray(values)), code)
    if not bool(exact.all()):
        raise GGUFTypeError(f"{name}: its sub-block {part}s are not {code.bits}-bit multiples of one fp16 value per "
                            f"256 weights, so {gtype.upper()} cannot hold them exactly; quantize on the gguf {gtype} "
                            "grid again")
    return d.numpy(), k.numpy().astype(np.int16)


def _fp16(values: np.ndarray) -> np.ndarray:
    """One fp16 per row as [n, 2] bytes (the values are fp16 values already)."""
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _six_bit_pairs(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins per super-block → llama.cpp's 12 bytes (Q4_K, Q5_K): bytes 0–3 and 4–7
    hold sc/m of sub-blocks 0–3 in their low 6 bits and the top 2 bits of sub-blocks 4–7's; bytes 8–11
    hold the low 4 bits of sub-blocks 4–7's sc (low nibble) and m (high nibble)."""
    low_sc, high_sc, low_m, high_m = sc[:, :4], sc[:, 4:], m[:, :4], m[:, 4:]
    first = low_sc | ((high_sc >> 4) << 6)
    second = low_m | ((high_m >> 4) << 6)
    third = (high_sc & 0x0F) | ((high_m & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=1).astype(np.uint8)


def _sixteen_six_bit_scales(sc: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit scales per super-block (Q3_K, as sc + 32) → 12 bytes: bytes 0–7 hold the low 4 bits
    of sub-blocks 0–7 (low nibble) and 8–15 (high nibble); byte 8 + j%4 holds the top 2 bits of
    sub-block j at bit 2·(j // 4)."""
    u = (sc + 32).astype(np.uint8)
    low = (u[:, :8] & 0x0F) | ((u[:, 8:] & 0x0F) << 4)
    high = (u >> 4).reshape(-1, 4, 4) << (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    return np.concatenate([low, np.bitwise_or.reduce(high, axis=1)], axis=1).astype(np.uint8)


def _crumbs(q: np.ndarray) -> np.ndarray:
    """[n, 256] 2-bit values → [n, 64] bytes: per 128 weights, byte l holds weights l, l+32, l+64, l+96
    at bits 0, 2, 4, 6 (Q2_K, Q3_K's low bits, Q6_K's high bits, TQ2_0)."""
    q = q.reshape(len(q), -1, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(len(q), -1)


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """[n, 256] single bits → [n, 32] bytes: byte l holds weight 32·b + l at bit b (Q3_K's hmask, Q5_K's qh)."""
    planes = bits.reshape(len(bits), 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    return np.bitwise_or.reduce(planes, axis=1)


def _nibble_pairs(q: np.ndarray, span: int) -> np.ndarray:
    """[n, 256] 4-bit values → [n, 128] bytes: per 2·``span`` weights, byte l holds weight l (low nibble) and
    weight l + ``span`` (high nibble); Q4_K/Q5_K pair within 64 weights, Q6_K within 128."""
    q = q.reshape(len(q), -1, 2, span).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(q), -1)


def _trits(q: np.ndarray) -> np.ndarray:
    """[n, 256] codes 0..2 → TQ1_0's 52 bytes: weights 0–159 as 32 bytes of 5 trits (byte l: weights
    l, l+32, ..., most significant first), 160–239 as 16 more (stride 16), 240–255 as 4 bytes of 4
    trits (stride 4); each byte holds ⌈v·256/243⌉ of its base-3 value v, which llama.cpp's
    multiply-and-shift decoder reads back."""
    q = q.astype(np.uint16)

    def pack(part: np.ndarray, digits: int, stride: int) -> np.ndarray:
        part = part.reshape(len(q), digits, stride)
        powers = 3 ** np.arange(4, 4 - digits, -1, dtype=np.uint16)  # 81, 27, ... (4 digits leave the 1s at 0)
        value = (part * powers[None, :, None]).sum(axis=1)
        return ((value * 256 + 242) // 243).astype(np.uint8)

    return np.concatenate([pack(q[:, :160], 5, 32), pack(q[:, 160:240], 5, 16), pack(q[:, 240:], 4, 4)], axis=1)


def _k_quant_blocks(qw: QuantizedWeight, name: str) -> np.ndarray:
    """The k-quants' super-blocks, from the sub-block products d·sc (and −dmin·m) and the codes:

    * Q2_K (84 bytes): 16 bytes sc | m << 4, 64 bytes of 2-bit codes, fp16 d, fp16 dmin;
    * Q3_K (110): 32 bytes of the codes' third bits, 64 of their low 2 bits, 12 of sc + 32, fp16 d;
    * Q4_K (144): fp16 d, fp16 dmin, 12 bytes of 6-bit sc and m, 128 bytes of 4-bit codes;
    * Q5_K (176): as Q4_K, with the codes' fifth bits (32 bytes) before their low 4 bits;
    * Q6_K (210): 128 bytes of the codes' low 4 bits, 64 of their top 2, 16 int8 sc, fp16 d.
    """
    grid: GGUFBlockGrid = qw.grid
    gtype, fmt = grid.type, grid.format
    if grid.has_min and (qw.zero is not None or qw.shift is None):
        raise GGUFTypeError(f"{name}: a {gtype.upper()} weight holds −dmin·m as its shift and no zero point")
    if not grid.has_min and (qw.shift is not None or qw.zero is None or bool((qw.zero != grid.fixed_zero).any())):
        raise GGUFTypeError(f"{name}: a {gtype.upper()} weight needs the fixed zero {grid.fixed_zero} and no shift; "
                            "these codes were made on another grid")
    per_super = grid.super_block // grid.group
    scale = qw.scale.detach().cpu().float().numpy().reshape(-1, per_super)
    d, sc = _sub_block_factors(scale, fmt.sub_scale, "scale", gtype, name)
    q = qw.codes.cpu().numpy().astype(np.uint8).reshape(len(d), grid.super_block)
    if grid.has_min:
        lowered = -qw.shift.detach().cpu().float().numpy().reshape(-1, per_super)
        if (lowered < 0).any():
            raise GGUFTypeError(f"{name}: a sub-block min raises its sub-block, but {gtype.upper()}'s mins only "
                                f"lower it; quantize on the gguf {gtype} grid again")
        dmin, m = _sub_block_factors(lowered, fmt.sub_min, "min", gtype, name)
        sc, m = sc.astype(np.uint8), m.astype(np.uint8)
        if gtype == "q2_k":
            return np.concatenate([sc | (m << 4), _crumbs(q), _fp16(d), _fp16(dmin)], axis=1)
        parts = [_fp16(d), _fp16(dmin), _six_bit_pairs(sc, m)]
        if gtype == "q5_k":
            parts.append(_bit_planes(q >> 4))
        return np.concatenate([*parts, _nibble_pairs(q & 0x0F, 32)], axis=1)
    if gtype == "q3_k":
        return np.concatenate([_bit_planes(q >> 2), _crumbs(q & 0x03), _sixteen_six_bit_scales(sc), _fp16(d)], axis=1)
    # q6_k
    return np.concatenate([_nibble_pairs(q & 0x0F, 64), _crumbs(q >> 4), sc.astype(np.int8).view(np.uint8), _fp16(d)],
                          axis=1)


def _ternary_blocks(qw: QuantizedWeight, name: str) -> np.ndarray:
    """TQ1_0 (54 bytes: 52 of trits, fp16 d) or TQ2_0 (66 bytes: 64 of 2-bit codes, fp16 d) blocks."""
    grid: GGUFBlockGrid = qw.grid
    if qw.shift is not None or qw.zero is None or bool((qw.zero != grid.fixed_zero).any()):
        raise GGUFTypeError(f"{name}: a {grid.type.upper()} weight needs the fixed zero 1 and no shift")
    q = qw.codes.cpu().numpy().astype(np.uint8).reshape(-1, grid.group)
    codes = _trits(q) if grid.type == "tq1_0" else _crumbs(q)
    return np.concatenate([codes, _fp16_bytes(qw.scale, "scale (d)", name)], axis=1)


def _gguf_grid_blocks(qw: QuantizedWeight, qtype: GGMLQuantizationType, name: str) -> np.ndarray:
    """The blocks of a weight quantized on a GGUF grid, in its own type: codes, d and m unchanged."""
    grid: GGUFBlockGrid = qw.grid
    if qtype.name.lower() != grid.type:
        raise GGUFTypeError(f"{name}: a weight on the {grid.describe()} grid is stored as {grid.type.upper()}, "
                            f"not {qtype.name}")
    if grid.super_block:
        return _k_quant_blocks(qw, name)
    if grid.is_ternary:
        return _ternary_blocks(qw, name)
    if grid.has_min and (qw.zero is not None or qw.shift is None):
        raise GGUFTypeError(f"{name}: a {grid.type.upper()} weight holds its min as the shift and no zero point")
    if not grid.has_min and (qw.shift is not None or qw.zero is None or bool((qw.zero != grid.fixed_zero).any())):
        raise GGUFTypeError(f"{name}: a {grid.type.upper()} weight needs the fixed zero {grid.fixed_zero} and no "
                            "shift; these codes were made on another grid")
    q = qw.codes.cpu().numpy().astype(np.uint8).reshape(-1, grid.group)
    parts = [_fp16_bytes(qw.scale, "scale (d)", name)]
    if grid.has_min:
        parts.append(_fp16_bytes(qw.shift, "min (m)", name))
    if grid.bits == 8:  # Q8_0 stores q − 128 as int8
        parts.append((q.astype(np.int16) - grid.fixed_zero).astype(np.int8).view(np.uint8))
    else:
        if grid.bits == 5:
            parts.append(_fifth_bits(q))
        parts.append(_pack_nibbles(q & 0x0F))
    return np.concatenate(parts, axis=1)


def encode_tensor(qw: QuantizedWeight, qtype: GGMLQuantizationType, name: str = "tensor") -> np.ndarray:
    """Raw GGUF bytes of ``qw`` as ``qtype``, shaped [out_features, bytes_per_row]."""
    out, width = qw.layout.out_features, qw.layout.in_features
    if isinstance(qw.grid, GGUFBlockGrid):
        raw = _gguf_grid_blocks(qw, qtype, name)
    elif qtype in (GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0):
        raw = quants.quantize(qw.dequantize(torch.float32).numpy(), qtype)
    elif qtype == GGMLQuantizationType.F16:
        return qw.dequantize(torch.float32).numpy().astype(np.float16).view(np.uint8)
    elif isinstance(qw.grid, TernaryGrid):
        d = _per_block(qw.scale, qw, Q4_BLOCK)
        t = qw.codes.numpy().astype(np.int16)
        if qtype == GGMLQuantizationType.Q4_0:  # w = d·(q − 8) with q = T + 8
            raw = _q4_blocks((t + 8).astype(np.uint8), d, None)
        else:  # Q4_1: w = d·q + m with q = T + 1, m = γ − α
            m = _per_block(qw.shift, qw, Q4_BLOCK) - d if qw.shift is not None else -d
            raw = _q4_blocks((t + 1).astype(np.uint8), d, m)
    else:  # uniform: w = s·(c − z) = s·c + (−s·z)
        d = _per_block(qw.scale, qw, Q4_BLOCK)
        m = -d * _per_block(qw.zero, qw, Q4_BLOCK)
        raw = _q4_blocks(qw.codes.numpy().astype(np.uint8), d, m)
    block, type_size = GGML_QUANT_SIZES[qtype]
    return raw.reshape(out, width // block * type_size)


def decode_tensor(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Dequantize raw GGUF bytes with the ``gguf`` package (llama.cpp's reference layouts)."""
    return quants.dequantize(raw, qtype)


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return 8 * type_size / block
