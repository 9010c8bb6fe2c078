"""From a job description's options to the recipe and evaluation settings it runs: the recipe first,
then every option that is set overrides the recipe's value (the CLI's flags are these options)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..recipes import load_recipe


@dataclass(kw_only=True)
class RunFolderOptions:
    """Where a job writes (its run folder; None: a new one under runs/) and whether it shows progress bars."""

    out: str | None = None
    overwrite: bool = False
    no_progress: bool = False


@dataclass(kw_only=True)
class CommonEvalOptions(RunFolderOptions):
    """The evaluation options of every job that evaluates a model, without the folder of the evaluation data,
    whose flag differs (``--data`` in quantize and eval, ``--data-dir`` in distill)."""

    eval: list[str] | None = None
    zeroshot: list[str] | None = None
    limit: int | None = None
    zeroshot_limit: int | None = None
    harness: list[str] | None = None
    seqlen: int | None = None
    batch_size: int | None = None


@dataclass(kw_only=True)
class EvalOptions(CommonEvalOptions):
    """The evaluation and run-folder options quantize and eval share (the CLI's shared flags)."""

    data: str | None = None


def eval_settings(options, recipe_eval: dict) -> dict:
    """The recipe's evaluation settings with the job's own (eval, zeroshot, limit, ...) over them."""
    settings = dict(recipe_eval)
    for key, value in [("datasets", options.eval), ("zeroshot", options.zeroshot), ("limit", options.limit),
                       ("zeroshot_limit", options.zeroshot_limit), ("seqlen", options.seqlen),
                       ("batch_size", options.batch_size), ("scorers", options.harness)]:
        if value is not None:
            settings[key] = value
    from ..eval.harness import check_scorers

    check_scorers(settings.get("scorers"), settings.get("zeroshot"))  # before any model loads
    return settings


def method_recipe(method: str | None) -> str | None:
    """The shipped recipe a bare ``--method`` starts from: the paper's settings where a GPU is present,
    the reduced ``-cpu`` ones otherwise (the paper's would take hours on a CPU)."""
    if not method:
        return None
    import torch

    from ..recipes import recipe_names

    name = f"w2g128-{method}" + ("" if torch.cuda.is_available() else "-cpu")
    return name if name in recipe_names() else None


def quantize_recipe(options) -> dict:
    """The recipe a quantize job runs: ``options.recipe`` (or the one its method starts from), overridden."""
    recipe_name = options.recipe or method_recipe(options.method)
    if recipe_name and not options.recipe:
        print(f"tritium: --method {options.method} without --recipe: starting from recipe {recipe_name}",
              file=sys.stderr)
    recipe = load_recipe(recipe_name)
    grid = dict(recipe["grid"])
    if options.grid and options.grid != grid.get("kind"):
        grid = {"kind": options.grid, **({"group": grid["group"]} if "group" in grid else {})}
    for key, value in [("bits", options.bits), ("group", options.group), ("variant", options.variant),
                       ("symmetric", options.symmetric), ("ragged_groups", options.ragged_groups)]:
        if value is not None:
            grid[key] = value
    recipe["grid"] = grid
    if options.method:
        recipe["method"] = options.method
    if options.rotate is not None:
        recipe["rotate"] = (recipe.get("rotate") or True) if options.rotate else False
    method_args = dict(recipe.get("method_args") or {})
    for key, value in [("skip", options.skip), ("checkpoint_dir", options.checkpoint_dir or None),
                       ("offload_dir", options.offload_dir or None), ("bits_budget", options.bits_budget)]:
        if value is not None:
            method_args[key] = value
    recipe["method_args"] = method_args
    for key, value in [("source", options.calib), ("samples", options.calib_samples), ("seqlen", options.calib_seqlen)]:
        if value is not None:
            recipe["calib"][key] = value
    recipe["eval"] = eval_settings(options, recipe["eval"])
    return recipe


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
