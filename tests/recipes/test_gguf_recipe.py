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


def test_the_grid_flag_names_a_gguf_type_in_one_word():
    from tritium.jobs.options import quantize_recipe
    from tritium.jobs.quantize import QuantizeJob

    # the recipe's uniform grid (and its group) gives way to the GGUF type, whose blocks are fixed
    recipe = quantize_recipe(QuantizeJob(model="m", recipe="w2g128-rtn", grid="gguf:q2_k"))
    assert recipe["grid"] == {"kind": "gguf", "type": "q2_k"}
    assert quantize_recipe(QuantizeJob(model="m", recipe="w2g128-rtn", grid="gguf:TQ1_0"))["grid"] == {
        "kind": "gguf", "type": "tq1_0"}
    assert quantize_recipe(QuantizeJob(model="m", recipe="w2g128-rtn", grid="ternary"))["grid"]["kind"] == "ternary"


def test_a_grid_flag_with_an_unknown_gguf_type_lists_the_known_ones():
    from tritium.jobs.options import quantize_recipe
    from tritium.jobs.quantize import QuantizeJob
    from tritium.utils.errors import TritiumError

    with pytest.raises(TritiumError, match=r"--grid gguf:q2_ks: GGUF type 'q2_ks' is unknown; the GGUF grids are "
                                           r"gguf:q4_0, gguf:q4_1, .*gguf:q2_k, gguf:q3_k, .*gguf:tq2_0"):
        quantize_recipe(QuantizeJob(model="m", recipe="w2g128-rtn", grid="gguf:q2_ks"))
    with pytest.raises(RecipeError, match=r"--bits 2"):  # a GGUF type fixes its bits: a bits flag is refused
        quantize_recipe(QuantizeJob(model="m", recipe="w2g128-rtn", grid="gguf:q2_k", bits=2))


def test_the_cli_takes_the_gguf_grid_spelling():
    from tritium.cli import build_parser

    args = build_parser().parse_args(["quantize", "--model", "m", "--grid", "gguf:q3_k"])
    assert args.grid == "gguf:q3_k"
