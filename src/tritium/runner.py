"""The jobs behind the CLI, usable from Python and from bench scripts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .data import calibration_samples, load_eval_text
from .eval.perplexity import perplexity, tokenize_eval_text
from .eval.size import size_report
from .eval.zeroshot import evaluate_task
from .methods import config_from_dict, get_method, quantize_
from .methods.base import MethodConfig, selected_linears
from .methods.mixed import check_mixed_precision
from .models.adapters import decoder_layout
from .nn.block_head import head_type_of
from .models.rotation import check_rotatable, rotate_model_, rotation_settings
from .quant.grids import grid_from_dict


def evaluate(model, tokenizer, settings: dict, data_path=None, progress: bool = True,
             token_cache: dict | None = None) -> dict:
    """Perplexity on each of ``settings['datasets']`` and accuracy on each zero-shot task."""
    out: dict = {"perplexity": {}, "zeroshot": {}}
    token_cache = {} if token_cache is None else token_cache
    for name in settings.get("datasets") or []:
        if name not in token_cache:
            token_cache[name] = tokenize_eval_text(tokenizer, load_eval_text(name, data_path))
        result = perplexity(model, token_cache[name], seqlen=settings.get("seqlen", 2048),
                            limit=settings.get("limit"), batch_size=settings.get("batch_size", 1),
                            dataset=name, progress=progress)
        out["perplexity"][name] = result.to_dict()
    for task in settings.get("zeroshot") or []:
        result = evaluate_task(model, tokenizer, task, limit=settings.get("zeroshot_limit"), data_path=data_path,
                               progress=progress)
        out["zeroshot"][task] = result.metrics | {"n_docs": result.n_docs}
    return out


def float_row(model, tokenizer, settings, data_path=None, progress=True, token_cache=None) -> dict:
    start = time.perf_counter()
    results = evaluate(model, tokenizer, settings, data_path, progress, token_cache)
    return {"model": "float", "method": "none", "bits": 16, "group": None, **results,
            "size": size_report(model).to_dict(), "file_bytes": None, "seconds": time.perf_counter() - start}


def prepare_config(model, recipe: dict) -> MethodConfig:
    """The recipe's method config, checked against ``model``: settings it cannot apply, such as a bit
    budget outside what its linears can reach or a rotation its layout cannot absorb, fail here,
    before any calibration or evaluation."""
    grid = grid_from_dict(recipe["grid"])
    config = config_from_dict(recipe["method"], grid, **dict(recipe.get("method_args") or {}))
    check_mixed_precision(config, get_method(recipe["method"]), selected_linears(decoder_layout(model), config.skip))
    if rotation_settings(recipe.get("rotate")) is not None:
        check_rotatable(model)
    return config


def quantize_model(model, tokenizer, recipe: dict, data_path=None):
    """Quantize ``model`` in place as ``recipe`` says; returns the QuantizationResult and the config.

    With ``rotate`` set, the norms are folded and the weights rotated first (the same function,
    other weights); the result's details say how."""
    config = prepare_config(model, recipe)
    rotation = rotation_settings(recipe.get("rotate"))
    calibration = None
    needs_calibration = get_method(recipe["method"]).needs_calibration
    if needs_calibration or config.bits_budget is not None:
        calib = recipe["calib"]
        # A method without calibration reads only the samples the bit allocator measures sensitivity on.
        samples = calib["samples"] if needs_calibration else min(calib["samples"], config.sensitivity_samples)
        calibration = calibration_samples(tokenizer, calib["source"], samples, calib["seqlen"],
                                          calib.get("seed", 0), data_path)
    report = None
    if rotation is not None:
        start = time.perf_counter()
        report = rotate_model_(model, rotation)
        for note in report.notes:
            print(f"tritium: note: {note}", file=sys.stderr)
        rotate_seconds = time.perf_counter() - start
    result = quantize_(model, config, calibration)
    if report is not None:
        result.details["rotation"] = report.to_dict() | {"seconds": rotate_seconds}
        result.seconds += rotate_seconds
    return result, config


def quantized_row(model, result, evaluation: dict, file_bytes: int | None, seconds: float) -> dict:
    group = result.grid.group
    bits = result.mean_code_bits() if result.grid_overrides else float(result.grid.bits)
    method = result.method + (" + rotation" if "rotation" in result.details else "")
    row = {"model": "quantized", "method": method, "bits": round(bits, 2),
           "grid": result.describe_grids(), "group": group, **evaluation,
           "size": size_report(model, result.grid, result.weights, result.grid_overrides).to_dict(),
           "file_bytes": file_bytes, "quantize_seconds": result.seconds, "seconds": seconds,
           "head": head_type_of(model)}
    if "mixed_precision" in result.details:  # the bit allocation per layer, for results.json and results.md
        row["mixed_precision"] = result.details["mixed_precision"]
    return row


def peak_rss_megabytes() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_run_folder(model: str, tag: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(model)).name)
    return Path("runs") / f"{safe}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"

