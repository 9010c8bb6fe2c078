"""YAML recipes shipped with tritium. Any CLI flag overrides a recipe value."""

from __future__ import annotations

import copy
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
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"recipe {path} has unknown key(s) {sorted(unknown)}; allowed: {sorted(RECIPE_KEYS)}")
    for key, value in data.items():
        if isinstance(recipe.get(key), dict) and key != "grid":
            recipe[key].update(value or {})
        else:
            recipe[key] = value
    recipe["name"] = path.stem
    return recipe
