"""``export_model``: one entry point from a quantized model to any registered format.

Every check that needs no model (the format, its options, the grids, the output path) runs
before the model loads. Folder formats are written into a temporary folder beside ``out`` that
replaces it only once the exporter has read its output back; file formats write a temporary
file and rename it. A failed export therefore leaves no partial output, and an existing
output is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .registry import ExportError, Exporter, check_runtime_transforms, export_formats, get_exporter


@dataclass
class ExportReport:
    format: str
    path: Path
    bytes: int = 0
    lines: list[str] = field(default_factory=list)  # a human summary; the CLI prints it
    details: dict = field(default_factory=dict)


def export_model(model_or_folder, format: str = "compressed-tensors", out: str | os.PathLike | None = None, *,
                 overwrite: bool = False, result=None, tokenizer=None, log: Callable[[str], None] | None = None,
                 **options) -> ExportReport:
    """Export a quantized model as ``format`` to ``out``; return what was written.

    ``model_or_folder`` is a `tritium quantize` run folder, a model folder (packed, or fake-quant
    with its codes), or a torch model: packed, or quantized in place by :func:`tritium.quantize_`
    with its ``result``. ``out`` defaults to ``RUN/<format's name>`` for a run folder (a model in
    memory needs one). ``options`` are the format's own (see :func:`export_options`), e.g.
    ``float_dtype="float32"`` for compressed-tensors or ``type="tq2_0"`` for gguf.
    """
    from .source import load_folder_source, model_grids, model_source

    exporter = get_exporter(format)
    chosen = _options(exporter, options)
    if isinstance(model_or_folder, (str, os.PathLike)):
        if result is not None or tokenizer is not None:
            raise ExportError("result= and tokenizer= go with a model in memory; a folder holds its own")
        plan, out = _plan_folder_export(model_or_folder, exporter, chosen, out, overwrite)
        if log:
            log(f"tritium: loading {plan.folder}")
        source = load_folder_source(plan)
    else:
        if out is None:
            raise ExportError("exporting a model in memory needs out= (the folder or file to write)")
        grid, overrides, _ = model_grids(model_or_folder, result)
        exporter.check(grid, overrides, chosen)
        config = model_or_folder.config
        config_fields = {**config.to_dict(), "model_type": config.model_type}
        check_runtime_transforms(exporter, config_fields, "this model")
        exporter.check_config(config_fields, "this model")
        out = Path(out)
        _check_out(out, exporter, overwrite, protected=None)
        source = model_source(model_or_folder, result, tokenizer)
    return _write(exporter, source, out, chosen)


def check_folder_export(folder: str | os.PathLike, format: str, out: str | os.PathLike | None = None,
                        overwrite: bool = False, options: dict | None = None) -> Path:
    """Every check :func:`export_model` makes on a folder before loading it (the format, its options, the
    folder's grids, the output); returns the output path, ``out`` or the format's default beside the run."""
    exporter = get_exporter(format)
    return _plan_folder_export(folder, exporter, _options(exporter, options or {}), out, overwrite)[1]


def check_folder_config(folder: str | os.PathLike, format: str) -> None:
    """The format's check of the model folder's config.json alone (e.g. a family GGUF cannot write): cheap
    enough to run before the folder's files are hashed against its manifest, let alone loaded."""
    import json

    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # the manifest check that follows names a missing or damaged config.json
    if isinstance(config, dict):
        check_runtime_transforms(get_exporter(format), config, str(folder))
        get_exporter(format).check_config(config, str(folder))


def _plan_folder_export(folder, exporter: Exporter, options: dict, out, overwrite: bool):
    from .source import plan_folder

    plan = plan_folder(folder)
    exporter.check(plan.grid, plan.grid_overrides, options)
    check_runtime_transforms(exporter, plan.model_config, str(plan.folder))
    exporter.check_config(plan.model_config, str(plan.folder))  # from config.json, before any weight is read
    out = Path(out) if out is not None else plan.default_out(exporter.default_out)
    _check_out(out, exporter, overwrite, protected=plan.folder)
    return plan, out


def export_options(format: str) -> dict:
    """The options ``format`` takes, with their defaults."""
    return dict(get_exporter(format).options)


def _options(exporter: Exporter, given: dict) -> dict:
    unknown = sorted(set(given) - set(exporter.options))
    if unknown:
        owners = {name: [f for f in export_formats() if name in get_exporter(f).options] for name in unknown}
        where = "; ".join(f"{name!r} belongs to {', '.join(fmts) or 'no format'}" for name, fmts in owners.items())
        takes = ", ".join(exporter.options) or "no options"
        raise ExportError(f"format {exporter.name!r} does not take {', '.join(map(repr, unknown))} ({where}); "
                          f"it takes {takes}")
    return {**exporter.options, **given}


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies somewhere inside it."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_out(out: Path, exporter: Exporter, overwrite: bool, protected: Path | None) -> None:
    if protected is not None and _inside(protected, out):
        raise ExportError(f"--out {out} is (or holds) the folder being exported, {protected}; choose another output")
    if not out.exists() and not out.is_symlink():
        return
    if exporter.kind == "folder":
        if not out.is_dir():
            raise ExportError(f"{out} is a file, and a {exporter.name} export is a folder: choose another --out")
        if not any(out.iterdir()):
            return  # an empty folder holds nothing to overwrite
    elif out.is_dir():
        raise ExportError(f"{out} is a folder, and a {exporter.name} export is one file: choose a file name "
                          f"(e.g. {out / exporter.default_out})")
    if not overwrite:
        raise ExportError(f"{out} already exists: pass --overwrite (overwrite=True) to replace it, or choose another "
                          "--out")


def _write(exporter: Exporter, source, out: Path, options: dict) -> ExportReport:
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory, folder_bytes

    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        if exporter.kind == "folder":
            # The one place every exported folder is finished: what is in ``tmp`` when this block
            # ends (after the exporter's own read-back) is what replaces ``out``.
            with atomic_directory(out) as tmp:
                report = exporter.write(source, tmp, options)
                write_manifest(tmp)  # last: every file's checksum, checked whenever tritium loads the folder
        else:
            report = exporter.write(source, out, options)
    except BaseException:
        for parent in created:  # deepest first: only the folders this export made, and only if empty
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    report.path = out
    report.bytes = folder_bytes(out)
    if exporter.kind == "folder":
        report.lines.insert(0, f"wrote {out}: {report.bytes / 1e6:.2f} MB ({exporter.name})")
    return report
