"""A recipe may quantize on a llama.cpp block format: ``grid: {kind: gguf, type: q4_0}``."""

import pytest

from tritium.methods import config_from_dict
from tritium.quant import GGUFBlockGrid
from tritium.recipes import RecipeError, load_recipe


def test_a_gguf_grid_recipe_loads_and_builds_its_grid(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: gptq\ngrid: {kind: gguf, type: q4_1}\n")
    recipe = load_recipe(str(path))
    assert recipe["grid"] == {"kind": "gguf", "type": "q4_1"}
    assert config_from_dict(recipe["method"], recipe["grid"]).grid == GGUFBlockGrid("q4_1")


def test_a_gguf_grid_takes_no_uniform_options(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("method: rtn\ngrid: {kind: gguf, type: q4_0, bits: 4}\n")
    with pytest.raises(RecipeError, match="unknown key 'bits'"):
        load_recipe(str(path))
    path.write_text("method: rtn\ngrid: {kind: guff}\n")
    with pytest.raises(RecipeError, match="did you mean 'gguf'.*use uniform, ternary, gguf"):
        load_recipe(str(path))
