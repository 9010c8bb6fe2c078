"""Read a GGUF file's layout safely, and seal the GGUF files tritium writes with a sha256.

``gguf.GGUFReader`` trusts the header: a truncated file fails deep in numpy ("cannot reshape
array of size ... into shape ...") without naming the file. :func:`read_gguf_layout` parses
the header itself and checks every tensor's offset and size against the file's length
*before* anything is reshaped, so a damaged file is refused with its name and what is wrong
("truncated" or "corrupt").

GGUF has no checksum of its own. The files tritium writes carry two extra keys:
``tritium.format`` (a marker) and ``tritium.sha256``, the sha256 of the whole file except
the 64 hex digits of that value. :func:`check_gguf` verifies it, so any flipped byte of a
tritium GGUF (header, vocabulary or tensor data) is refused; llama.cpp ignores both keys.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .integrity import DamagedFileError, digest_file

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
CHECKSUM_KEY = "tritium.sha256"
MARKER_KEY = "tritium.format"
MARKER_VALUE = "tritium-gguf-1"
CHECKSUM_PLACEHOLDER = "0" * 64

# GGUF value types: id -> (struct code, size); 8 = string, 9 = array
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
            10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFField:
    type: int
    value: object  # a number or a string; None for an array
    value_offset: int  # where the value's bytes start (a string's text, after its length)
    value_size: int
    count: int = 1  # array elements


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    qtype: int
    type_name: str
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / max(self.n_elements, 1)


@dataclass
class GGUFLayout:
    path: Path
    version: int
    file_bytes: int
    alignment: int
    data_start: int
    fields: dict[str, GGUFField] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)

    @property
    def written_by_tritium(self) -> bool:
        return MARKER_KEY in self.fields or CHECKSUM_KEY in self.fields


class _Cursor:
    def __init__(self, buf, path: Path, order: str):
        self.buf, self.path, self.order, self.pos, self.size = buf, path, order, 0, len(buf)

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise DamagedFileError(f"{self.path} is truncated or corrupt: {what} at byte {self.pos} needs {n} bytes, "
                                   f"the file has {self.size}")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, code: str, size: int, what: str):
        return struct.unpack_from(self.order + code, self.buf, self.take(size, what))[0]

    def string(self, what: str) -> tuple[str, int, int]:
        n = self.scalar("Q", 8, f"the length of {what}")
        start = self.take(n, what)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace"), start, n


def _read_value(cur: _Cursor, vtype: int, key: str) -> GGUFField:
    if vtype in _SCALARS:
        code, size = _SCALARS[vtype]
        start = cur.pos
        return GGUFField(vtype, cur.scalar(code, size, f"the value of {key}"), start, size)
    if vtype == _STRING:
        text, start, n = cur.string(f"the value of {key}")
        return GGUFField(vtype, text, start, n)
    if vtype == _ARRAY:
        etype = cur.scalar("I", 4, f"the element type of {key}")
        count = cur.scalar("Q", 8, f"the length of {key}")
        start = cur.pos
        if etype in _SCALARS:
            cur.take(count * _SCALARS[etype][1], f"the values of {key}")
        elif etype == _STRING:
            if count * 8 > cur.size - cur.pos:
                raise DamagedFileError(f"{cur.path} is truncated or corrupt: {key} claims {count} strings, more than "
                                       "the file can hold")
            for _ in range(count):
                cur.take(cur.scalar("Q", 8, f"a string length in {key}"), f"a string of {key}")
        else:  # nested arrays are legal GGUF but no writer tritium reads makes them
            raise DamagedFileError(f"{cur.path} is corrupt: {key} is an array of unknown type {etype}")
        return GGUFField(vtype, None, start, cur.pos - start, count)
    raise DamagedFileError(f"{cur.path} is corrupt: key {key!r} has unknown value type {vtype}")


def read_gguf_layout(path: str | os.PathLike) -> GGUFLayout:
    """Parse ``path``'s header and check that every tensor lies inside the file, in bounds and apart.

    Raises :class:`DamagedFileError` naming the file and saying "truncated" or "corrupt"."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise DamagedFileError(f"{path} is truncated: {size} bytes, too short for a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise DamagedFileError(f"{path} is corrupt or not a GGUF file: it does not start with 'GGUF'")
        (version,) = struct.unpack_from("<I", buf, 4)
        order = "<"
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            order = ">"
            (version,) = struct.unpack_from(">I", buf, 4)
        if version not in SUPPORTED_VERSIONS:
            raise DamagedFileError(f"{path} is corrupt or of an unsupported GGUF version ({version}; this reads "
                                   f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        cur = _Cursor(buf, path, order)
        cur.pos = 8
        n_tensors = cur.scalar("Q", 8, "the tensor count")
        n_kv = cur.scalar("Q", 8, "the key count")
        if n_kv * 13 > size or n_tensors * 24 > size:  # each key and tensor info takes at least that many bytes
            raise DamagedFileError(f"{path} is truncated or corrupt: its header claims {n_kv} keys and {n_tensors} "
                                   f"tensors, more than its {size} bytes can hold")
        layout = GGUFLayout(path, version, size, DEFAULT_ALIGNMENT, 0)
        for _ in range(n_kv):
            key, _, _ = cur.string("a key name")
            vtype = cur.scalar("I", 4, f"the type of {key}")
            layout.fields[key] = _read_value(cur, vtype, key)
        infos = []
        for _ in range(n_tensors):
            name, _, _ = cur.string("a tensor name")
            n_dims = cur.scalar("I", 4, f"the rank of tensor {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise DamagedFileError(f"{path} is corrupt: tensor {name} has {n_dims} dimensions")
            shape = tuple(cur.scalar("Q", 8, f"a dimension of tensor {name}") for _ in range(n_dims))
            qtype = cur.scalar("I", 4, f"the type of tensor {name}")
            offset = cur.scalar("Q", 8, f"the offset of tensor {name}")
            infos.append((name, shape, qtype, offset))
        header_end = cur.pos
    alignment = layout.fields.get("general.alignment")
    if alignment is not None:
        if alignment.type != 4 or alignment.value == 0 or alignment.value & (alignment.value - 1):
            raise DamagedFileError(f"{path} is corrupt: general.alignment is {alignment.value!r}, not a power of two")
        layout.alignment = alignment.value
    layout.data_start = -(-header_end // layout.alignment) * layout.alignment
    names = set()
    for name, shape, qtype, offset in infos:
        try:
            gtype = GGMLQuantizationType(qtype)
            block, type_size = GGML_QUANT_SIZES[gtype]
        except (ValueError, KeyError):
            raise DamagedFileError(f"{path} is corrupt: tensor {name} has unknown type {qtype}") from None
        n = 1
        for d in shape:
            n *= d
        if n == 0 or shape[0] % block:
            raise DamagedFileError(f"{path} is corrupt: tensor {name} has shape {shape}, which {gtype.name} blocks of "
                                   f"{block} cannot tile")
        if offset % layout.alignment or name in names:
            raise DamagedFileError(f"{path} is corrupt: tensor {name} is misaligned or listed twice")
        names.add(name)
        layout.tensors.append(GGUFTensor(name, shape, qtype, gtype.name, layout.data_start + offset,
                                         n // block * type_size))
    _check_tensor_bounds(layout)
    return layout


def _check_tensor_bounds(layout: GGUFLayout) -> None:
    ordered = sorted(layout.tensors, key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.offset + before.nbytes > after.offset:
            raise DamagedFileError(f"{layout.path} is corrupt: tensors {before.name} and {after.name} overlap")
    if ordered:
        last = ordered[-1]
        end = last.offset + last.nbytes
        if end > layout.file_bytes:
            # Tensors laid end to end (as writers do) and a short file: it was cut off.
            padded = all(-(-(b.offset + b.nbytes) // layout.alignment) * layout.alignment == a.offset
                         for b, a in zip(ordered, ordered[1:]))
            state = "truncated" if padded else "corrupt (a tensor offset or shape is wrong)"
            raise DamagedFileError(f"{layout.path} is {state}: tensor {last.name} ({last.type_name}, shape "
                                   f"{list(last.shape)}) needs bytes up to {end}, but the file has only "
                                   f"{layout.file_bytes}")


def gguf_checksum(path: str | os.PathLike, layout: GGUFLayout) -> str:
    """sha256 of the file without the 64 digits of its ``tritium.sha256`` value."""
    stored = layout.fields[CHECKSUM_KEY]
    sha, _ = digest_file(path, skip=(stored.value_offset, stored.value_offset + stored.value_size))
    return sha


def seal_gguf(path: str | os.PathLike) -> str:
    """Write the file's sha256 into its ``tritium.sha256`` placeholder (added with the value
    :data:`CHECKSUM_PLACEHOLDER` before writing), in place; returns it."""
    layout = read_gguf_layout(path)
    stored = layout.fields.get(CHECKSUM_KEY)
    if stored is None or stored.value != CHECKSUM_PLACEHOLDER:
        raise ValueError(f"{path} has no {CHECKSUM_KEY} placeholder to fill")
    digest = gguf_checksum(path, layout)
    with open(path, "r+b") as f:
        f.seek(stored.value_offset)
        f.write(digest.encode("ascii"))
        f.flush()
        os.fsync(f.fileno())
    return digest


def check_gguf(path: str | os.PathLike) -> GGUFLayout:
    """:func:`read_gguf_layout`, and for a file tritium wrote, its sha256 too.

    Files from other writers have no checksum: their layout is checked, their bytes cannot be."""
    layout = read_gguf_layout(path)
    if not layout.written_by_tritium:
        return layout
    stored = layout.fields.get(CHECKSUM_KEY)
    if stored is None or stored.type != _STRING or stored.value_size != 64:
        raise DamagedFileError(f"{path} is corrupt: tritium wrote it (key {MARKER_KEY}) but its {CHECKSUM_KEY} is "
                               "missing or malformed; export it again with `tritium export`")
    if gguf_checksum(path, layout) != stored.value:
        raise DamagedFileError(f"{path} is corrupt: its bytes do not match the sha256 tritium recorded in it when "
                               "writing (a byte changed, or the file was cut and padded); export it again with "
                               "`tritium export`")
    return layout
