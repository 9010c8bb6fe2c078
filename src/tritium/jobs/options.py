"""From a job description's options to the recipe and evaluation settings it runs: the recipe first,
then every option that is set overrides the recipe's value (the CLI's flags are these options)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..recipes import Recipe, load_recipe_object


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
JOB_EVAL_OPTIONS = [(f"eval.{key}", option) for key, option in EVAL_OPTIONS]
# the same for the rest of a quantize job's recipe (--grid, which may set the kind and a GGUF type, apart)
RECIPE_OPTIONS = [("grid.bits", "bits"), ("grid.group", "group"), ("grid.variant", "variant"),
                  ("grid.symmetric", "symmetric"), ("grid.ragged_groups", "ragged_groups"), ("method", "method"),
                  ("method_args.skip", "skip"), ("method_args.checkpoint_dir", "checkpoint_dir"),
                  ("method_args.offload_dir", "offload_dir"), ("method_args.bits_budget", "bits_budget"),
                  ("calib.source", "calib"), ("calib.samples", "calib_samples"), ("calib.seqlen", "calib_seqlen"),
                  ("act_bits", "act_bits"), ("act_group", "act_group"), ("act_symmetric", "act_symmetric"),
                  ("act_clip_ratio", "act_clip_ratio"), ("act_clip_search", "act_clip_search"),
                  ("online_rotation", "online_rotation"), ("kv_bits", "kv_bits"), *JOB_EVAL_OPTIONS]
# the options whose empty value means "not set", as it always has (an empty folder name is no folder)
EMPTY_IS_UNSET = {"checkpoint_dir", "offload_dir"}
# the options whose flag is not their name
FLAGS = {"train_data": "--data", "trainable": "--train"}


def flag_of(option: str) -> str:
    return FLAGS.get(option) or "--" + option.replace("_", "-")


def option_changes(options, table, empty_is_unset=EMPTY_IS_UNSET) -> tuple[dict, dict]:
    """The recipe changes that ``options`` set by ``table`` ((recipe key, option) pairs), and the flag of each
    (for :meth:`Recipe.with_overrides`). An option left at None changes nothing."""
    changes, flags = {}, {}
    for key, option in table:
        value = getattr(options, option)
        if option in empty_is_unset:
            value = value or None
        if value is not None:
            changes[key], flags[key] = value, flag_of(option)
    return changes, flags


def overridden(recipe: Recipe, changes: dict, flags: dict) -> Recipe:
    """``recipe`` with the job's ``changes``, checked once as a recipe file is (a bad value names its flag), and
    its zero-shot scorers checked against its tasks, before any model loads."""
    recipe = recipe.with_overrides(changes, flags)
    from ..eval.harness import check_scorers

    check_scorers(recipe.eval.scorers, recipe.eval.zeroshot)
    return recipe


def eval_settings(options) -> dict:
    """The evaluation settings of a job that evaluates without a recipe (eval): the default recipe's, with the
    job's options (eval, zeroshot, limit, ...) over them."""
    return overridden(Recipe(), *option_changes(options, JOB_EVAL_OPTIONS)).eval.to_dict()


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
    if options.grid is not None:  # a kind, or gguf:<type> for both; first, so that a kind's change keeps --bits
        from ..quant.grids import parse_grid_name

        for setting, part in parse_grid_name(options.grid).items():
            changes[f"grid.{setting}"], flags[f"grid.{setting}"] = part, "--grid"
    more_changes, more_flags = option_changes(options, RECIPE_OPTIONS)
    changes, flags = changes | more_changes, flags | more_flags
    if options.rotate is not None:  # --rotate keeps the recipe's rotation settings where it has them
        changes["rotate"], flags["rotate"] = (recipe.rotate or True) if options.rotate else False, "--rotate"
    return overridden(recipe, changes, flags).to_dict()


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
