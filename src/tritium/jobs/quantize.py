"""The quantize job: quantize a model, evaluate it beside the float model, save it and its report.

``tritium quantize`` builds a :class:`QuantizeJob` from its flags and calls :func:`quantize`; Python
code does the same::

    from tritium.jobs import QuantizeJob, quantize
    result = quantize(QuantizeJob(model="smollm2-135m", recipe="w4g128-rtn", out="runs/w4"))
    result.rows[-1]["perplexity"]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .options import EvalOptions, quantize_recipe, torch_dtype


@dataclass(kw_only=True)
class QuantizeJob(EvalOptions):
    """What to quantize and how; the field names are the CLI's flags (``--calib-samples`` → calib_samples).
    A ``None`` option leaves the recipe's value."""

    model: str
    recipe: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    method: str | None = None
    grid: str | None = None
    bits: int | None = None
    group: int | str | None = None
    variant: str | None = None
    symmetric: bool | None = None
    ragged_groups: bool | None = None
    skip: list[str] | None = None
    rotate: bool | None = None
    # weight + activation quantization (the recipe's act_* keys): the quantized linears' inputs, per token
    act_bits: int | None = None
    act_group: int | str | None = None
    act_symmetric: bool | None = None
    act_clip_ratio: float | None = None
    act_clip_search: bool | None = None
    # online Hadamards applied at run time (down_proj, qk, all) and the KV cache's bits (the recipe's keys)
    online_rotation: str | None = None
    kv_bits: int | None = None
    bits_budget: float | None = None
    calib: str | None = None
    calib_samples: int | None = None
    checkpoint_dir: str | None = None
    offload_dir: str | None = None
    calib_seqlen: int | None = None
    no_float: bool = False
    no_save: bool = False
    float_dtype: str = "float16"
    format: str = "packed"
    generate: str | None = None
    generate_tokens: int = 24
    head_type: str = "f16"


@dataclass
class ModelReport:
    """What a job that makes a model (quantize, distill) leaves: its rows, its report and the model folder."""

    rows: list[dict]  # the float row (unless no_float) and the new model's row, as in results.json
    summary: dict
    out: Path  # the run folder
    json_path: Path
    md_path: Path
    model_folder: Path | None  # None with no_save


@dataclass
class QuantizeResult(ModelReport):
    float_text: str | None = None
    quantized_text: str | None = None


def quantize(job: QuantizeJob) -> QuantizeResult:
    from ..eval.report import write_report
    from ..models import load_model
    from ..recipes import activation_grid_of
    from ..utils.runs import claim_run_folder, job_settings
    from . import steps
    from .preflight import preflight_loaded_model, preflight_quantize

    recipe = quantize_recipe(job)
    grid = preflight_quantize(job, recipe)  # every check that needs no weights, before the model loads
    act_grid = activation_grid_of(recipe)
    tag = recipe.get("name") or f"{recipe['method']}-{grid.describe()}" + (f"-{act_grid.describe()}" if act_grid else "")
    out = claim_run_folder(job.out, "quantize", job_settings(job), job.overwrite, (job.model, tag)).path
    progress = not job.no_progress
    print(f"tritium: loading {job.model}", file=sys.stderr)
    model, tokenizer, source = load_model(job.model, dtype=torch_dtype(job.dtype), device=job.device)
    # e.g. a bit budget the model cannot reach, or a layout that cannot be rotated, fails before any evaluation
    config = steps.prepare_config(model, recipe)
    from ..nn import check_head_quantizable, quantize_head_

    check_head_quantizable(model, job.head_type)  # likewise a head that --head-type cannot hold
    preflight_loaded_model(model, tokenizer, recipe, config)
    rows, token_cache = [], {}
    if not job.no_float:
        print("tritium: evaluating the float model", file=sys.stderr)
        rows.append(steps.float_row(model, tokenizer, recipe["eval"], job.data, progress, token_cache))
    # before quantizing: the model is quantized in place
    float_text = steps.greedy_text(model, tokenizer, job.generate, job.generate_tokens) if job.generate else None
    budget = (recipe.get("method_args") or {}).get("bits_budget")
    print(f"tritium: quantizing with {recipe['method']} on {grid.describe()}"
          + (f", mixed precision under a {budget:g}-bit budget" if budget is not None else "")
          + (f", activations on {act_grid.describe()}" if act_grid else ""), file=sys.stderr)
    start = time.perf_counter()
    result, config = steps.quantize_model(model, tokenizer, recipe, job.data, work_dir=out / "e2e",
                                          progress=progress)
    if job.head_type != "f16":  # before the evaluation, so the row measures the folder that is saved
        print(f"tritium: storing the embedding and LM head as {job.head_type}", file=sys.stderr)
        quantize_head_(model, job.head_type)
    print("tritium: evaluating the quantized model", file=sys.stderr)
    evaluation = steps.evaluate(model, tokenizer, recipe["eval"], job.data, progress, token_cache)
    rows.append(steps.quantized_row(model, result, evaluation, None, time.perf_counter() - start))
    model_folder = None
    if not job.no_save:
        model_folder = out / "model"
        rows[-1]["file_bytes"] = steps.save_model_folder(model, tokenizer, model_folder, result, config.skip,
                                                         job.format, job.float_dtype)
    # after packing, so the packed kernels produce the quantized text
    quantized_text = steps.greedy_text(model, tokenizer, job.generate, job.generate_tokens) if job.generate else None
    notes = ["size counts packed codes (ternary 1.6 bits, k-bit uniform k bits) plus fp16 scales; " + (
        "the saved model holds those packed codes (tritium.nn modules)" if job.format == "packed" else
        "the saved model holds fake-quant float weights, so its file size is that of a float checkpoint")]
    if "smollm2" in str(job.model).lower() and getattr(grid, "bits", None) == 4 and grid.group in (32, 16, 8):
        notes.append("SmolLM2's shipped weights are already 4-bit with groups of 32: this result is trivially lossless")
    notes += [note for note in [steps.resume_note(rows[-1]), steps.gguf_fallback_note(rows[-1])] if note]
    summary = {"title": f"{job.model} {tag}", "model": str(job.model), "source": source.describe(),
               "recipe": recipe, "peak_rss_mb": steps.peak_rss_megabytes(), "notes": notes}
    if job.generate:
        summary["generation"] = {"prompt": job.generate, "max_new_tokens": job.generate_tokens,
                                 "float": float_text, "quantized": quantized_text}
    json_path, md_path = write_report(out, summary, rows)
    return QuantizeResult(rows, summary, out, json_path, md_path, model_folder, float_text, quantized_text)
