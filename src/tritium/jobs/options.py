"""From a job description's options to the recipe and evaluation settings it runs: the recipe first,
then every option that is set overrides the recipe's value (the CLI's flags are these options)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..recipes import load_recipe_object


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


# (evaluation setting, the option that overrides it); an option's flag is its name (batch_size: --batch-size)
EVAL_OPTIONS = [("datasets", "eval"), ("zeroshot", "zeroshot"), ("limit", "limit"),
                ("zeroshot_limit", "zeroshot_limit"), ("seqlen", "seqlen"), ("batch_size", "batch_size"),
                ("scorers", "harness")]
# the same for the rest of a quantize job's recipe
RECIPE_OPTIONS = [("grid.kind", "grid"), ("grid.bits", "bits"), ("grid.group", "group"), ("grid.variant", "variant"),
                  ("grid.symmetric", "symmetric"), ("grid.ragged_groups", "ragged_groups"), ("method", "method"),
                  ("method_args.skip", "skip"), ("method_args.checkpoint_dir", "checkpoint_dir"),
                  ("method_args.offload_dir", "offload_dir"), ("method_args.bits_budget", "bits_budget"),
                  ("calib.source", "calib"), ("calib.samples", "calib_samples"), ("calib.seqlen", "calib_seqlen"),
                  *((f"eval.{key}", option) for key, option in EVAL_OPTIONS)]


def flag_of(option: str) -> str:
    return "--" + option.replace("_", "-")


def eval_settings(options, recipe_eval: dict) -> dict:
    """The recipe's evaluation settings with the job's own (eval, zeroshot, limit, ...) over them."""
    settings = dict(recipe_eval)
    for key, option in EVAL_OPTIONS:
        if getattr(options, option) is not None:
            settings[key] = getattr(options, option)
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
    """The recipe a quantize job runs: ``options.recipe`` (or the one its method starts from), with each
    option that is set over its value, checked as a recipe file is (a bad value names its flag)."""
    recipe_name = options.recipe or method_recipe(options.method)
    if recipe_name and not options.recipe:
        print(f"tritium: --method {options.method} without --recipe: starting from recipe {recipe_name}",
              file=sys.stderr)
    recipe = load_recipe_object(recipe_name)
    changes, flags = {}, {}
    for key, option in RECIPE_OPTIONS:
        value = getattr(options, option)
        if option in ("checkpoint_dir", "offload_dir"):
            value = value or None  # an empty folder name is no folder
        if option == "grid" and value is not None:  # a kind, or gguf:<type> for the kind and its type together
            from ..quant.grids import parse_grid_name

            for setting, part in parse_grid_name(value).items():
                changes[f"grid.{setting}"], flags[f"grid.{setting}"] = part, "--grid"
        elif value is not None:
            changes[key], flags[key] = value, flag_of(option)
    if options.rotate is not None:  # --rotate keeps the recipe's rotation settings where it has them
        changes["rotate"], flags["rotate"] = (recipe.rotate or True) if options.rotate else False, "--rotate"
    settings = recipe.with_overrides(changes, flags).to_dict()
    from ..eval.harness import check_scorers

    check_scorers(settings["eval"].get("scorers"), settings["eval"].get("zeroshot"))  # before any model loads
    return settings


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
