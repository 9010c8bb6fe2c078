"""YAML recipes shipped with tritium. Any CLI flag overrides a recipe value.

A recipe file loads into a typed :class:`Recipe` (``tritium.recipes.schema``), checked as it loads: its
keys (an unknown one is refused with the closest known key suggested), the type and range of every
setting of the grid, evaluation and calibration, and a ``method``, which a recipe file must name. A wrong
value is refused, never coerced (``symmetric: "no"`` is not a boolean) nor replaced by a default.
:func:`load_recipe` gives the same recipe as the plain mapping the jobs consume.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .schema import (
    ACTIVATION_KEYS,
    CALIB_KEYS,
    DEFAULT_ACT_CLIP_RATIOS,
    EVAL_KEYS,
    GRID_KEYS,
    RECIPE_KEYS,
    CalibSpec,
    EvalSpec,
    GridSpec,
    Recipe,
    RecipeError,
    activation_clip_candidates_of,
    activation_grid_of,
    check_save_format,
    online_rotation_of,
)

__all__ = ["ACTIVATION_KEYS", "CALIB_KEYS", "DEFAULT_ACT_CLIP_RATIOS", "DEFAULT_RECIPE", "EVAL_KEYS", "GRID_KEYS",
           "RECIPE_DIR", "RECIPE_KEYS", "CalibSpec", "EvalSpec", "GridSpec", "Recipe", "RecipeError", "activation_clip_candidates_of",
           "activation_grid_of", "check_save_format", "load_recipe", "load_recipe_object", "online_rotation_of",
           "recipe_names"]

RECIPE_DIR = Path(__file__).parent
DEFAULT_RECIPE = Recipe().to_dict()


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe_object(name_or_path: str | None) -> Recipe:
    """The recipe file ``name_or_path`` (a path, or the name of a shipped recipe) over the defaults,
    checked; ``None`` gives the defaults."""
    if name_or_path is None:
        return Recipe()
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"recipe {name_or_path!r} not found: pass a YAML file or one of {', '.join(recipe_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    return Recipe.from_mapping(data, f"recipe {path}", name=path.stem)


def load_recipe(name_or_path: str | None) -> dict:
    """:func:`load_recipe_object` as the plain mapping the jobs consume (a fresh one each call)."""
    return load_recipe_object(name_or_path).to_dict()
