"""Integrity of the model folders tritium writes: a manifest of every file's sha256, checked on load.

Every folder tritium saves (fake-quant, packed, Spectra) ends with ``tritium_manifest.json``,
written last and atomically. It records each file's size and sha256 and, for every
safetensors file, the byte range and CRC-32 of each tensor in it, whatever the tensor is
(codes, scales, embeddings, norms, an LM head), so a damaged file is not only refused but
the damaged tensors are named. Loading checks the whole folder in one read of each file
(hashlib and zlib at memory speed); ``tritium.models.load_model`` hashes the large weight files
in a thread beside the load that reads them and waits for it before returning, so the check
costs little wall time and is never skipped. A folder with a manifest that does not match is
always refused. A folder without one (written before manifests) loads with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TritiumError

MANIFEST_FILE = "tritium_manifest.json"
MANIFEST_FORMAT = "tritium-manifest"
MANIFEST_VERSION = 1
READ_CHUNK = 16 << 20  # large reads: hashing runs at memory speed, not at syscall speed
# verify_folder(background=True) hashes files larger than this in a thread, beside the load that reads them
BACKGROUND_BYTES = 8 << 20
# Files a loader reads (weights, configs, tokenizers, chat templates, remote code): one that the
# manifest does not list was added after saving and is refused. Other files (a README) are ignored.
LOADER_INPUTS = re.compile(r".*\.(safetensors|bin|pt|pth|json|gguf|model|txt|jinja|py|tiktoken)$")
# a safetensors file cut short or damaged, whoever wrote it
REFETCH = "the file was cut short or damaged: copy, download or save the model again"
REEXPORT = "re-export the model with tritium (`tritium quantize`, `tritium pack` or the script that saved it)"


class DamagedFileError(TritiumError, ValueError):
    """A file tritium wrote no longer holds the bytes it held when written (damaged, truncated, edited)."""


class InconsistentFolderError(TritiumError, ValueError):
    """A model folder's parts disagree (its config.json and its tensors); it would load wrongly."""


class UnsealedFolderWarning(UserWarning):
    """A tritium folder has no manifest (written before manifests existed), so its files cannot be checked."""


@dataclass
class FolderCheck:
    folder: Path
    files: dict[str, int] = field(default_factory=dict)  # checked file -> bytes
    _thread: threading.Thread | None = None  # hashing the large files, when the caller let it run in the background
    _damage: list = field(default_factory=list)

    def join(self) -> DamagedFileError | None:
        """Wait for the background hashing; the damage it found, if any."""
        if self._thread is not None:
            self._thread.join()
        return self._damage[0] if self._damage else None

    def wait(self) -> None:
        """Wait for the background hashing and raise what it found: the check is never skipped."""
        damage = self.join()
        if damage is not None:
            raise damage


# ----------------------------------------------------------------------------- safetensors layout


def safetensors_tensor_ranges(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Each tensor's absolute byte range [start, end) in a safetensors file, from its header.

    Raises :class:`DamagedFileError` (naming the file) when the header cannot be read or points
    outside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedFileError(f"{path} is truncated: {size} bytes, too short for a safetensors header; {REFETCH}")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise DamagedFileError(f"{path} is truncated or corrupt: its header claims {header_len} bytes, the file "
                                   f"has {size}; {REFETCH}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is corrupt: its safetensors header is not valid JSON ({err}); {REFETCH}") \
            from err
    if not isinstance(header, dict):
        raise DamagedFileError(f"{path} is corrupt: its safetensors header is not a JSON object; {REFETCH}")
    start = 8 + header_len
    ranges = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
        except (TypeError, KeyError, ValueError) as err:
            raise DamagedFileError(f"{path} is corrupt: tensor {name!r} has no valid data_offsets; {REFETCH}") from err
        if not 0 <= begin <= end or start + end > size:
            raise DamagedFileError(f"{path} is truncated or corrupt: tensor {name!r} needs bytes {start + begin}.."
                                   f"{start + end}, the file has {size}; {REFETCH}")
        ranges[name] = (start + begin, start + end)
    return ranges


# ----------------------------------------------------------------------------- hashing


def digest_file(path: str | os.PathLike, ranges: dict[str, tuple[int, int]] | None = None,
                skip: tuple[int, int] | None = None) -> tuple[str, dict[str, str]]:
    """(sha256 hex, {name: crc32 hex}) of a file in one sequential read; the CRC-32s cover ``ranges``
    (absolute [start, end) byte ranges). ``skip`` leaves one byte range out of the sha256 (a checksum
    stored inside the file it covers)."""
    sha = hashlib.sha256()
    spans = sorted((r[0], r[1], name) for name, r in (ranges or {}).items())
    crcs = {name: 0 for _, _, name in spans}
    first = 0  # the first span not yet read to its end
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    pos = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            end = pos + n
            if skip is not None and skip[0] < end and skip[1] > pos:
                a, b = max(skip[0], pos) - pos, min(skip[1], end) - pos
                sha.update(view[:a])
                sha.update(view[b:n])
            else:
                sha.update(view[:n])  # hashlib and zlib release the GIL on large buffers
            j = first
            while j < len(spans) and spans[j][0] < end:
                begin, stop, name = spans[j]
                if stop > pos:
                    crcs[name] = zlib.crc32(view[max(begin, pos) - pos:min(stop, end) - pos], crcs[name])
                if stop <= end and j == first:
                    first += 1
                j += 1
            pos = end
    view.release()
    return sha.hexdigest(), {name: f"{crc:08x}" for name, crc in crcs.items()}


def _header_digest(path: Path) -> str:
    """sha256 of a safetensors file's header (its length and JSON): checkable before the body is read."""
    with open(path, "rb") as f:
        head = f.read(8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        return hashlib.sha256(head + f.read(min(length, 100 << 20))).hexdigest()


# ----------------------------------------------------------------------------- writing


def _listed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def manifest_of(folder: str | os.PathLike) -> dict:
    """The manifest of ``folder`` as it is now (every file's size and sha256, every tensor's range and CRC-32)."""
    folder = Path(folder)
    files = {}
    for path in _listed_files(folder):
        ranges = safetensors_tensor_ranges(path) if path.suffix == ".safetensors" else None
        sha, crcs = digest_file(path, ranges)
        entry = {"bytes": path.stat().st_size, "sha256": sha}
        if ranges is not None:
            entry["header_sha256"] = _header_digest(path)
            entry["tensors"] = {name: {"offsets": list(ranges[name]), "crc32": crcs[name]} for name in sorted(ranges)}
        files[path.relative_to(folder).as_posix()] = entry
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "written_by": "tritium", "files": files}
    return body | {"manifest_sha256": _manifest_digest(body)}


def _manifest_digest(body: dict) -> str:
    """sha256 of the manifest's content (whatever its whitespace), so a damaged manifest is caught too."""
    content = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Seal ``folder``: write its manifest atomically. Call it last, once every other file is written."""
    from .io import atomic_write_json

    return atomic_write_json(Path(folder) / MANIFEST_FILE, manifest_of(folder))


# ----------------------------------------------------------------------------- checking


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is corrupt (not valid JSON: {err}); {REEXPORT}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DamagedFileError(f"{path} is corrupt or not a tritium manifest (format "
                               f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); {REEXPORT}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DamagedFileError(f"{path} has manifest version {manifest.get('version')!r}; this tritium reads version "
                               f"{MANIFEST_VERSION}: upgrade tritium or {REEXPORT}")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise DamagedFileError(f"{path} is corrupt: its content does not match its own manifest_sha256; {REEXPORT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or not all(
            isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
            and isinstance(e.get("tensors", {}), dict) for e in files.values()):
        raise DamagedFileError(f"{path} is corrupt: its file list is malformed; {REEXPORT}")
    return manifest


def _check_size(folder: Path, name: str, entry: dict) -> int:
    path = folder / name
    if not path.is_file():
        raise DamagedFileError(f"{path} is missing: the folder's {MANIFEST_FILE} lists it; {REEXPORT}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        how = "truncated or was edited" if size < entry["bytes"] else "longer than written (damaged or edited)"
        raise DamagedFileError(f"{path} is {how}: {size} bytes, {entry['bytes']} in the {MANIFEST_FILE} written when "
                               f"tritium saved it; {REEXPORT}")
    return size


def _check_header(folder: Path, name: str, entry: dict) -> None:
    if "header_sha256" in entry and _header_digest(folder / name) != entry["header_sha256"]:
        raise DamagedFileError(f"{folder / name} does not match the sha256 recorded in {MANIFEST_FILE} when tritium "
                               f"saved it (its header, the tensor names, shapes and dtypes, changed): the file is "
                               f"damaged or was edited; {REEXPORT}")


def _check_digest(folder: Path, name: str, entry: dict) -> None:
    path = folder / name
    tensors = entry.get("tensors", {})
    try:
        ranges = {t: (int(info["offsets"][0]), int(info["offsets"][1])) for t, info in tensors.items()}
    except (TypeError, KeyError, IndexError, ValueError) as err:
        raise DamagedFileError(f"{folder / MANIFEST_FILE} is corrupt: the tensor list of {name} is malformed; "
                               f"{REEXPORT}") from err
    sha, _ = digest_file(path)
    if sha == entry["sha256"]:  # the file is byte for byte what was saved, so every tensor's CRC-32 holds too
        return
    # Damaged: read it again for the per-tensor CRC-32s, only to name what changed (a third of the check's cost
    # when done on every load).
    _, crcs = digest_file(path, ranges)
    damaged = sorted(t for t, info in tensors.items() if crcs[t] != info.get("crc32"))
    where = (f"damaged tensors: {', '.join(damaged[:5])}" + (f" and {len(damaged) - 5} more" if len(damaged) > 5
                                                             else "")
             if damaged else "its tensors are intact, the header or padding changed" if tensors else
             "its bytes changed")
    raise DamagedFileError(f"{path} does not match the sha256 recorded in {MANIFEST_FILE} when tritium saved it "
                           f"({where}): the file is damaged or was edited; {REEXPORT}")


# Folders checked by an enclosing verified_folder() block, with what the check found (None: no manifest).
_VERIFIED: ContextVar[dict] = ContextVar("tritium_verified_folders", default={})
_WARNED: set[str] = set()


def has_manifest(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def verify_folder(folder: str | os.PathLike, background: bool = False) -> FolderCheck | None:
    """Check every file of ``folder`` against its manifest; None when the folder has no manifest.

    Raises :class:`DamagedFileError` naming the first file that is missing, truncated, changed or
    added after saving. With ``background``, files over :data:`BACKGROUND_BYTES` (the weights) are
    hashed in a thread while the caller loads them: sizes, small files (config.json, tokenizer)
    and safetensors headers are still checked first, and :meth:`FolderCheck.wait` must be called
    before the load is trusted (:func:`verified_folder` does). Inside :func:`verified_folder` for
    the same folder, returns that block's check at once instead of reading the files again."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _VERIFIED.get():
        return _VERIFIED.get()[key]
    if not has_manifest(folder):
        return None
    files = _read_manifest(folder)["files"]
    check = FolderCheck(folder)
    for name, entry in files.items():
        check.files[name] = _check_size(folder, name, entry)
    added = [p.relative_to(folder).as_posix() for p in _listed_files(folder)
             if p.relative_to(folder).as_posix() not in files and LOADER_INPUTS.match(p.name)]
    if added:
        raise DamagedFileError(f"{folder} holds {', '.join(added[:3])}, which its {MANIFEST_FILE} does not list: "
                               f"the file was added after tritium saved the folder and would be read on load; remove "
                               f"it or {REEXPORT}")
    later = [name for name in files if background and check.files[name] > BACKGROUND_BYTES]
    for name, entry in files.items():
        if name in later:
            _check_header(folder, name, entry)
        else:
            _check_digest(folder, name, entry)
    if later:
        def hash_large_files():
            try:
                for name in later:
                    _check_digest(folder, name, files[name])
            except DamagedFileError as err:
                check._damage.append(err)
            except OSError as err:
                check._damage.append(DamagedFileError(f"{folder}: reading it to check it failed ({err})"))

        check._thread = threading.Thread(target=hash_large_files, name="tritium-verify", daemon=True)
        check._thread.start()
    return check


def warn_unsealed(folder: str | os.PathLike) -> None:
    """One warning per folder and process: a tritium folder without a manifest cannot be checked."""
    key = str(Path(folder).resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"{folder} has no {MANIFEST_FILE} (saved before tritium wrote manifests, or by save_pretrained "
                  "directly), so damaged files in it cannot be detected; save it again with tritium (`tritium pack`, or "
                  "tritium.utils.integrity.write_manifest(folder) once you trust its files)", UnsealedFolderWarning,
                  stacklevel=3)


@contextmanager
def verified_folder(folder: str | os.PathLike, background: bool = False):
    """Verify ``folder`` once (see :func:`verify_folder`) and skip re-checking it inside the block.

    Yields the :class:`FolderCheck`, or None when the folder has no manifest. With ``background``
    the weights are hashed while the block runs and the block's exit waits for them: damage found
    there is raised on leaving the block, in place of whatever the block raised (a damaged file
    explains a failed load better than the failure does)."""
    check = verify_folder(folder, background)
    token = _VERIFIED.set({**_VERIFIED.get(), str(Path(folder).resolve()): check})
    try:
        yield check
    except BaseException as err:
        damage = check.join() if check is not None else None
        if damage is not None:
            raise damage from err
        raise
    finally:
        _VERIFIED.reset(token)
    if check is not None:
        check.wait()


# --------------------------------------------------------------------------- tensors vs quantization_config


PACKED_SUFFIX = ".packed"
QUANT_METHOD = "tritium"  # the quant_method of every quantization_config tritium writes
SUPPORTED_FORMATS = ("fake", "packed")  # the formats of those configs: fake-quant float weights, or packed codes
# The layout of the quantization_config tritium writes. Folders saved before it was recorded carry none
# and read as version 1, which they are.
QUANT_CONFIG_VERSION = 1


def check_quantization_config_version(qconfig: dict | None, where) -> None:
    """Refuse a tritium quantization_config written in a layout this tritium does not read."""
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != QUANT_METHOD:
        return
    version = qconfig.get("format_version", QUANT_CONFIG_VERSION)
    if version != QUANT_CONFIG_VERSION:
        raise InconsistentFolderError(
            f"{where}: its quantization_config has format_version {version!r}, but this tritium reads version "
            f"{QUANT_CONFIG_VERSION}: " + ("upgrade tritium to load it" if isinstance(version, int) and
                                            version > QUANT_CONFIG_VERSION else
                                            "the config.json is damaged; re-export the model with tritium"))
CODES_SIDECAR = "tritium_codes.safetensors"  # read by tritium pack/export, never by from_pretrained


def weight_tensor_names(folder: str | Path) -> list[str]:
    """Names of the tensors ``from_pretrained`` reads from ``folder`` (model.safetensors or its shards),
    from the files' headers only."""
    import json

    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DamagedFileError(f"{index} is corrupt ({err}); re-export the model with tritium") from err
    else:
        return []
    return [name for path in files if path.is_file() for name in safetensors_tensor_ranges(path)]


def check_config_matches_tensors(folder: str | Path, qconfig: dict | None) -> None:
    """Refuse a folder whose packed tensors and ``quantization_config`` disagree, before anything loads.

    Packed codes (``<linear>.packed``) are only read into packed modules, which the quantizer builds
    from ``format: packed`` and ``packed_modules``; without them transformers drops the codes and
    leaves those linears randomly initialised, with a warning at best."""
    packed = sorted({n[: -len(PACKED_SUFFIX)] for n in weight_tensor_names(folder) if n.endswith(PACKED_SUFFIX)})
    tritium = isinstance(qconfig, dict) and qconfig.get("quant_method") == QUANT_METHOD
    fix = "its config.json is damaged or was replaced: re-export the model with tritium (`tritium pack`)"
    if not tritium:
        if packed:
            raise InconsistentFolderError(
                f"{folder} holds packed tritium weights ({len(packed)} linears, e.g. {packed[0]}{PACKED_SUFFIX}) but "
                f"its config.json has no tritium quantization_config, so they would load as random linears; {fix}")
        return
    fmt = qconfig.get("format")
    if fmt != "packed":
        if packed:
            raise InconsistentFolderError(
                f"{folder}: config.json says format {fmt!r} but the folder holds packed weights ({len(packed)} "
                f"linears, e.g. {packed[0]}{PACKED_SUFFIX}), which would load as random linears; {fix}")
        return
    listed = set(qconfig.get("packed_modules") or ())
    if not packed:
        raise InconsistentFolderError(f"{folder}: config.json says format 'packed' but the weights hold no packed "
                                      f"tensors; {fix}")
    if listed != set(packed):
        extra, unlisted = sorted(listed - set(packed)), sorted(set(packed) - listed)
        raise InconsistentFolderError(
            f"{folder}: the packed_modules of config.json do not match the packed weights"
            + (f"; listed but not in the weights: {', '.join(extra[:3])}" if extra else "")
            + (f"; in the weights but not listed: {', '.join(unlisted[:3])}" if unlisted else "") + f"; {fix}")
