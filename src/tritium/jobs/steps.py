"""The jobs behind the CLI, usable from Python and from bench scripts."""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..data import calibration_samples, calibration_text, load_eval_text
from ..eval.perplexity import perplexity, tokenize_eval_text
from ..eval.size import size_report
from ..eval.zeroshot import evaluate_task
from ..calib.activation_clip import ACTIVATION_CLIP_TOKENS
from ..methods import config_from_dict, get_method, quantize_
from ..methods.base import MethodConfig, check_activation_groups, selected_linears, unmatched_patterns
from ..methods.mixed import check_mixed_precision
from ..models.adapters import decoder_layout
from ..nn.block_head import head_type_of
from ..models.online_rotation import OnlineRotationSettings
from ..models.rotation import check_rotatable, rotate_model_, rotation_settings
from ..quant.grids import grid_from_dict
from ..recipes import activation_clip_candidates_of, activation_grid_of, online_rotation_of
from ..recipes import check_save_format  # noqa: F401  (preflight's; the recipe's own check)


def evaluate(model, tokenizer, settings: dict, data_path=None, progress: bool = True,
             token_cache: dict | None = None) -> dict:
    """Perplexity on each of ``settings['datasets']`` and accuracy on each zero-shot task, by each of
    ``settings['scorers']`` (tritium's own, the default, under "zeroshot"; lm-eval's under "zeroshot_lm_eval")."""
    out: dict = {"perplexity": {}, "zeroshot": {}}
    scorers = settings.get("scorers") or ["tritium"]
    token_cache = {} if token_cache is None else token_cache
    for name in settings.get("datasets") or []:
        if name not in token_cache:
            token_cache[name] = tokenize_eval_text(tokenizer, load_eval_text(name, data_path))
        result = perplexity(model, token_cache[name], seqlen=settings.get("seqlen", 2048),
                            limit=settings.get("limit"), batch_size=settings.get("batch_size", 1),
                            dataset=name, progress=progress)
        out["perplexity"][name] = result.to_dict()
    for task in (settings.get("zeroshot") or []) if "tritium" in scorers else []:
        result = evaluate_task(model, tokenizer, task, limit=settings.get("zeroshot_limit"), data_path=data_path,
                               progress=progress)
        out["zeroshot"][task] = result.metrics | {"n_docs": result.n_docs}
    if "lm-eval" in scorers and settings.get("zeroshot"):
        from ..eval.harness import evaluate_with_harness, harness_version

        out["zeroshot_lm_eval"] = evaluate_with_harness(model, tokenizer, settings["zeroshot"],
                                                        settings.get("zeroshot_limit"), data_path, progress=progress)
        out["lm_eval_version"] = harness_version()
    return out


def float_row(model, tokenizer, settings, data_path=None, progress=True, token_cache=None) -> dict:
    start = time.perf_counter()
    results = evaluate(model, tokenizer, settings, data_path, progress, token_cache)
    return {"model": "float", "method": "none", "bits": 16, "group": None, **results,
            "size": size_report(model).to_dict(), "file_bytes": None, "seconds": time.perf_counter() - start}


def prepare_config(model, recipe: dict, report: bool = True) -> MethodConfig:
    """The recipe's method config, checked against ``model``: settings it cannot apply, such as a bit
    budget outside what its linears can reach or a rotation its layout cannot absorb, fail here,
    before any calibration or evaluation. ``report``: warn (on stderr) about skip patterns that match
    no linear, which would otherwise keep nothing in float without a word."""
    grid = grid_from_dict(recipe["grid"])
    config = config_from_dict(recipe["method"], grid, **dict(recipe.get("method_args") or {}))
    act_grid = activation_grid_of(recipe)
    if act_grid is not None:
        config = replace(config, act_grid=act_grid, act_clip_candidates=activation_clip_candidates_of(recipe))
        if recipe.get("e2e") is not None:
            from ..recipes import RecipeError

            raise RecipeError("the e2e step tunes scales with float activations; it cannot yet follow a recipe that "
                              "quantizes activations (act_bits): drop the e2e section or act_bits")
        check_activation_groups(act_grid, {name: m.in_features for name, m in
                                           selected_linears(decoder_layout(model), config.skip).items()})
    if report:
        for warning in unmatched_skip_warnings(decoder_layout(model), config.skip):
            print(f"tritium: warning: {warning}", file=sys.stderr)
    check_mixed_precision(config, get_method(recipe["method"]), selected_linears(decoder_layout(model), config.skip))
    if rotation_settings(recipe.get("rotate")) is not None:
        check_rotatable(model)
    online = online_rotation_of(recipe)
    if online is not None:
        from ..models.online_rotation import check_online_rotatable

        check_online_rotatable(model, online)
    if recipe.get("e2e") is not None:
        from ..train.e2e import check_e2e_settings

        check_e2e_settings(recipe["e2e"], grid, config.bits_budget)
    return config


def unmatched_skip_warnings(layout, skip) -> list[str]:
    """One warning per skip pattern that matches none of the quantizable linears, showing a few names."""
    names = list(layout.quantizable_linears())
    examples = ", ".join(names[i] for i in sorted({0, 1, len(names) // 2, len(names) - 1}) if i < len(names))
    return [f"--skip pattern {pattern!r} matches none of the model's {len(names)} linears, so it keeps nothing in "
            f"float; the names look like {examples} (patterns are fnmatch globs on the full name, e.g. "
            "'*.mlp.down_proj' or 'model.layers.0.*')" for pattern in unmatched_patterns(names, skip)]


def needs_calibration_text(recipe: dict) -> bool:
    """Whether ``quantize_model`` will read calibration text: a calibrated method, or a bit budget
    (whose allocator measures sensitivity on calibration samples)."""
    budget = (recipe.get("method_args") or {}).get("bits_budget")
    return (get_method(recipe["method"]).needs_calibration or budget is not None
            or activation_clip_candidates_of(recipe) is not None)


def check_calibration_source(recipe: dict, data_path=None) -> None:
    """Read and check the calibration text now, so that a test split in it (under any name) fails
    before the model loads and before any evaluation; ``quantize_model`` reads it again later. The
    e2e step's training text is checked the same way."""
    if needs_calibration_text(recipe):
        calibration_text(recipe["calib"]["source"], data_path)
    e2e = recipe.get("e2e")
    if e2e is not None:
        from ..train.data import check_training_sources
        from ..train.e2e import check_e2e_settings

        check_e2e_settings(e2e, grid_from_dict(recipe["grid"]), (recipe.get("method_args") or {}).get("bits_budget"))
        data = e2e["data"]
        check_training_sources(data["sources"], data.get("text_field", "text"), data_path)


def quantize_model(model, tokenizer, recipe: dict, data_path=None, work_dir=None, progress: bool = True):
    """Quantize ``model`` in place as ``recipe`` says; returns the QuantizationResult and the config.

    With ``rotate`` set, the norms are folded and the weights rotated first (the same function,
    other weights); the result's details say how. With an ``e2e`` section the PTQ result's scales
    are then tuned end to end (codes fixed) against the float model; ``work_dir`` holds that step's
    PTQ start and training checkpoints until it ends (a rerun resumes them) and then its training log,
    a temporary folder by default."""
    config = prepare_config(model, recipe, report=False)  # the caller checked it (and warned) already
    rotation = rotation_settings(recipe.get("rotate"))
    calibration = None
    needs_calibration = get_method(recipe["method"]).needs_calibration
    if needs_calibration_text(recipe):
        calib = recipe["calib"]
        # A method without calibration reads only the samples the bit allocator measures sensitivity on, or
        # the activation clipping search measures its errors on.
        wanted = [config.sensitivity_samples] if config.bits_budget is not None else []
        if config.act_clip_candidates:
            wanted.append(math.ceil(ACTIVATION_CLIP_TOKENS / calib["seqlen"]))
        samples = calib["samples"] if needs_calibration else min(calib["samples"], max(wanted))
        calibration = calibration_samples(tokenizer, calib["source"], samples, calib["seqlen"],
                                          calib.get("seed", 0), data_path)
    report = None
    if rotation is not None:
        start = time.perf_counter()
        report = rotate_model_(model, rotation)
        for note in report.notes:
            print(f"tritium: note: {note}", file=sys.stderr)
        rotate_seconds = time.perf_counter() - start
    online = online_rotation_of(recipe)
    online_report = None
    if online is not None:  # after R1/R2 (they rotate down_proj's output side), before any weight is quantized
        from ..models.online_rotation import add_online_rotations_

        online_report = add_online_rotations_(model, online)
        for note in online_report.notes:
            print(f"tritium: note: {note}", file=sys.stderr)
    teacher = copy.deepcopy(model) if recipe.get("e2e") is not None else None  # float, rotated alike
    result = quantize_(model, config, calibration)
    if report is not None:
        result.details["rotation"] = report.to_dict() | {"seconds": rotate_seconds}
        result.seconds += rotate_seconds
    if online_report is not None:
        result.details["online_rotation"] = online_report.to_dict()
    if teacher is not None:
        result = tune_scales_end_to_end(model, teacher, tokenizer, result, config, recipe["e2e"], work_dir,
                                        data_path, progress)
    return result, config


def tune_scales_end_to_end(model, teacher, tokenizer, result, config, settings: dict, work_dir=None, data_path=None,
                           progress: bool = True):
    """E2E-QP on a PTQ result: its codes stay, its scales and zero points (or α, γ) train against
    ``teacher`` by the e2e settings' OFF + KL. The PTQ result is saved first (fake-quant with its
    codes) and the student starts from it exactly, so step 0 is the PTQ model; returns the tuned
    result under the PTQ method's name, with the PTQ figures and the training summary in its details."""
    import shutil
    import tempfile

    from ..export.hf import save_fake_quantized
    from ..quant.grids import grid_to_dict
    from ..train.distill import distill, train_result_summary
    from ..train.e2e import e2e_config

    if work_dir is None:  # nobody keeps the log: the whole folder goes, whether the tuning ends or fails
        with tempfile.TemporaryDirectory(prefix="tritium-e2e-") as work:
            return tune_scales_end_to_end(model, teacher, tokenizer, result, config, settings, work, data_path,
                                          progress)
    work = Path(work_dir)
    start_folder = work / "ptq-model"
    save_fake_quantized(model, tokenizer, start_folder, result.method, grid_to_dict(result.grid), config.skip,
                        result.method_args, weights=result.weights,
                        grid_overrides=result.grid_overrides_dict())  # a GGUF grid's fallback types
    settings = {k: dict(v) for k, v in settings.items()}
    settings["train"].setdefault("progress", progress)
    e2e = e2e_config(settings, result.grid, config.skip, str(start_folder))
    print(f"tritium: tuning the scales end to end (codes fixed) for "
          f"{e2e.train_config().tokens or e2e.train_config().steps} {'tokens' if e2e.train_config().tokens else 'steps'}",
          file=sys.stderr)
    start = time.perf_counter()
    with torch.enable_grad():
        tuned, train = distill(model, tokenizer, e2e, work / "train", teacher=teacher, data_path=data_path)
    changed = [name for name, w in tuned.weights.items() if not torch.equal(w.codes, result.weights[name].codes)]
    if changed:  # the student's codes are frozen; a change here is a bug, never a result to save
        raise RuntimeError(f"e2e changed the codes of {len(changed)} linears (e.g. {changed[0]})")

    # Done: the start and the training checkpoints (about 1.2 GB on SmolLM2) only served a resume; the
    # training log stays beside the run's results.
    shutil.rmtree(start_folder, ignore_errors=True)
    shutil.rmtree(work / "train" / "checkpoints", ignore_errors=True)
    details = dict(result.details) | {"e2e": {"settings": settings, "training": train_result_summary(train),
                                               "seconds": time.perf_counter() - start}}
    return type(result)(result.method, result.grid, tuned.weights, result.seconds + time.perf_counter() - start,
                        method_args=dict(result.method_args), details=details, grid_overrides=tuned.grid_overrides)


def quantized_row(model, result, evaluation: dict, file_bytes: int | None, seconds: float) -> dict:
    """The quantized model's row. A run resumed from a checkpoint counts the whole run: ``quantize_seconds``
    and ``seconds`` add the earlier pieces' calibration time (each up to its last checkpoint) to this piece's,
    which ``quantize_seconds_this_piece`` and ``seconds_this_piece`` keep."""
    group = result.grid.group
    bits = result.mean_code_bits() if result.grid_overrides else float(result.grid.bits)
    method = result.method + (" + rotation" if "rotation" in result.details else "")
    if "online_rotation" in result.details:  # e.g. "+ online R3+R4+KV8-asym"
        method += " + online " + OnlineRotationSettings(**result.details["online_rotation"]["settings"]).describe()
    if result.act_grids:  # the inputs of its linears are quantized too: the row says on which grid
        method += f" + {result.describe_activations()} activations"
    earlier = float(result.details.get("earlier_pieces_seconds") or 0.0)
    row = {"model": "quantized", "method": method, "bits": round(bits, 2),
           "grid": result.describe_grids(), "group": group, **evaluation,
           "size": size_report(model, result.grid, result.weights, result.grid_overrides).to_dict(),
           "file_bytes": file_bytes, "quantize_seconds": result.seconds + earlier, "seconds": seconds + earlier,
           "head": head_type_of(model)}
    if result.details.get("resumed_from_block"):
        row |= {"resumed_from_block": result.details["resumed_from_block"],
                "num_blocks": result.details.get("num_blocks"), "pieces": result.details.get("pieces"),
                "quantize_seconds_this_piece": result.seconds, "seconds_this_piece": seconds}
    if "mixed_precision" in result.details:  # the bit allocation per layer, for results.json and results.md
        row["mixed_precision"] = result.details["mixed_precision"]
    if "gguf_fallbacks" in result.details:  # the linears on llama.cpp's fallback type, with their widths
        row["gguf_fallbacks"] = result.details["gguf_fallbacks"]
    if result.act_grids:
        row["activations"] = result.activations_record()
    return row


def save_model_folder(model, tokenizer, folder: Path, result, skip, save_format: str, float_dtype: str) -> int:
    """Save a quantized ``model`` (fake-quantized in place, ``result`` its weights) as ``save_format`` (packed:
    packed in place first; fake: float weights and the codes sidecar); returns the folder's bytes."""
    from ..export.hf import save_fake_quantized, save_packed
    from ..nn import pack_model
    from ..quant.grids import grid_to_dict
    from ..utils.io import folder_bytes

    grid, overrides = grid_to_dict(result.grid), result.grid_overrides_dict()
    activations = result.activations_record()  # recorded, so that loading the folder quantizes them again
    if save_format == "packed":
        pack_model(model, result.weights)
        if result.act_grids:  # the packed modules replaced the linears that held the quantizers
            from ..nn.activation_quant import install_activation_quantizers

            install_activation_quantizers(model, result.act_grids)
        save_packed(model, tokenizer, folder, result.method, grid, skip, result.method_args, float_dtype=float_dtype,
                    grid_overrides=overrides, activations=activations)
    else:
        save_fake_quantized(model, tokenizer, folder, result.method, grid, skip, result.method_args,
                            weights=result.weights, grid_overrides=overrides, activations=activations)
    return folder_bytes(folder)


def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The greedy continuation of ``prompt``, so a user sees whether a quantized model still speaks."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def peak_rss_megabytes() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gguf_fallback_note(row: dict) -> str | None:
    """A line for the report naming every linear that a GGUF grid's type could not hold (None if none)."""
    fallbacks = row.get("gguf_fallbacks")
    if not fallbacks:
        return None
    listed = "; ".join(f"{name} ({spec['in_features']} wide): {spec['type'].upper()} instead of "
                       f"{spec['instead_of'].upper()}" for name, spec in sorted(fallbacks.items()))
    return (f"{len(fallbacks)} linears are on llama.cpp's fallback type, as its quantize tool stores them, because "
            f"their type's blocks do not divide their input width: {listed}")


def resume_note(row: dict) -> str | None:
    """A line for the report of a run resumed from a checkpoint (None otherwise)."""
    if not row.get("resumed_from_block"):
        return None
    pieces = row.get("pieces") or []
    return (f"resumed from block {row['resumed_from_block']} of {row.get('num_blocks')}: the run was made in "
            f"{len(pieces)} pieces; quantize_seconds {row['quantize_seconds']:.1f} and seconds {row['seconds']:.1f} "
            f"count them all (earlier pieces up to their last checkpoint), this piece "
            f"{row['quantize_seconds_this_piece']:.1f} and {row['seconds_this_piece']:.1f}")


def default_run_folder(model: str, tag: str) -> Path:
    """A new run folder ``runs/<model>-<tag>-<time>``, created (a suffix when two runs share the second)."""
    from ..utils.runs import new_run_folder

    return new_run_folder(model, tag)

