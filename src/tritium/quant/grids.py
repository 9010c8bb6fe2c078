"""Quantization grids as pure functions.

Every quantizer maps a float weight matrix ``[out_features, in_features]`` to a
:class:`QuantizedWeight`: integer codes plus the scales that dequantize them, kept
explicitly so that packing, export and size accounting read the same numbers.

Groups run along the input dimension (the reduction axis of the matmul), as in
GPTQ/AWQ/llama.cpp: ``group=128`` gives every output row one scale per 128 inputs,
``group="channel"`` one scale per output row, ``group="tensor"`` one scale in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Union

import torch
from torch import Tensor

from ..utils.errors import TritiumError

SUPPORTED_BITS = (2, 3, 4, 6, 8)  # 6: Spectra's QuantLM; fake quant and sizing only, no packed layout
TERNARY_VARIANTS = ("absmean", "twn", "dlt")
GroupSpec = Union[int, Literal["channel", "tensor"]]

# TWN's threshold: Δ = 0.7·mean|W| is the closed-form approximation of the optimal
# threshold for Gaussian-like weights (Li et al., 2016).
TWN_THRESHOLD_FACTOR = 0.7
# Keeps all-zero groups from dividing by zero; far below any real weight scale, and
# still representable in fp16 (as a subnormal).
SCALE_EPS = 1e-6


class QuantConfigError(TritiumError, ValueError):
    """A quantization setting that cannot be applied; the message says how to fix it."""


def as_fp16_values(t: Tensor) -> Tensor:
    """Round to the nearest fp16 value, kept in float32: scales are stored in fp16, so the
    fake-quant weights must use exactly the stored values."""
    return t.half().float()


def _check_group(group: GroupSpec) -> None:
    if group in ("channel", "tensor"):
        return
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0:
        raise QuantConfigError(
            f"group={group!r} is not valid: use a positive group size (e.g. 128), 'channel' or 'tensor'"
        )


@dataclass(frozen=True)
class UniformGrid:
    """k-bit integer grid: codes 0..2^k-1, w ≈ scale·(code − zero).

    Symmetric grids fix the zero point at 2^(k-1) and take the scale from max|w|
    (the GPTQ convention), so they need no stored zero point.
    """

    bits: int = 4
    group: GroupSpec = 128
    symmetric: bool = False
    # A group size that does not divide a layer's width is an error unless this is set;
    # then the last group of each row is shorter (GPTQ's convention for ragged widths).
    ragged_groups: bool = False
    kind: str = field(default="uniform", init=False)

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise QuantConfigError(
                f"bits={self.bits} is not supported by the uniform grid: choose one of {SUPPORTED_BITS}, "
                "or use the ternary grid for 1.58 bits"
            )
        _check_group(self.group)

    @property
    def max_code(self) -> int:
        return 2**self.bits - 1

    @property
    def code_bits(self) -> float:
        return float(self.bits)

    def describe(self) -> str:
        return f"W{self.bits}{_group_tag(self.group)}{'-sym' if self.symmetric else ''}"


@dataclass(frozen=True)
class TernaryGrid:
    """Ternary grid, codes in {-1, 0, 1}.

    * ``absmean`` (BitNet b1.58 / TriLM): α = mean|W|, T = clip(round(W/α), −1, 1), w ≈ α·T.
    * ``twn`` (Ternary Weight Networks): Δ = 0.7·mean|W|, T = sign(W)·[|W| > Δ],
      α = mean of |W| over the kept weights (its least-squares optimum for that T).
    * ``dlt`` (TernaryLLM): a shift γ as well, w ≈ α·T + γ; γ starts at the group mean,
      T thresholds W − γ as TWN does, α is the least-squares fit given T and γ.
    """

    variant: str = "absmean"
    group: GroupSpec = "channel"
    ragged_groups: bool = False
    kind: str = field(default="ternary", init=False)

    def __post_init__(self):
        if self.variant not in TERNARY_VARIANTS:
            raise QuantConfigError(
                f"ternary variant {self.variant!r} is unknown: choose one of {TERNARY_VARIANTS}"
            )
        _check_group(self.group)

    @property
    def bits(self) -> float:
        return math.log2(3)

    @property
    def code_bits(self) -> float:
        # Stored 5 trits per byte (3^5 = 243 ≤ 256): 1.6 bits, 99% of log2(3).
        return 1.6

    @property
    def has_shift(self) -> bool:
        return self.variant == "dlt"

    def describe(self) -> str:
        return f"ternary-{self.variant}{_group_tag(self.group)}"


FP16_SMALLEST = 2.0**-24  # the smallest positive fp16 value (a subnormal)


@dataclass(frozen=True)
class SubScaleCode:
    """How a k-quant stores each sub-block's scale (or min): an integer k of ``bits`` bits, signed or not,
    times one fp16 value per super-block (d, or dmin for the mins)."""

    bits: int
    signed: bool = False

    @property
    def low(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def high(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def peak(self) -> int:
        """The integer the super-block's largest-magnitude value maps to: the longer end of the range."""
        return self.low if self.signed else self.high


@dataclass(frozen=True)
class GGUFBlockType:
    """One of llama.cpp's block formats; the codes are integers q in 0..levels−1.

    Simple types: each ``block`` weights of a row share an fp16 scale d and, for the ``_1``
    types, an fp16 min m. ``_0``: w = d·(q − zero) with zero = levels/2 (Q8_0 stores q − 128 as
    int8); ``_1``: w = d·q + m. TQ1_0/TQ2_0 are ``_0`` types with three levels and blocks of 256.
    k-quants (``super_block`` set): each super-block of 256 holds an fp16 d (and dmin) and, per
    sub-block of ``block`` weights, integers sc (and m) coded by ``sub_scale`` (``sub_min``):
    w = (d·sc)·q − dmin·m with a min, w = (d·sc)·(q − zero) without one.
    """

    name: str
    levels: int
    has_min: bool
    block: int = 32
    super_block: int | None = None
    sub_scale: SubScaleCode | None = None
    sub_min: SubScaleCode | None = None
    code_bits: float | None = None  # stored bits per code, where not log2(levels) (TQ1_0's 5 trits a byte)
    # the type llama.cpp's quantize tool stores a tensor in when this type's row multiple does not divide
    # its width (llama-quant.cpp's tensor_type_fallback); None: the type needs only its 32-weight block
    fallback: str | None = None

    @property
    def bits(self) -> int | float:
        """Bits of information per code: k for 2^k levels, log2(3) for the ternary types."""
        exact = self.levels.bit_length() - 1
        return exact if 2**exact == self.levels else math.log2(self.levels)

    @property
    def is_ternary(self) -> bool:
        return self.levels == 3

    @property
    def fixed_zero(self) -> int | None:
        """The implicit zero of the types without a min (levels/2: code 0 is the range's longer end)."""
        return None if self.has_min else self.levels // 2

    @property
    def row_multiple(self) -> int:
        """What must divide a row: the super-block for the k-quants, else the block."""
        return self.super_block or self.block

    @property
    def bits_per_weight(self) -> float:
        """As llama.cpp stores it: the codes plus one fp16 d (and m) per block, or for the k-quants an
        fp16 d (and dmin) per super-block and the coded sc (and m) per sub-block."""
        codes = self.code_bits if self.code_bits is not None else float(self.bits)
        header = 16 * (2 if self.has_min else 1)
        if not self.super_block:
            return codes + header / self.block
        per_sub = self.sub_scale.bits + (self.sub_min.bits if self.sub_min else 0)
        return codes + (header + (self.super_block // self.block) * per_sub) / self.super_block


SIX_BITS, FOUR_BITS = SubScaleCode(6), SubScaleCode(4)
GGUF_BLOCK_TYPES = {t.name: t for t in (
    GGUFBlockType("q4_0", 16, has_min=False),
    GGUFBlockType("q4_1", 16, has_min=True),
    GGUFBlockType("q5_0", 32, has_min=False),
    GGUFBlockType("q5_1", 32, has_min=True),
    GGUFBlockType("q8_0", 256, has_min=False),
    GGUFBlockType("q2_k", 4, has_min=True, block=16, super_block=256, sub_scale=FOUR_BITS, sub_min=FOUR_BITS,
                  fallback="q4_0"),
    GGUFBlockType("q3_k", 8, has_min=False, block=16, super_block=256, sub_scale=SubScaleCode(6, signed=True),
                  fallback="q4_0"),
    GGUFBlockType("q4_k", 16, has_min=True, super_block=256, sub_scale=SIX_BITS, sub_min=SIX_BITS, fallback="q5_0"),
    GGUFBlockType("q5_k", 32, has_min=True, super_block=256, sub_scale=SIX_BITS, sub_min=SIX_BITS, fallback="q5_1"),
    GGUFBlockType("q6_k", 64, has_min=False, block=16, super_block=256, sub_scale=SubScaleCode(8, signed=True),
                  fallback="q8_0"),
    # 240 weights as 5 trits a byte, the last 16 as 4 a byte: 52 bytes for 256 codes
    GGUFBlockType("tq1_0", 3, has_min=False, block=256, code_bits=52 * 8 / 256, fallback="q4_0"),
    GGUFBlockType("tq2_0", 3, has_min=False, block=256, code_bits=2.0, fallback="q4_0"),
)}


@dataclass(frozen=True)
class GGUFBlockGrid:
    """A grid that is exactly a llama.cpp block format, so a method rounds under the format's
    own constraints and GGUF export stores its codes and scales unchanged.

    Codes are uint8 0..levels−1 in the :class:`QuantizedWeight`. The types without a min keep the
    format's fixed zero (levels/2) as ``zero``; the ``_1`` types keep m as ``shift`` (a float,
    not scale × integer, so it cannot be a zero point), giving w = d·q + m in the same float32
    operations as llama.cpp's dequantizer. d and m are fp16 values; d may be negative, as
    llama.cpp's Q4_0/Q5_0 reference makes it (the value of largest magnitude maps to code 0).
    The k-quants' groups are their sub-blocks: ``scale`` holds d·sc and ``shift`` −dmin·m, both
    exact float32 products (not fp16 values), as llama.cpp's dequantizer forms them. TQ1_0/TQ2_0
    are ternary: codes 0..2 around the zero 1, one fp16 d per 256 weights.
    """

    type: str = "q4_0"
    kind: str = field(default="gguf", init=False)

    def __post_init__(self):
        name = self.type.lower() if isinstance(self.type, str) else None
        if name not in GGUF_BLOCK_TYPES:
            raise QuantConfigError(f"GGUF type {self.type!r} is unknown: the GGUF grid takes one of "
                                   f"{', '.join(GGUF_BLOCK_TYPES)}")
        object.__setattr__(self, "type", name)

    @property
    def format(self) -> GGUFBlockType:
        return GGUF_BLOCK_TYPES[self.type]

    @property
    def bits(self) -> int | float:
        return self.format.bits

    @property
    def levels(self) -> int:
        return self.format.levels

    @property
    def group(self) -> int:
        return self.format.block

    @property
    def super_block(self) -> int | None:
        """The k-quants' 256-weight super-block (one fp16 d and dmin); None for the other types."""
        return self.format.super_block

    @property
    def ragged_groups(self) -> bool:
        return False  # every block of the format is full

    @property
    def symmetric(self) -> bool:
        return not self.format.has_min

    @property
    def has_min(self) -> bool:
        return self.format.has_min

    @property
    def is_ternary(self) -> bool:
        return self.format.is_ternary

    @property
    def max_code(self) -> int:
        return self.format.levels - 1

    @property
    def fixed_zero(self) -> int | None:
        """The implicit zero of the types without a min (levels/2); None for those that store a min."""
        return self.format.fixed_zero

    @property
    def code_bits(self) -> float:
        return self.format.code_bits if self.format.code_bits is not None else float(self.bits)

    @property
    def bits_per_weight(self) -> float:
        return self.format.bits_per_weight

    def describe(self) -> str:
        return f"gguf:{self.type}"


Grid = Union[UniformGrid, TernaryGrid, GGUFBlockGrid]
_GRID_CLASSES = {"uniform": UniformGrid, "ternary": TernaryGrid, "gguf": GGUFBlockGrid}
GRID_KINDS = tuple(_GRID_CLASSES)


def _group_tag(group: GroupSpec) -> str:
    return {"channel": "-perchannel", "tensor": "-pertensor"}.get(group, f"g{group}")  # type: ignore[arg-type]


def grid_from_dict(spec: dict) -> Grid:
    """Build a grid from a recipe mapping such as ``{kind: uniform, bits: 2, group: 128}``."""
    spec = dict(spec)
    kind = spec.pop("kind", "uniform")
    if kind not in _GRID_CLASSES:
        raise QuantConfigError(f"grid kind {kind!r} is unknown: use one of {', '.join(GRID_KINDS)}")
    cls = _GRID_CLASSES[kind]
    allowed = {f for f in cls.__dataclass_fields__ if f != "kind"}
    unknown = set(spec) - allowed
    if unknown:
        raise QuantConfigError(f"unknown {kind} grid option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return cls(**spec)


def grids_from_dicts(grid_overrides: dict | None) -> dict:
    """A saved ``grid_overrides`` mapping (linear name -> grid mapping) as grid objects; {} for None."""
    return {name: grid_from_dict(spec) for name, spec in (grid_overrides or {}).items()}


def parse_grid_name(text: str) -> dict:
    """A grid named in one word, as ``tritium quantize --grid`` takes it: ``uniform`` or ``ternary`` (a kind,
    whose other settings come from the recipe and flags) or ``gguf:<type>`` for a llama.cpp block format,
    e.g. ``gguf:q2_k`` → ``{kind: gguf, type: q2_k}``. An unknown GGUF type is refused, naming the known ones."""
    kind, colon, gguf_type = str(text).strip().partition(":")
    known = ", ".join(f"gguf:{name}" for name in GGUF_BLOCK_TYPES)
    if kind == "gguf":
        if not gguf_type:
            raise QuantConfigError(f"--grid gguf needs a block type after a colon: one of {known}")
        if gguf_type.lower() not in GGUF_BLOCK_TYPES:
            raise QuantConfigError(f"--grid {text}: GGUF type {gguf_type!r} is unknown; the GGUF grids are {known}")
        return {"kind": "gguf", "type": gguf_type.lower()}
    if colon or kind not in _GRID_CLASSES:
        raise QuantConfigError(f"--grid {text!r} is not a grid: use uniform, ternary or one of {known}")
    return {"kind": kind}


def grid_to_dict(grid: Grid) -> dict:
    out = {"kind": grid.kind}
    out.update({k: getattr(grid, k) for k in grid.__dataclass_fields__ if k != "kind"})
    return out


def grid_layout(shape: tuple[int, ...], grid: Grid, name: str = "weight") -> "GroupLayout":
    """How ``grid`` splits a weight of ``shape`` into groups; a GGUF block that does not divide
    the width is refused here, with the format's own terms."""
    if isinstance(grid, GGUFBlockGrid) and len(shape) == 2 and shape[1] % grid.format.row_multiple:
        fallback = gguf_fallback_grid(grid, shape[1], name)  # refuses a width no type fits
        raise QuantConfigError(
            f"{name}: GGUF {grid.type.upper()} stores blocks of {grid.format.row_multiple} weights along the input "
            f"dimension, which do not divide its input width {shape[1]}. The nearest type that fits is "
            f"{fallback.type.upper()}, what llama.cpp's quantize falls back to (and tritium's methods do by "
            f"themselves): put this linear on {{kind: gguf, type: {fallback.type}}} (grid_overrides), or skip it")
    return GroupLayout.for_weight(tuple(shape), grid.group, grid.ragged_groups, name=name)


def gguf_fallback_grid(grid: Grid, width: int, name: str = "weight") -> GGUFBlockGrid | None:
    """The grid a linear of input width ``width`` is quantized on instead of the GGUF grid ``grid``,
    when ``grid``'s row multiple does not divide it: the type llama.cpp's quantize tool falls back to
    (Q2_K, Q3_K, TQ1_0, TQ2_0 → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0). None where ``grid``
    fits, or is no GGUF grid. A width that no fallback fits either (32 does not divide it) is refused:
    llama.cpp would store that tensor in F16, which is no quantization grid."""
    if not isinstance(grid, GGUFBlockGrid) or width % grid.format.row_multiple == 0:
        return None
    fallback = grid.format.fallback
    if fallback is not None and width % GGUF_BLOCK_TYPES[fallback].row_multiple == 0:
        return GGUFBlockGrid(fallback)
    also = f", nor do those of {fallback.upper()}, what llama.cpp's quantize falls back to" if fallback else ""
    raise QuantConfigError(
        f"{name}: GGUF {grid.type.upper()} stores blocks of {grid.format.row_multiple} weights along the input "
        f"dimension, which do not divide its input width {width}{also}. No GGUF block type holds a row that 32 "
        "does not divide (llama.cpp keeps such a tensor in F16): skip this linear (it stays in float), or "
        "quantize the model on a uniform grid with ragged_groups=true")


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class GroupLayout:
    """How one weight matrix splits into quantization groups."""

    out_features: int
    in_features: int
    group_size: int  # the length of every group but possibly the last
    per_tensor: bool = False

    @staticmethod
    def for_weight(shape: tuple[int, ...], group: GroupSpec, ragged: bool = False, name: str = "weight"):
        if len(shape) != 2:
            raise QuantConfigError(f"{name}: expected a 2-D weight [out_features, in_features], got shape {tuple(shape)}")
        out_features, in_features = shape
        if out_features == 0 or in_features == 0:
            raise QuantConfigError(f"{name}: cannot quantize an empty weight of shape {tuple(shape)}")
        _check_group(group)
        if group == "tensor":
            return GroupLayout(out_features, in_features, in_features, per_tensor=True)
        if group == "channel":
            return GroupLayout(out_features, in_features, in_features)
        if in_features % group and not ragged:
            divisors = [g for g in (256, 192, 128, 96, 64, 32) if in_features % g == 0]
            raise QuantConfigError(
                f"{name}: group size {group} does not divide the input width {in_features}. "
                f"Choose a group size that divides it ({', '.join(map(str, divisors)) or 'channel'}), "
                "or allow a shorter last group with ragged_groups=true (--ragged-groups)."
            )
        return GroupLayout(out_features, in_features, min(group, in_features))

    @property
    def n_groups(self) -> int:
        return 1 if self.per_tensor else -(-self.in_features // self.group_size)

    @property
    def scale_shape(self) -> tuple[int, int]:
        return (1, 1) if self.per_tensor else (self.out_features, self.n_groups)

    @property
    def _body(self) -> int:
        return (self.in_features // self.group_size) * self.group_size

    def reduce(self, w: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply ``fn`` (which reduces the last axis of ``[rows, n, g]``) group by group.

        Returns statistics of shape :attr:`scale_shape`.
        """
        if self.per_tensor:
            return fn(w.reshape(1, 1, -1)).reshape(1, 1)
        rows, body = w.shape[0], self._body
        parts = []
        if body:
            parts.append(fn(w[:, :body].reshape(rows, -1, self.group_size)))
        if body < self.in_features:
            parts.append(fn(w[:, body:].reshape(rows, 1, -1)))
        return torch.cat(parts, dim=1)

    def expand(self, stats: Tensor) -> Tensor:
        """Broadcast per-group statistics back to the weight's ``[out, in]`` shape."""
        if self.per_tensor:
            return stats.reshape(1, 1).expand(self.out_features, self.in_features)
        sizes = [self.group_size] * (self._body // self.group_size)
        if self._body < self.in_features:
            sizes.append(self.in_features - self._body)
        if len(set(sizes)) == 1:
            return stats.repeat_interleave(sizes[0], dim=1)
        return stats.repeat_interleave(torch.tensor(sizes, device=stats.device), dim=1)


# --------------------------------------------------------------------------- results


@dataclass
class QuantizedWeight:
    """Codes plus the scales that dequantize them.

    uniform: w = scale·(codes − zero);  ternary: w = scale·codes (+ shift for DLT);
    GGUF blocks: w = d·(codes − zero) for the ``_0`` types, d·codes + m (m as ``shift``) for the ``_1`` types.
    ``scale``, ``zero`` and ``shift`` have the layout's ``scale_shape``.
    """

    codes: Tensor
    scale: Tensor
    grid: Grid
    layout: GroupLayout
    zero: Tensor | None = None
    shift: Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize(self.codes, self.scale, self.layout, zero=self.zero, shift=self.shift).to(dtype)

    def storage_bits(self) -> float:
        return storage_bits(self.layout, self.grid)


def storage_bits(layout: GroupLayout, grid: Grid) -> float:
    """Bits to store one weight matrix: codes at the grid's packed width plus fp16 scales.

    Zero points of asymmetric uniform grids are stored as k-bit integers, as GPTQ/AWQ
    checkpoints do; a symmetric grid's zero point is implicit. DLT adds an fp16 shift.
    """
    if isinstance(grid, GGUFBlockGrid):
        return layout.out_features * layout.in_features * grid.bits_per_weight
    n_groups = layout.scale_shape[0] * layout.scale_shape[1]
    bits = layout.out_features * layout.in_features * grid.code_bits + 16 * n_groups
    if isinstance(grid, UniformGrid) and not grid.symmetric:
        bits += grid.bits * n_groups
    if isinstance(grid, TernaryGrid) and grid.has_shift:
        bits += 16 * n_groups
    return bits


def dequantize(codes: Tensor, scale: Tensor, layout: GroupLayout, zero: Tensor | None = None,
               shift: Tensor | None = None) -> Tensor:
    codes = codes.to(scale.dtype)
    if zero is not None:
        codes = codes - layout.expand(zero)
    w = codes * layout.expand(scale)
    if shift is not None:
        w = w + layout.expand(shift)
    return w


# --------------------------------------------------------------------------- uniform


def uniform_params(w: Tensor, grid: UniformGrid, layout: GroupLayout, clip: Tensor | float = 1.0):
    """Scale and zero point per group. ``clip`` (≤ 1) shrinks the range, as AWQ's clipping search does."""
    w = w.float()
    if grid.symmetric:
        absmax = layout.reduce(w, lambda g: g.abs().amax(-1)) * clip
        scale = as_fp16_values((2 * absmax / grid.max_code).clamp_min(SCALE_EPS))
        zero = torch.full_like(scale, float(2 ** (grid.bits - 1)))
    else:
        wmax = layout.reduce(w, lambda g: g.amax(-1)) * clip
        wmin = layout.reduce(w, lambda g: g.amin(-1)) * clip
        scale = as_fp16_values(((wmax - wmin) / grid.max_code).clamp_min(SCALE_EPS))
        zero = torch.clamp(torch.round(-wmin / scale), 0, grid.max_code)
    return scale, zero


def uniform_codes(w: Tensor, scale: Tensor, zero: Tensor, grid: UniformGrid, layout: GroupLayout) -> Tensor:
    q = torch.round(w.float() / layout.expand(scale)) + layout.expand(zero)
    return q.clamp_(0, grid.max_code).to(torch.uint8)


def quantize_uniform(w: Tensor, grid: UniformGrid, layout: GroupLayout | None = None,
                     clip: Tensor | float = 1.0) -> QuantizedWeight:
    layout = layout or GroupLayout.for_weight(tuple(w.shape), grid.group, grid.ragged_groups)
    scale, zero = uniform_params(w, grid, layout, clip)
    codes = uniform_codes(w, scale, zero, grid, layout)
    return QuantizedWeight(codes, scale, grid, layout, zero=zero)


# --------------------------------------------------------------------------- ternary


def ternary_codes_absmean(w: Tensor, alpha: Tensor, layout: GroupLayout) -> Tensor:
    return torch.clamp(torch.round(w / layout.expand(alpha)), -1, 1).to(torch.int8)


def ternary_codes_threshold(w: Tensor, delta: Tensor, layout: GroupLayout) -> Tensor:
    return (torch.sign(w) * (w.abs() > layout.expand(delta))).to(torch.int8)


def least_squares_alpha(w: Tensor, codes: Tensor, layout: GroupLayout) -> Tensor:
    """argmin_α Σ (w − α·T)² over each group = Σ w·T / Σ T²."""
    t = codes.float()
    num = layout.reduce(w * t, lambda g: g.sum(-1))
    den = layout.reduce(t * t, lambda g: g.sum(-1))
    alpha = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    return as_fp16_values(alpha.clamp_min(SCALE_EPS))


def quantize_ternary(w: Tensor, grid: TernaryGrid, layout: GroupLayout | None = None) -> QuantizedWeight:
    layout = layout or GroupLayout.for_weight(tuple(w.shape), grid.group, grid.ragged_groups)
    w = w.float()
    mean_abs = lambda g: g.abs().mean(-1)  # noqa: E731
    if grid.variant == "absmean":
        alpha = as_fp16_values(layout.reduce(w, mean_abs).clamp_min(SCALE_EPS))
        return QuantizedWeight(ternary_codes_absmean(w, alpha, layout), alpha, grid, layout)
    shift = None
    if grid.variant == "dlt":
        shift = as_fp16_values(layout.reduce(w, lambda g: g.mean(-1)))
        w = w - layout.expand(shift)
    delta = TWN_THRESHOLD_FACTOR * layout.reduce(w, mean_abs)
    codes = ternary_codes_threshold(w, delta, layout)
    alpha = least_squares_alpha(w, codes, layout)
    return QuantizedWeight(codes, alpha, grid, layout, shift=shift)


# --------------------------------------------------------------------------- GGUF block formats


def gguf_block_params(w: Tensor, grid: GGUFBlockGrid, layout: GroupLayout, clip: Tensor | float = 1.0
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(scale, zero, shift) per block (per sub-block for the k-quants) by the format's rules; ``clip``
    (≤ 1) shrinks the range as AWQ's clipping search does (for the ternary types it scales d, either way).

    Q4_0/Q5_0: d = peak / −2^(bits−1) with peak the block's value of largest magnitude, so
    peak lands on the code range's longer end exactly; Q8_0: d = max|w| / 127; the ``_1``
    types: m = min, d = (max − m) / (2^bits − 1), d taken after m is rounded so the range
    still reaches max. The codes are then rounded against the stored d and m.
    """
    w = w.float()
    if grid.super_block:
        return _k_quant_params(w, grid, layout, clip)
    if grid.is_ternary:
        d = as_fp16_values((layout.reduce(w, _ternary_scale) * clip).clamp_min(SCALE_EPS))
        return d, torch.full_like(d, float(grid.fixed_zero)), None
    if grid.has_min:
        low = as_fp16_values(layout.reduce(w, lambda g: g.amin(-1)) * clip)
        high = layout.reduce(w, lambda g: g.amax(-1)) * clip
        d = as_fp16_values(((high - low) / grid.max_code).clamp_min(SCALE_EPS))
        return d, None, low
    half = float(grid.fixed_zero)
    if grid.bits == 8:
        d = layout.reduce(w, lambda g: g.abs().amax(-1)) * clip / (half - 1)
    else:
        d = layout.reduce(w, _signed_peak) * clip / -half
    # an all-zero block would divide by zero: give it the smallest scale, its codes all land on the zero
    d = as_fp16_values(torch.where(d.abs() < SCALE_EPS, torch.full_like(d, SCALE_EPS), d))
    return d, torch.full_like(d, half), None


def _signed_peak(x: Tensor) -> Tensor:
    """The value of largest magnitude along the last axis, with its sign."""
    return x.gather(-1, x.abs().argmax(-1, keepdim=True)).squeeze(-1)


def _ternary_scale(x: Tensor) -> Tensor:
    """The least-squares ternary scale along the last axis: keeping the k largest |w| at ±α costs
    Σw² − (Σ top-k |w|)²/k with α their mean, so the best k maximises (Σ top-k |w|)²/k, and nearest
    rounding against that α keeps the same weights. (llama.cpp's reference takes α = max|w|, which
    zeroes most of a block that is not ternary already.)"""
    kept_sum = x.abs().sort(-1, descending=True).values.cumsum(-1)
    counts = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=kept_sum.dtype)
    best = (kept_sum.pow(2) / counts).argmax(-1, keepdim=True)
    return (kept_sum.gather(-1, best) / (best + 1)).squeeze(-1)


# The k-quants' sub-block search tries max_code + t levels across the range for these t, as llama.cpp's
# reference quantizers do, and refits the scale (and min) by least squares for each
K_RANGE_STEPS = [step / 10 for step in range(-10, 11)]


def _k_sub_block_fit(w: Tensor, layout: GroupLayout, max_code: int, clip: Tensor | float) -> tuple[Tensor, Tensor]:
    """Each sub-block's scale s > 0 and min b ≤ 0 (w ≈ s·q + b): the plain [min(w, 0), max w]
    range, or a least-squares refit after rounding with a slightly wider or narrower step,
    whichever leaves the smaller squared error. Shapes ``layout.scale_shape``."""
    rows, n_groups = layout.scale_shape
    x = w.reshape(rows, n_groups, layout.group_size)
    clip = clip.unsqueeze(-1) if isinstance(clip, Tensor) else clip
    low = (x.amin(-1, keepdim=True) * clip).clamp_max(0)
    span = ((x.amax(-1, keepdim=True) * clip - low)).clamp_min(SCALE_EPS)
    best_scale, best_min = span / max_code, low

    def error(scale, minimum):
        q = torch.round((x - minimum) / scale).clamp(0, max_code)
        return (q * scale + minimum - x).pow(2).sum(-1, keepdim=True)

    best_error = error(best_scale, best_min)
    n = float(layout.group_size)
    for step in K_RANGE_STEPS:
        q = torch.round((x - low) * ((max_code + step) / span)).clamp(0, max_code)
        sum_q, sum_qq = q.sum(-1, keepdim=True), (q * q).sum(-1, keepdim=True)
        sum_x, sum_qx = x.sum(-1, keepdim=True), (q * x).sum(-1, keepdim=True)
        det = n * sum_qq - sum_q * sum_q
        scale = (n * sum_qx - sum_q * sum_x) / det.clamp_min(1e-12)
        minimum = (sum_qq * sum_x - sum_q * sum_qx) / det.clamp_min(1e-12)
        # a min above zero is not allowed: then the best scale with the min at zero
        positive = minimum > 0
        scale = torch.where(positive, sum_qx / sum_qq.clamp_min(1e-12), scale)
        minimum = torch.where(positive, torch.zeros_like(minimum), minimum)
        usable = (det > 0) & (scale > SCALE_EPS)
        scale, minimum = torch.where(usable, scale, best_scale), torch.where(usable, minimum, best_min)
        candidate = error(scale, minimum)
        better = candidate < best_error
        best_scale = torch.where(better, scale, best_scale)
        best_min = torch.where(better, minimum, best_min)
        best_error = torch.where(better, candidate, best_error)
    return best_scale.squeeze(-1), best_min.squeeze(-1)


def _k_signed_sub_block_fit(w: Tensor, layout: GroupLayout, half: int, clip: Tensor | float) -> Tensor:
    """Each sub-block's signed scale s (w ≈ s·q, q in −half..half−1): peak/−half, which puts the value
    of largest magnitude on the range's longer end, or a least-squares refit after rounding with a
    slightly wider or narrower step, whichever leaves the smaller squared error. Shape ``layout.scale_shape``."""
    rows, n_groups = layout.scale_shape
    x = w.reshape(rows, n_groups, layout.group_size)
    clip = clip.unsqueeze(-1) if isinstance(clip, Tensor) else clip
    peak = _signed_peak(x).unsqueeze(-1) * clip
    peak = torch.where(peak.abs() < SCALE_EPS, torch.full_like(peak, SCALE_EPS), peak)

    def error(scale):
        q = torch.round(x / scale).clamp(-half, half - 1)
        return (q * scale - x).pow(2).sum(-1, keepdim=True)

    best_scale = peak / -half
    best_error = error(best_scale)
    for step in K_RANGE_STEPS:
        q = torch.round(x * (-(half + step) / peak)).clamp(-half, half - 1)
        sum_qq = (q * q).sum(-1, keepdim=True)
        scale = (q * x).sum(-1, keepdim=True) / sum_qq.clamp_min(1e-12)
        usable = (sum_qq > 0) & (scale.abs() > SCALE_EPS)
        scale = torch.where(usable, scale, best_scale)
        candidate = error(scale)
        better = candidate < best_error
        best_scale = torch.where(better, scale, best_scale)
        best_error = torch.where(better, candidate, best_error)
    return best_scale.squeeze(-1)


def _sub_block_multiples(values: Tensor, code: SubScaleCode, nonzero: bool) -> Tensor:
    """``values`` [rows, super-blocks, sub-blocks] as d·k: per super-block an fp16 d that maps the value
    of largest magnitude onto ``code``'s longer end, k = round(value/d) in ``code``'s range. ``nonzero``:
    k is never 0 (a sub-block scale, which methods divide by). Returns the exact float32 products d·k."""
    d = as_fp16_values(_signed_peak(values).unsqueeze(-1) / code.peak)
    if nonzero or code.signed:  # only the mins may keep d = 0 (every one of them 0, so every m is 0)
        d = torch.where(d.abs() < FP16_SMALLEST, torch.full_like(d, FP16_SMALLEST), d)
    ratio = torch.where(d != 0, values / d, torch.zeros_like(values))
    k = torch.round(ratio).clamp(code.low, code.high)
    if nonzero:  # a scale too small for one step of d still gets one, on its own side
        one = torch.ones_like(k)
        k = torch.where(k == 0, torch.where(ratio < 0, -one, one), k)
    return d * k


def sub_block_factors(values: Tensor, code: SubScaleCode) -> tuple[Tensor, Tensor, Tensor]:
    """Split each row of ``values`` [n, sub-blocks] (each d·k with k an integer in ``code``'s range) into
    one fp16 d per row and the integers k, with d·k each value exactly in float32; the inverse of
    :func:`_sub_block_multiples`, for the encoder and for TesseraQ's DST, which tunes d.

    tritium's own rounding puts the value of largest magnitude on ``code``'s longer end, so that count
    is tried first; rows where it fails (a tiny super-block, or another quantizer's choice) try every
    other count. Any d that reproduces every value exactly dequantizes identically, since llama.cpp
    multiplies d·k. Returns (d [n], k [n, sub-blocks], exact [n]); an all-zero row is d = 0, k = 0.
    """
    values = values.float()
    peak = _signed_peak(values)
    counts = sorted((c for c in range(code.low, code.high + 1) if c), key=lambda c: (c != code.peak, -abs(c)))
    d, k = torch.zeros_like(peak), torch.zeros_like(values)
    exact = peak == 0
    for count in counts:
        todo = (~exact).nonzero().squeeze(1)
        if not todo.numel():
            break
        found = peak[todo] / count
        steps = torch.round(values[todo] / found.unsqueeze(1))
        ok = (as_fp16_values(found) == found) & (steps >= code.low).all(1) & (steps <= code.high).all(1) & (
            (found.unsqueeze(1) * steps) == values[todo]).all(1)
        d[todo[ok]], k[todo[ok]] = found[ok], steps[ok]
        exact[todo[ok]] = True
    return d, k, exact


def _k_quant_params(w: Tensor, grid: GGUFBlockGrid, layout: GroupLayout, clip: Tensor | float
                    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The k-quants: each sub-block's scale (and min) from the sub-block fits, then per super-block
    one fp16 d (and dmin) with the sub-block values its integer multiples (:func:`_sub_block_multiples`).

    Q2_K, Q4_K, Q5_K: scale > 0 and min ≥ 0 (as −b: llama.cpp's mins only lower a sub-block), sc in
    1..15 (Q2_K) or 1..63 (never 0, so no scale divides by zero), m in 0..15 or 0..63; returns
    (d·sc, None, −dmin·m). Q3_K, Q6_K: a signed scale, sc in −32..31 or −128..127 and never 0; returns
    (d·sc, zero, None) with the format's zero 4 or 32.
    """
    rows, n_groups = layout.scale_shape
    per_super = grid.super_block // grid.group
    by_super = lambda t: t.reshape(rows, n_groups // per_super, per_super)  # noqa: E731
    code = grid.format.sub_scale
    if grid.has_min:
        sub_scale, sub_low = _k_sub_block_fit(w, layout, grid.max_code, clip)
        scale = _sub_block_multiples(by_super(sub_scale), code, nonzero=True)
        lowered = _sub_block_multiples(by_super(-sub_low), grid.format.sub_min, nonzero=False)
        return scale.reshape(rows, n_groups), None, (-lowered).reshape(rows, n_groups)
    sub_scale = _k_signed_sub_block_fit(w, layout, grid.fixed_zero, clip)
    scale = _sub_block_multiples(by_super(sub_scale), code, nonzero=True).reshape(rows, n_groups)
    return scale, torch.full_like(scale, float(grid.fixed_zero)), None


def affine_codes(w: Tensor, scale: Tensor, zero: Tensor | None, shift: Tensor | None, max_code: int,
                 layout: GroupLayout) -> Tensor:
    """Nearest codes 0..max_code of w = scale·(code − zero) + shift (either of zero and shift may be absent)."""
    x = w.float()
    if shift is not None:
        x = x - layout.expand(shift)
    x = x / layout.expand(scale)
    if zero is not None:
        x = x + layout.expand(zero)
    return torch.round(x).clamp_(0, max_code).to(torch.uint8)


def quantize_gguf_block(w: Tensor, grid: GGUFBlockGrid, layout: GroupLayout | None = None,
                        clip: Tensor | float = 1.0) -> QuantizedWeight:
    layout = layout or grid_layout(tuple(w.shape), grid)
    scale, zero, shift = gguf_block_params(w, grid, layout, clip)
    codes = affine_codes(w, scale, zero, shift, grid.max_code, layout)
    return QuantizedWeight(codes, scale, grid, layout, zero=zero, shift=shift)


# --------------------------------------------------------------------------- entry points


def quantize_weight(w: Tensor, grid: Grid, name: str = "weight") -> QuantizedWeight:
    """Quantize one weight matrix on ``grid`` by round-to-nearest (or the variant's rule)."""
    layout = grid_layout(tuple(w.shape), grid, name=name)
    if not torch.isfinite(w).all():
        raise QuantConfigError(f"{name}: the weight holds NaN or Inf values; fix the checkpoint before quantizing")
    if isinstance(grid, UniformGrid):
        return quantize_uniform(w, grid, layout)
    if isinstance(grid, GGUFBlockGrid):
        return quantize_gguf_block(w, grid, layout)
    return quantize_ternary(w, grid, layout)


def fake_quantize(w: Tensor, grid: Grid) -> Tensor:
    """Quantize then dequantize, with a straight-through gradient to ``w``.

    The forward value is exactly the dequantized weight; the backward pass treats
    rounding as the identity, the estimator BitNet/TriLM train with.
    """
    dq = quantize_weight(w.detach(), grid).dequantize(w.dtype)
    return straight_through(w, dq)


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return straight_through(x, torch.round(x.detach()))


def straight_through(latent: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward pass, bit for bit; the identity to ``latent`` in the backward.

    Written as value + (latent − latent): x − x is exactly 0 in floating point, while the
    usual latent + (value − latent) can be off by a rounding error, and a checkpoint
    unpacked to γ·T must compute what training computed."""
    return value.detach() + (latent - latent.detach())


# --------------------------------------------------------------------------- pretraining (TriLM, BitNet b1.58)

# Spectra's γ = ε + mean|W|: ε keeps an all-zero matrix (or shard) from dividing by zero.
TRILM_SCALE_EPS = 1e-5


def shard_view(w: Tensor, shards: int, shard_dim: int) -> Tensor:
    """``w`` as ``[shards, -1]`` rows, one per model-parallel shard: along the output
    dimension (``shard_dim=0``, column-parallel linears) or the input one (row-parallel)."""
    out_features, in_features = w.shape
    size = w.shape[shard_dim]
    if shards < 1 or size % shards:
        raise QuantConfigError(f"{shards} shards do not divide dimension {shard_dim} of a {out_features}×{in_features} "
                               "weight: choose a shard count that divides it")
    if shard_dim == 0:
        return w.reshape(shards, -1)
    return w.reshape(out_features, shards, in_features // shards).transpose(0, 1).reshape(shards, -1)


def absmean_ternary(w: Tensor, shards: int = 1, shard_dim: int = 0, eps: float = TRILM_SCALE_EPS
                    ) -> tuple[Tensor, Tensor]:
    """TriLM's ternarization: γ = ε + mean|W| per shard, T = round(clip(W/γ, −1, 1)).

    Returns (codes in {−1, 0, 1} shaped like ``w``, γ of shape ``[shards]``).
    """
    w = w.detach()
    gamma = eps + shard_view(w, shards, shard_dim).abs().mean(dim=1)
    scale = _expand_shards(gamma, w.shape, shards, shard_dim)
    return torch.round(torch.clamp(w / scale, -1, 1)), gamma


def _expand_shards(per_shard: Tensor, shape: torch.Size, shards: int, shard_dim: int) -> Tensor:
    out_features, in_features = shape
    if shard_dim == 0:
        return per_shard.repeat_interleave(out_features // shards).unsqueeze(1)
    return per_shard.repeat_interleave(in_features // shards).unsqueeze(0)


def absmean_ternary_ste(w: Tensor, shards: int = 1, shard_dim: int = 0, eps: float = TRILM_SCALE_EPS) -> Tensor:
    """γ·T in the forward pass, the identity to the latent ``w`` in the backward (TriLM's STE)."""
    codes, gamma = absmean_ternary(w, shards, shard_dim, eps)
    dequantized = codes * _expand_shards(gamma, w.shape, shards, shard_dim)
    return straight_through(w, dequantized)


def absmax_activation_ste(x: Tensor, bits: int = 8, eps: float = 1e-5) -> Tensor:
    """BitNet b1.58's activations: per-token absmax to signed ``bits``-bit integers and back, with an STE."""
    qmax = 2 ** (bits - 1) - 1
    scale = qmax / x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    quantized = torch.clamp(torch.round(x * scale), -qmax - 1, qmax) / scale
    return straight_through(x, quantized)
