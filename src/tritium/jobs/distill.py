"""The distill job: distillation into a ternary (DLT) or uniform QAT student, evaluated beside the float
model, saved with its report. ``tritium distill`` builds a :class:`DistillJob` from its flags
(:mod:`tritium.cli.distill`) and calls :func:`distill_model`; Python code does the same::

    from tritium.jobs import DistillJob, distill_model
    result = distill_model(DistillJob(model="smollm2-135m", recipe="ternaryllm-cpu", tokens=20_000, out="runs/d"))
    result.rows[-1]["perplexity"]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

from .options import JOB_EVAL_OPTIONS, CommonEvalOptions, flag_of, option_changes, overridden, torch_dtype
from .quantize import ModelReport


@dataclass(kw_only=True)
class DistillJob(CommonEvalOptions):
    """What to distill and how; the field names are the CLI's flags' (``--lr-quant`` → lr_quant; ``--data`` is
    ``train_data``, ``--train`` is ``trainable``, ``--data-dir`` the evaluation data folder). A ``None`` option
    leaves the recipe's value."""

    model: str
    dtype: str = "float32"
    device: str = "cpu"
    recipe: str = "ternaryllm"
    tokens: int | None = None
    steps: int | None = None
    train_data: list[str] | None = None
    train_seqlen: int | None = None
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    lr_quant: float | None = None
    grid: str | None = None  # uniform, ternary or gguf:<type> (the recipe's grid kind, or a llama.cpp format)
    group: int | str | None = None
    bits: int | None = None
    variant: str | None = None
    off_weight: float | None = None
    kl_weight: float | None = None
    ce_weight: float | None = None
    init_from: str | None = None
    trainable: str | None = None
    start_latents: str | None = None
    # W·A training: every quantized linear's input quantized per token while training and after (recipe act_* keys)
    act_bits: int | None = None
    act_symmetric: bool | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    gradient_checkpointing: bool | None = None
    precision: str | None = None
    no_resume: bool = False
    no_float: bool = False
    no_save: bool = False
    # packed: the trained codes in tritium's packed layout (the default, as for quantize); fake: float weights
    format: str = "packed"
    float_dtype: str = "float16"  # --format packed: storage of the parts left in float (embeddings, norms)
    data_dir: str | None = None


@dataclass
class DistillResult(ModelReport):
    """The rows (float unless no_float, then the distilled model), the report and the saved model."""


# (recipe setting, the option that overrides it) of a distill job; the training budget is set apart (one clears
# the other)
_TRAIN = "method_args.train"
DISTILL_OPTIONS = [("grid.group", "group"), ("grid.variant", "variant"), ("grid.bits", "bits"),
                   *((f"{_TRAIN}.{key}", key) for key in ("micro_batch_size", "grad_accum", "checkpoint_every",
                                                           "eval_every", "gradient_checkpointing", "precision")),
                   (f"{_TRAIN}.optim.lr", "lr"), (f"{_TRAIN}.optim.lr_quant", "lr_quant"),
                   *((f"method_args.loss.{key}", key) for key in ("off_weight", "kl_weight", "ce_weight")),
                   ("method_args.data.sources", "train_data"), ("method_args.data.seqlen", "train_seqlen"),
                   *((f"method_args.{key}", key) for key in ("init_from", "trainable", "start_latents")),
                   ("act_bits", "act_bits"), ("act_symmetric", "act_symmetric"), *JOB_EVAL_OPTIONS]
# as before the typed recipe, an empty value of these leaves the recipe's
DISTILL_EMPTY_IS_UNSET = {"variant", "init_from", "trainable", "start_latents"}


def distill_recipe(job: DistillJob) -> dict:
    """The recipe a distill job trains: ``job.recipe`` (a dlt one), each option that is set over its value,
    checked once as a recipe file is."""
    from ..recipes import RecipeError, load_recipe_object

    recipe = load_recipe_object(job.recipe)
    if recipe.method != "dlt":
        raise RecipeError(f"recipe {job.recipe!r} is for method {recipe.method!r}; distill needs a dlt recipe "
                          "such as ternaryllm")
    changes, flags = {}, {}
    if job.grid is not None:  # first, as for quantize: a kind's change keeps --bits and --group
        from ..quant.grids import parse_grid_name

        for setting, part in parse_grid_name(job.grid).items():
            changes[f"grid.{setting}"], flags[f"grid.{setting}"] = part, "--grid"
    kind = changes.get("grid.kind", recipe.grid.kind)
    if job.bits is not None and kind != "uniform":
        raise RecipeError(f"--bits applies to a uniform grid; recipe {job.recipe!r} trains {kind}: use "
                          "a qat-* recipe such as qat-w2g128-cpu")
    more_changes, more_flags = option_changes(job, DISTILL_OPTIONS, DISTILL_EMPTY_IS_UNSET)
    changes, flags = changes | more_changes, flags | more_flags
    for budget, other in (("tokens", "steps"), ("steps", "tokens")):
        if getattr(job, budget) is not None:
            changes[f"{_TRAIN}.{budget}"], changes[f"{_TRAIN}.{other}"] = getattr(job, budget), None
            flags[f"{_TRAIN}.{budget}"] = flag_of(budget)
    if job.device is not None:  # no flag named: the trainer's device is where the job loads the model, always
        changes[f"{_TRAIN}.device"] = job.device
    if job.no_progress:
        changes[f"{_TRAIN}.progress"] = False
    return overridden(recipe, changes, flags).to_dict()


def distill_model(job: DistillJob) -> DistillResult:
    from ..data import load_eval_text
    from ..eval.perplexity import tokenize_eval_text
    from ..eval.report import write_report
    from ..methods import config_from_dict
    from ..models import load_model
    from ..recipes import activation_grid_of
    from ..train.data import check_training_sources
    from ..train.distill import distill, train_result_summary
    from ..utils.runs import claim_run_folder, job_settings
    from .preflight import check_eval_context, model_context, preflight_distill, preflight_loaded_model
    from .steps import evaluate, float_row, peak_rss_megabytes, quantized_row, save_model_folder

    recipe = distill_recipe(job)
    preflight_distill(job, recipe)
    # fails before the model loads, as does an --init-from on another grid (only its config.json is read)
    config = config_from_dict("dlt", recipe["grid"], **recipe["method_args"])
    act_grid = activation_grid_of(recipe)
    if act_grid is not None:
        config = replace(config, act_grid=act_grid)
    data = config.data_config()  # an evaluation split in the training data fails here, by content, whatever its name
    check_training_sources(data.sources, data.text_field, job.data_dir)

    from ..train.trainer import Trainer
    from ..utils.hardware import warn_if_emulated_bf16

    # said before the model loads and the float model is evaluated, not only when training starts
    planned = config.train_config()
    warn_if_emulated_bf16(planned.precision, Trainer._pick_device(planned.device))
    tag = recipe.get("name") or "distill"
    # The same job unfinished continues (the training checkpoint in it resumes, unless --no-resume).
    out = claim_run_folder(job.out, "distill", job_settings(job), job.overwrite, (job.model, tag)).path
    progress = not job.no_progress
    print(f"tritium: loading {job.model}", file=sys.stderr)
    model, tokenizer, source = load_model(job.model, dtype=torch_dtype(job.dtype), device=job.device)
    preflight_loaded_model(model, tokenizer)
    settings = recipe["eval"]
    check_eval_context(settings, model_context(model))  # else the evaluation after training fails
    rows, token_cache = [], {}
    if not job.no_float:
        print("tritium: evaluating the float model", file=sys.stderr)
        rows.append(float_row(model, tokenizer, settings, job.data_dir, progress, token_cache))
    eval_ids = None
    train_cfg = config.train_config()
    if train_cfg.eval_every and settings.get("datasets"):
        name = settings["datasets"][0]
        if name not in token_cache:
            token_cache[name] = tokenize_eval_text(tokenizer, load_eval_text(name, job.data_dir))
        eval_ids = token_cache[name]
    start = time.perf_counter()
    print(f"tritium: distilling into {config.grid.describe()} (run folder {out})", file=sys.stderr)
    result, train = distill(model, tokenizer, config, out / "train", eval_ids=eval_ids, data_path=job.data_dir,
                            resume=not job.no_resume)
    print("tritium: evaluating the distilled model", file=sys.stderr)
    evaluation = evaluate(model, tokenizer, settings, job.data_dir, progress, token_cache)
    model_folder, file_bytes = None, None
    if not job.no_save:
        model_folder = out / "model"
        # after the evaluation, which ran the same weights unpacked
        file_bytes = save_model_folder(model, tokenizer, model_folder, result, config.skip, job.format,
                                       job.float_dtype)
    rows.append(quantized_row(model, result, evaluation, file_bytes, time.perf_counter() - start))
    summary = {"title": f"{job.model} {tag}", "model": str(job.model), "source": source.describe(),
               "recipe": recipe, "training": train_result_summary(train), "log": str(out / "train" / "log.jsonl"),
               "peak_rss_mb": peak_rss_megabytes(),
               "notes": ["training data never includes a test split; the training log holds loss parts per step"]}
    json_path, md_path = write_report(out, summary, rows)
    return DistillResult(rows, summary, out, json_path, md_path, model_folder)
