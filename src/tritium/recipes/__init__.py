"""YAML recipes shipped with tritium. Any CLI flag overrides a recipe value.

A recipe is checked when it loads: its keys (an unknown one is refused with the closest known key
suggested), the type and range of every setting of the grid, evaluation and calibration, and a
``method``, which a recipe file must name. A wrong value is refused, never coerced (``symmetric: "no"``
is not a boolean) nor replaced by a default.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from ..utils.errors import TritiumError

RECIPE_DIR = Path(__file__).parent
# e2e: end-to-end scale tuning after PTQ (tritium.train.e2e); absent by default
RECIPE_KEYS = {"description", "method", "grid", "method_args", "eval", "calib", "rotate", "e2e"}
DEFAULT_RECIPE = {
    "description": "",
    "method": "rtn",
    "grid": {"kind": "uniform", "bits": 4, "group": 128},
    "method_args": {},
    # false, true, or {seed, kind, heads}: fold norms and rotate the weights first (tritium.models.rotation)
    "rotate": False,
    "eval": {"datasets": ["wikitext2"], "seqlen": 2048, "limit": None, "zeroshot": [], "zeroshot_limit": None,
             "batch_size": 1},
    "calib": {"source": "wikitext2-valid", "samples": 128, "seqlen": 2048, "seed": 0},
}


class RecipeError(TritiumError, ValueError):
    """A recipe that cannot be found or read."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | None) -> dict:
    """The recipe merged over the defaults; ``None`` gives the defaults."""
    recipe = copy.deepcopy(DEFAULT_RECIPE)
    if name_or_path is None:
        return recipe
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"recipe {name_or_path!r} not found: pass a YAML file or one of {', '.join(recipe_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of {sorted(RECIPE_KEYS)}")
    _check_keys(data, RECIPE_KEYS, f"recipe {path}")
    if "method" not in data:
        raise RecipeError(f"recipe {path} names no method: add e.g. `method: rtn` (or gptq, awq, tesseraq, dlt)")
    validate_recipe(data, f"recipe {path}")
    for key, value in data.items():
        if isinstance(recipe.get(key), dict) and key != "grid":
            recipe[key].update(value or {})
        else:
            recipe[key] = value
    recipe["name"] = path.stem
    return recipe


# --------------------------------------------------------------------------- validation

GRID_KEYS = {"uniform": {"kind", "bits", "group", "symmetric", "ragged_groups"},
             "ternary": {"kind", "variant", "group", "ragged_groups"},
             "gguf": {"kind", "type"}}  # a llama.cpp block format, e.g. {kind: gguf, type: q4_0}
EVAL_KEYS = {"datasets", "seqlen", "limit", "zeroshot", "zeroshot_limit", "batch_size", "scorers"}
CALIB_KEYS = {"source", "samples", "seqlen", "seed"}


def _suggest(key, known) -> str:
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(mapping: dict, known: set, where: str) -> None:
    for key in mapping:
        if key not in known:
            raise RecipeError(f"{where} has an unknown key {key!r}{_suggest(key, known)}; the keys are "
                              f"{', '.join(sorted(known))}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or value < 1:
        raise RecipeError(f"{where} must be a positive whole number, not {value!r}"
                          + (" (or null for no limit)" if optional else ""))


def _boolean(value, where: str) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"{where} must be true or false, not {value!r}: write it unquoted (YAML reads \"no\" "
                          "in quotes as text)")


def _string_list(value, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{where} must be a list of names, e.g. [wikitext2], not {value!r}")


def validate_grid(grid, where: str) -> None:
    if not isinstance(grid, dict):
        raise RecipeError(f"{where}: grid must be a mapping such as {{kind: uniform, bits: 2, group: 128}}, not "
                          f"{grid!r}" + (f": write `grid: {{kind: {grid}}}`" if isinstance(grid, str) else ""))
    kind = grid.get("kind", "uniform")
    if kind not in GRID_KEYS:
        raise RecipeError(f"{where}: grid kind {kind!r} is unknown{_suggest(kind, GRID_KEYS)}: use {', '.join(GRID_KEYS)}")
    _check_keys(grid, GRID_KEYS[kind], f"{where}: the {kind} grid")
    if "bits" in grid and not _is_int(grid["bits"]):
        raise RecipeError(f"{where}: grid bits must be a whole number (2, 3, 4, 8), not {grid['bits']!r}")
    group = grid.get("group")
    if group is not None and group not in ("channel", "tensor") and (not _is_int(group) or group < 1):
        raise RecipeError(f"{where}: grid group must be a positive whole number, 'channel' or 'tensor', not {group!r}")
    for key in ("symmetric", "ragged_groups"):
        if key in grid:
            _boolean(grid[key], f"{where}: grid {key}")
    if "variant" in grid and not isinstance(grid["variant"], str):
        raise RecipeError(f"{where}: grid variant must be absmean, twn or dlt, not {grid['variant']!r}")


def validate_recipe(recipe: dict, where: str = "the recipe") -> None:
    """Refuse a recipe (a file's mapping, or one merged with flags) whose settings have the wrong type or range."""
    if "method" in recipe and (not isinstance(recipe["method"], str) or not recipe["method"]):
        raise RecipeError(f"{where}: method must be a method name such as rtn or gptq, not {recipe['method']!r}")
    if "grid" in recipe:
        validate_grid(recipe["grid"], where)
    for key in ("method_args", "eval", "calib"):
        if key in recipe and recipe[key] is not None and not isinstance(recipe[key], dict):
            raise RecipeError(f"{where}: {key} must be a mapping of settings, not {recipe[key]!r}")
    rotate = recipe.get("rotate")
    if rotate is not None and not isinstance(rotate, (bool, dict)):
        raise RecipeError(f"{where}: rotate must be true, false or a mapping {{seed, kind, heads}}, not {rotate!r}")
    evaluation = recipe.get("eval") or {}
    _check_keys(evaluation, EVAL_KEYS, f"{where}: eval")
    _string_list(evaluation.get("datasets"), f"{where}: eval datasets")
    _string_list(evaluation.get("zeroshot"), f"{where}: eval zeroshot")
    _string_list(evaluation.get("scorers"), f"{where}: eval scorers")
    for key, optional in [("seqlen", False), ("batch_size", False), ("limit", True), ("zeroshot_limit", True)]:
        if key in evaluation:
            _positive_int(evaluation[key], f"{where}: eval {key}", optional)
    calib = recipe.get("calib") or {}
    _check_keys(calib, CALIB_KEYS, f"{where}: calib")
    if "source" in calib and not isinstance(calib["source"], str):
        raise RecipeError(f"{where}: calib source must be a data set split or a file, not {calib['source']!r}")
    for key in ("samples", "seqlen"):
        if key in calib:
            _positive_int(calib[key], f"{where}: calib {key}")
    if "seed" in calib and not _is_int(calib["seed"]):
        raise RecipeError(f"{where}: calib seed must be a whole number, not {calib['seed']!r}")
