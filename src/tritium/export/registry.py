"""The exporters: one registered writer per format that runtimes load.

Each format lives in its own module (``to_compressed_tensors``, ``to_gguf``, ``to_tritium``) and
registers an :class:`Exporter` subclass with :func:`register_exporter`. :func:`get_exporter`
and :func:`export_formats` load those modules on first use, so importing the registry costs
nothing and a format whose optional library is missing fails only when it is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from ..utils.errors import TritiumError

# The modules that hold the built-in exporters; each registers itself when imported.
BUILTIN_MODULES = ("to_compressed_tensors", "to_gguf", "to_tritium")

_EXPORTERS: dict[str, type["Exporter"]] = {}
_builtins_loaded = False


class ExportError(TritiumError, ValueError):
    """An export that cannot be done as asked; the message says what to change."""


class Exporter:
    """One output format. Subclasses set the class attributes and implement :meth:`write`.

    ``kind`` is "folder" (written into a temporary folder that replaces ``out`` whole) or
    "file" (the exporter writes ``out`` atomically itself). ``options`` maps each option the
    format takes to its default; an option of another format is refused before any work.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "folder"
    summary: ClassVar[str] = ""
    default_out: ClassVar[str] = ""  # the output's name inside a run folder (RUN/<default_out>)
    options: ClassVar[dict[str, Any]] = {}
    # Whether the runtime that loads this format applies tritium's online rotations and KV-cache quantizer
    # (models/online_rotation.py); llama.cpp and vLLM do not, so their files would compute the wrong function.
    runs_online_rotations: ClassVar[bool] = False

    def check(self, grid, grid_overrides: dict, options: dict) -> None:
        """Refuse, before the model loads, grids or option values this format cannot take."""

    def check_config(self, config: dict, what: str) -> None:
        """Refuse, before the model loads, a model this format cannot write, from its config.json
        (``config``) alone; ``what`` names the model in the message."""

    def write(self, source, out: Path, options: dict):
        """Write ``source`` (an :class:`~tritium.export.source.ExportSource`) to ``out`` and read it back.

        For a "folder" format ``out`` is an empty temporary folder; for a "file" format it is the
        final path. Returns an :class:`~tritium.export.api.ExportReport`.
        """
        raise NotImplementedError(f"exporter {self.name!r} does not implement write()")


def check_runtime_transforms(exporter: Exporter, config: dict, what: str) -> None:
    """Refuse a model whose config records online rotations (R3/R4) or a quantized KV cache for a format whose
    runtime does not apply them: its weights hold W·H where the runtime would need the Hadamard on the input."""
    from ..models.online_rotation import ONLINE_ROTATION_CONFIG_KEY

    recorded = config.get(ONLINE_ROTATION_CONFIG_KEY)
    if recorded and not exporter.runs_online_rotations:
        shown = {key: value for key, value in recorded.items() if value not in (None, False)}
        able = ", ".join(sorted(name for name in export_formats() if get_exporter(name).runs_online_rotations))
        raise ExportError(f"{what} applies online rotations or a quantized KV cache at run time ({shown}), which "
                          f"{exporter.name} runtimes do not apply: its down_proj weights are rotated for them, so "
                          f"the file would compute a different model. Export it as {able}, or quantize again "
                          "without online_rotation and kv_bits (--online-rotation, --kv-bits) for this format")


def register_exporter(name: str):
    """Class decorator: register an :class:`Exporter` subclass under the format ``name``."""

    def register(cls: type[Exporter]) -> type[Exporter]:
        if not (isinstance(cls, type) and issubclass(cls, Exporter)):
            raise TypeError(f"register_exporter({name!r}) takes an Exporter subclass, not {cls!r}")
        if cls.kind not in ("folder", "file"):
            raise TypeError(f"exporter {name!r}: kind must be 'folder' or 'file', not {cls.kind!r}")
        if name in _EXPORTERS and _EXPORTERS[name] is not cls:
            raise ValueError(f"an exporter named {name!r} is already registered ({_EXPORTERS[name].__qualname__})")
        cls.name = name
        _EXPORTERS[name] = cls
        return cls

    return register


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _builtins_loaded = True


def export_formats() -> dict[str, str]:
    """Every registered format name and its one-line summary, sorted by name."""
    _load_builtins()
    return {name: _EXPORTERS[name].summary for name in sorted(_EXPORTERS)}


def get_exporter(name: str) -> Exporter:
    _load_builtins()
    if name not in _EXPORTERS:
        raise ExportError(f"export format {name!r} is unknown: choose one of {', '.join(sorted(_EXPORTERS))}")
    return _EXPORTERS[name]()
