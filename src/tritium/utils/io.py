"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every temporary file or folder these helpers make is named ``.<name>.tritium-<pid>.<random>.tmp`` beside
its target: hidden, never loaded, and removed on any failure, KeyboardInterrupt included. Only a process
killed outright (SIGKILL, power loss) can leave one behind; the pid in the name lets the next run in that
folder (:func:`tritium.utils.runs.clean_stale_temporaries`) tell an orphan from a live writer's file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import TritiumError


class TextDecodeError(TritiumError, ValueError):
    """A text input (calibration, training or evaluation text) that is not UTF-8."""


def read_utf8(path: str | os.PathLike, what: str = "text file") -> str:
    """A text file's contents; a file that is not UTF-8 (a binary, a Latin-1 export) is refused with its
    name and the offset of the first bad byte, rather than Python's bare codec message."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TextDecodeError(undecodable_message(path, what, err)) from None


def undecodable_message(path, what: str, err: UnicodeDecodeError) -> str:
    return (f"the {what} {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start} does "
            f"not decode): convert it to UTF-8 (e.g. `iconv -t utf-8`), or give a text file, not a binary one")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path: Path) -> str:
    """The name every temporary of ``path`` starts with; the pid says which process owns it."""
    return f".{path.name}.tritium-{os.getpid()}."


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    If the body raises (KeyboardInterrupt included), the temporary folder is removed and an existing
    ``path`` is untouched; an interruption while swapping the folders puts the old ``path`` back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        try:
            if path.exists():
                old = path.with_name(f"{temporary_prefix(path)}old-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
                os.replace(path, old)
            os.replace(tmp, path)
        except BaseException:
            if old is not None and not path.exists():
                os.replace(old, path)  # interrupted halfway through the swap: the old folder comes back
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def folder_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
