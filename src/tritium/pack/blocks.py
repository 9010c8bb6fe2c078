"""Block-quantized matrices for the embedding and the LM head: GGUF's q8_0 and q4_0 layouts.

Each row is cut into blocks of 32 values that share one fp16 scale ``d``:

* ``q8_0``: 32 int8 codes q ∈ [−127, 127], w = d·q, with d = max|w| / 127 (8.5 bits a weight);
* ``q4_0``: 32 4-bit codes q ∈ [0, 15] two to a byte, w = d·(q − 8), symmetric (no zero point): d is the
  block's largest-magnitude value divided by −8, so that value is exactly −8·d (4.5 bits a weight).
  Byte j of a block holds value j in its low nibble and value j + 16 in its high nibble, as GGUF does.

Rows are stored as ``codes`` [rows, blocks, 32] int8 (q8_0) or [rows, blocks, 16] uint8 (q4_0) and
``scale`` [rows, blocks] fp16. ``f16`` names the unquantized head (today's fp16 storage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .layouts import PackError

BLOCK_SIZE = 32
HEAD_TYPES = ("f16", "q8_0", "q4_0")
BLOCK_TYPES = ("q8_0", "q4_0")
# Bytes of codes per block and bits per weight, the fp16 scale included.
CODE_BYTES = {"q8_0": BLOCK_SIZE, "q4_0": BLOCK_SIZE // 2}
BITS_PER_WEIGHT = {"f16": 16.0, "q8_0": (8 * BLOCK_SIZE + 16) / BLOCK_SIZE, "q4_0": (4 * BLOCK_SIZE + 16) / BLOCK_SIZE}
# The integer the kernel op takes for each type.
KIND_BITS = {"q8_0": 8, "q4_0": 4}


class HeadTypeError(PackError):
    """A head type that is unknown, or that this embedding or LM head cannot take; the message says why."""


def check_head_type(head_type: str) -> str:
    if head_type not in HEAD_TYPES:
        raise HeadTypeError(f"head type {head_type!r} is unknown: choose one of {', '.join(HEAD_TYPES)}")
    return head_type


def check_block_width(width: int, head_type: str, name: str = "the head") -> None:
    """Raise unless rows of ``width`` values cut into whole blocks of 32."""
    if head_type in BLOCK_TYPES and width % BLOCK_SIZE:
        raise HeadTypeError(f"{name}: --head-type {head_type} cuts each row into blocks of {BLOCK_SIZE} values, but "
                            f"its rows hold {width} (not a multiple of {BLOCK_SIZE}); keep --head-type f16 for this "
                            "model")


@dataclass
class BlockWeight:
    """A [rows, cols] matrix in q8_0 or q4_0 blocks."""

    codes: Tensor  # int8 [rows, blocks, 32] (q8_0) or uint8 [rows, blocks, 16] (q4_0)
    scale: Tensor  # fp16 [rows, blocks]
    kind: str

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def cols(self) -> int:
        return self.codes.shape[1] * BLOCK_SIZE

    def validate(self, name: str = "weight") -> None:
        if self.kind not in BLOCK_TYPES:
            raise HeadTypeError(f"{name}: block type {self.kind!r} is unknown: choose one of {BLOCK_TYPES}")
        want = torch.int8 if self.kind == "q8_0" else torch.uint8
        if self.codes.dtype != want or self.codes.dim() != 3 or self.codes.shape[2] != CODE_BYTES[self.kind]:
            raise HeadTypeError(f"{name}: {self.kind} codes must be {want} [rows, blocks, {CODE_BYTES[self.kind]}], "
                                f"got {self.codes.dtype} {tuple(self.codes.shape)}")
        if self.scale.dtype != torch.float16 or tuple(self.scale.shape) != tuple(self.codes.shape[:2]):
            raise HeadTypeError(f"{name}: the scales must be float16 {tuple(self.codes.shape[:2])}, got "
                                f"{self.scale.dtype} {tuple(self.scale.shape)}")

    def dequantize_rows(self, index: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float rows ``index`` (any shape of row ids; all rows for None), shape [*index.shape, cols].

        Only the rows asked for are decoded: an embedding lookup reads a few rows of a large table.
        """
        codes = self.codes if index is None else self.codes[index]
        scale = self.scale if index is None else self.scale[index]
        return (block_values(codes, self.kind) * scale.float()[..., None]).flatten(-2).to(dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.dequantize_rows(None, dtype)


def block_values(codes: Tensor, kind: str) -> Tensor:
    """The integer value of every weight in ``codes`` [..., blocks, bytes] as float [..., blocks, 32]."""
    if kind == "q8_0":
        return codes.float()
    low, high = (codes & 0x0F).float(), (codes >> 4).float()
    return torch.cat([low, high], dim=-1) - 8.0


def quantize_blocks(weight: Tensor, kind: str, name: str = "weight") -> BlockWeight:
    """``weight`` [rows, cols] in ``kind`` blocks; the codes are computed against the fp16-rounded scale,
    so the stored scale is the one they were chosen for."""
    if kind not in BLOCK_TYPES:
        raise HeadTypeError(f"{name}: block type {kind!r} is unknown: choose one of {BLOCK_TYPES}")
    if weight.dim() != 2:
        raise HeadTypeError(f"{name}: block quantization takes a 2-D matrix, got shape {tuple(weight.shape)}")
    check_block_width(weight.shape[1], kind, name)
    w = weight.detach().float().reshape(weight.shape[0], -1, BLOCK_SIZE)
    if not bool(torch.isfinite(w).all()):
        raise HeadTypeError(f"{name}: the matrix holds inf or NaN values, which no block scale can represent")
    if kind == "q8_0":
        scale = (w.abs().amax(-1) / 127.0).half()
        inverse = torch.where(scale > 0, 1.0 / scale.float(), torch.zeros_like(scale, dtype=torch.float32))
        codes = torch.round(w * inverse[..., None]).clamp_(-127, 127).to(torch.int8)
        return BlockWeight(codes, scale, kind)
    # q4_0: the value of largest magnitude, with its sign, maps to −8 exactly.
    position = w.abs().argmax(-1, keepdim=True)
    extreme = torch.gather(w, -1, position)[..., 0]
    scale = (extreme / -8.0).half()
    inverse = torch.where(scale != 0, 1.0 / scale.float(), torch.zeros_like(scale, dtype=torch.float32))
    q = torch.round(w * inverse[..., None]).clamp_(-8, 7).to(torch.int16) + 8
    q = q.to(torch.uint8)
    codes = q[..., : BLOCK_SIZE // 2] | (q[..., BLOCK_SIZE // 2:] << 4)
    return BlockWeight(codes, scale, kind)
