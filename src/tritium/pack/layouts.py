"""Bit layouts as pure functions: integer codes in, bytes out, and back, exactly.

Every layout here stores small unsigned *digits* (0..radix-1) as the base-``radix``
digits of a byte, least significant first: a byte holds ``digits_per_byte(radix)``
digits, 5 for radix 3 (3^5 = 243 ≤ 256: 1.6 bits per trit), 4 for radix 4, 2 for
radix 16. One rule serves ternary base-3, the 2-bit ternary layout and 2/4-bit
uniform codes, so one decoder (``(byte // radix**i) % radix``) serves every kernel.

Matrices are packed *group by group* along the input dimension: each quantization
group is padded to a whole number of bytes, so a byte never straddles two groups
and a kernel can finish one group's dot product before applying its scale. The
padding digits are zero and are never read back.

:func:`pack_bits` / :func:`unpack_bits` give the dense bit stream (e.g. 8 three-bit
codes in 3 bytes) for formats that need it; the kernels use the digit layouts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.errors import TritiumError


class PackError(TritiumError, ValueError):
    """Codes or packed bytes that cannot be packed or unpacked as asked; the message says why."""


TERNARY_LAYOUTS = {"base3": 3, "2bit": 4}  # layout name -> radix of the stored digit t + 1


def digits_per_byte(radix: int) -> int:
    """How many base-``radix`` digits fit in one byte (radix^k ≤ 256)."""
    if not isinstance(radix, int) or not 2 <= radix <= 256:
        raise PackError(f"radix must be an integer in 2..256, got {radix!r}")
    k = 1
    while radix ** (k + 1) <= 256:
        k += 1
    return k


def packed_length(n: int, radix: int) -> int:
    """Bytes needed for ``n`` digits."""
    return -(-n // digits_per_byte(radix))


def _check_digits(values: Tensor, radix: int, what: str = "codes") -> None:
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
        raise PackError(f"{what} must be an integer tensor, got {values.dtype}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= radix):
        raise PackError(
            f"{what} hold values in [{int(values.min())}, {int(values.max())}], outside 0..{radix - 1} "
            f"that a radix-{radix} layout can store"
        )


def pack_digits(values: Tensor, radix: int) -> Tensor:
    """Pack digits ``0..radix-1`` along the last axis: ``[..., n]`` → uint8 ``[..., ceil(n/k)]``."""
    k = digits_per_byte(radix)
    _check_digits(values, radix)
    n = values.shape[-1] if values.dim() else 0
    if values.dim() == 0:
        raise PackError("cannot pack a 0-d tensor: give at least one axis")
    pad = (-n) % k
    v = values.to(torch.int32)
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    v = v.reshape(*v.shape[:-1], -1, k)
    weights = radix ** torch.arange(k, dtype=torch.int32, device=v.device)
    return (v * weights).sum(-1).to(torch.uint8)


def unpack_digits(packed: Tensor, radix: int, n: int) -> Tensor:
    """Inverse of :func:`pack_digits`: uint8 ``[..., nbytes]`` → uint8 digits ``[..., n]``."""
    k = digits_per_byte(radix)
    if packed.dtype != torch.uint8:
        raise PackError(f"packed bytes must be uint8, got {packed.dtype}")
    if packed.dim() == 0:
        raise PackError("cannot unpack a 0-d tensor")
    if packed.shape[-1] != packed_length(n, radix):
        raise PackError(
            f"{packed.shape[-1]} bytes along the last axis cannot hold exactly {n} radix-{radix} digits "
            f"(that needs {packed_length(n, radix)}): the packed data is truncated or has the wrong shape"
        )
    if radix ** k < 256 and packed.numel() and int(packed.max()) >= radix ** k:
        raise PackError(
            f"packed bytes hold the value {int(packed.max())}, which no {k} radix-{radix} digits make "
            f"(max {radix ** k - 1}): the data is corrupt"
        )
    b = packed.to(torch.int32).unsqueeze(-1)
    powers = radix ** torch.arange(k, dtype=torch.int32, device=packed.device)
    digits = (b // powers) % radix
    return digits.reshape(*packed.shape[:-1], -1)[..., :n].to(torch.uint8)


# --------------------------------------------------------------------------- ternary


def ternary_radix(layout: str) -> int:
    if layout not in TERNARY_LAYOUTS:
        raise PackError(f"ternary layout {layout!r} is unknown: choose one of {sorted(TERNARY_LAYOUTS)}")
    return TERNARY_LAYOUTS[layout]


def pack_ternary(codes: Tensor, layout: str = "base3") -> Tensor:
    """Ternary codes in {-1, 0, 1} → bytes (``base3``: 5 per byte, ``2bit``: 4 per byte)."""
    radix = ternary_radix(layout)
    if codes.dtype.is_floating_point:
        raise PackError(f"ternary codes must be an integer tensor in {{-1, 0, 1}}, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) > 1):
        raise PackError(
            f"ternary codes must lie in {{-1, 0, 1}}, found values in [{int(codes.min())}, {int(codes.max())}]"
        )
    return pack_digits(codes.to(torch.int16) + 1, radix)


def unpack_ternary(packed: Tensor, n: int, layout: str = "base3") -> Tensor:
    """Inverse of :func:`pack_ternary`: int8 codes in {-1, 0, 1}."""
    digits = unpack_digits(packed, ternary_radix(layout), n)
    if digits.numel() and int(digits.max()) > 2:
        raise PackError("packed ternary data holds a digit 3, which no trit makes: the data is corrupt")
    return digits.to(torch.int8) - 1


# --------------------------------------------------------------------------- uniform


def uniform_radix(bits: int) -> int:
    """Kernel layout of k-bit codes: radix 2^k, so 2-bit codes pack 4 per byte and 4-bit 2 per byte.

    3-bit codes take 2 per byte (4 bits each) in this layout; :func:`pack_bits` stores them densely.
    """
    if bits not in (2, 3, 4, 8):
        raise PackError(f"uniform codes of {bits} bits have no layout: use 2, 3, 4 or 8 bits")
    return 2**bits


def pack_uniform(codes: Tensor, bits: int) -> Tensor:
    return pack_digits(codes, uniform_radix(bits))


def unpack_uniform(packed: Tensor, n: int, bits: int) -> Tensor:
    return unpack_digits(packed, uniform_radix(bits), n)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Dense bit stream along the last axis, little-endian: ``[..., n]`` → uint8 ``[..., ceil(n·bits/8)]``."""
    if not 1 <= bits <= 8:
        raise PackError(f"bits must be in 1..8, got {bits}")
    _check_digits(codes, 2**bits)
    if codes.dim() == 0:
        raise PackError("cannot pack a 0-d tensor: give at least one axis")
    n = codes.shape[-1]
    nbytes = -(-n * bits // 8)
    shifts = torch.arange(bits, device=codes.device)
    stream = ((codes.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(*codes.shape[:-1], n * bits)
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - n * bits)).reshape(*codes.shape[:-1], nbytes, 8)
    return (stream << torch.arange(8, device=codes.device)).sum(-1).to(torch.uint8)


def unpack_bits(packed: Tensor, n: int, bits: int) -> Tensor:
    if packed.dtype != torch.uint8:
        raise PackError(f"packed bytes must be uint8, got {packed.dtype}")
    if not 1 <= bits <= 8:
        raise PackError(f"bits must be in 1..8, got {bits}")
    need = -(-n * bits // 8)
    if packed.shape[-1] != need:
        raise PackError(f"{packed.shape[-1]} bytes cannot hold exactly {n} {bits}-bit codes (needs {need})")
    stream = (packed.to(torch.int32).unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1
    stream = stream.reshape(*packed.shape[:-1], -1)[..., : n * bits].reshape(*packed.shape[:-1], n, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(-1).to(torch.uint8)


# --------------------------------------------------------------------------- grouped matrices


def group_sizes(in_features: int, group_size: int) -> list[int]:
    """Lengths of the groups of one row: all ``group_size`` but a possibly shorter last one."""
    if in_features <= 0 or group_size <= 0:
        raise PackError(f"in_features and group_size must be positive, got {in_features} and {group_size}")
    full, rest = divmod(in_features, group_size)
    return [group_size] * full + ([rest] if rest else [])


def pack_grouped(digits: Tensor, group_size: int, radix: int) -> Tensor:
    """Pack a ``[out, in]`` digit matrix group by group → uint8 ``[out, n_groups, bytes_per_group]``.

    Every group, the short last one included, takes ``ceil(group_size / k)`` bytes.
    """
    if digits.dim() != 2:
        raise PackError(f"expected a 2-D code matrix [out, in], got shape {tuple(digits.shape)}")
    out_features, in_features = digits.shape
    sizes = group_sizes(in_features, group_size)
    padded = packed_length(group_size, radix) * digits_per_byte(radix)
    if len(sizes) * padded != in_features:
        # Pad each group to `padded` digits: split, pad, and stack.
        chunks = torch.split(digits, group_size, dim=1)
        digits = torch.stack([torch.nn.functional.pad(c, (0, padded - c.shape[1])) for c in chunks], dim=1)
    else:
        digits = digits.reshape(out_features, len(sizes), group_size)
    return pack_digits(digits, radix)


def unpack_grouped(packed: Tensor, radix: int, in_features: int, group_size: int) -> Tensor:
    """Inverse of :func:`pack_grouped`: uint8 digits ``[out, in]``."""
    sizes = group_sizes(in_features, group_size)
    if packed.dim() != 3 or packed.shape[1] != len(sizes) or packed.shape[2] != packed_length(group_size, radix):
        raise PackError(
            f"packed codes of shape {tuple(packed.shape)} do not match in_features={in_features}, "
            f"group_size={group_size}, radix={radix} (expected [out, {len(sizes)}, "
            f"{packed_length(group_size, radix)}]): the file is truncated, corrupt or from another layout"
        )
    digits = unpack_digits(packed, radix, packed.shape[2] * digits_per_byte(radix))
    if len(sizes) * digits.shape[2] == in_features:
        return digits.reshape(packed.shape[0], in_features)
    return torch.cat([digits[:, i, :s] for i, s in enumerate(sizes)], dim=1)


def code_bits_per_weight(radix: int, group_size: int) -> float:
    """Bits the grouped layout spends per weight on codes alone (padding included)."""
    return 8 * packed_length(group_size, radix) / group_size
