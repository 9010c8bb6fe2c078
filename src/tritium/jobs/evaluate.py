"""The eval job: evaluate a model, float or saved by tritium (fake-quant, packed or GGUF), and write its report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .options import EvalOptions, eval_settings, torch_dtype


@dataclass(kw_only=True)
class EvalJob(EvalOptions):
    """The field names are the CLI's flags; a ``None`` option leaves the default recipe's evaluation value."""

    model: str
    dtype: str = "float32"
    device: str = "cpu"


@dataclass
class EvalResult:
    row: dict
    summary: dict
    out: Path
    json_path: Path
    md_path: Path


def evaluate_model(job: EvalJob) -> EvalResult:
    from ..eval.report import write_report
    from ..eval.size import size_report
    from ..methods.base import selected_linears
    from ..models import decoder_layout, load_model
    from ..models.loader import read_quantization_config
    from ..quant.grids import grid_from_dict
    from ..utils.io import folder_bytes
    from ..utils.runs import claim_run_folder, job_settings
    from . import steps
    from .preflight import PreflightError, check_device, check_eval_settings, check_writable, preflight_loaded_model

    settings = eval_settings(job)
    check_eval_settings(settings)
    check_device(job.device)
    check_writable(job.out)
    out = claim_run_folder(job.out, "eval", job_settings(job), job.overwrite, (job.model, "eval")).path
    start = time.perf_counter()
    model, tokenizer, source = load_model(job.model, dtype=torch_dtype(job.dtype), device=job.device)
    preflight_loaded_model(model, tokenizer)
    qconfig = read_quantization_config(source.location) if source.kind == "folder" else None
    if qconfig:
        from ..export.hf import grids_from_dicts

        grid, overrides = grid_from_dict(qconfig["grid"]), grids_from_dicts(qconfig.get("grid_overrides"))
        names = selected_linears(decoder_layout(model), tuple(qconfig.get("modules_not_quantized") or ()))
        size = size_report(model, grid, names, overrides)
        weights = {n: m.out_features * m.in_features for n, m in names.items()}
        bits = sum(float(overrides.get(n, grid).bits) * count for n, count in weights.items()) / sum(weights.values())
        from ..nn import head_type_of

        row = {"model": "quantized", "method": qconfig["method"], "bits": round(bits, 2),
               "grid": grid.describe() + (f" ({len(overrides)} linears on their own grids)" if overrides else ""),
               "group": grid.group, "storage": "fake-quant (float weights on the grid)",
               "head": head_type_of(model)}
        if qconfig.get("format") == "packed":  # what the packed modules really hold, beside the Spectra count
            from ..eval.size import packed_storage

            row["stored_bits_per_weight"], row["storage"] = packed_storage(model)
        if qconfig.get("activations"):  # weight + activation quantization: the loader put the quantizers back
            from ..nn.activation_quant import activation_grids, describe_activations, grids_from_record

            recorded, installed = grids_from_record(qconfig["activations"]), activation_grids(model)
            if installed != recorded:  # never score float activations under an activation-quantized name
                raise PreflightError(f"{job.model} records quantized activations on {len(recorded)} linears, but "
                                     f"{len(installed)} quantize them after loading: the folder does not load as it "
                                     "was saved; re-export it with tritium")
            row["method"] += f" + {describe_activations(installed)} activations"
            row["activations"] = qconfig["activations"]
    elif source.gguf_file:  # dequantized to float for the evaluation, but stored in GGUF types
        from ..eval.size import gguf_size_report

        size, types, storage = gguf_size_report(Path(source.location) / source.gguf_file)
        row = {"model": "gguf", "method": "/".join(types), "bits": round(size.linear_bits_per_weight, 2),
               "group": None, "storage": storage, "gguf_types": types}
    else:
        size = size_report(model)
        row = {"model": "float", "method": "none", "bits": 16, "group": None}
    if row.get("storage"):
        print(f"tritium: {job.model} stores {row['storage']}", file=sys.stderr)
    row |= steps.evaluate(model, tokenizer, settings, job.data, not job.no_progress)
    file_bytes = None
    if source.kind != "hub":
        file_bytes = folder_bytes(Path(source.location) / (source.gguf_file or ""))
    row |= {"size": size.to_dict(), "file_bytes": file_bytes, "seconds": time.perf_counter() - start}
    summary = {"title": f"eval {job.model}", "model": str(job.model), "source": source.describe(),
               "eval": settings, "peak_rss_mb": steps.peak_rss_megabytes()}
    json_path, md_path = write_report(out, summary, [row])
    return EvalResult(row, summary, out, json_path, md_path)
