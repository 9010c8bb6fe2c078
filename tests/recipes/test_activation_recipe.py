"""The recipe's activation settings (act_bits, act_group, act_symmetric, act_clip_ratio, act_clip_search): typed,
checked like the other fields, set by the quantize job's --act-* flags, and absent from weights-only recipes."""

import pytest

from tritium.jobs.options import quantize_recipe
from tritium.jobs.quantize import QuantizeJob
from tritium.quant.activations import ActivationGrid
from tritium.recipes import (DEFAULT_ACT_CLIP_RATIOS, Recipe, RecipeError, activation_clip_candidates_of,
                             activation_grid_of, load_recipe, load_recipe_object, recipe_names)
from tritium.utils.errors import TritiumError

BASE = "method: rtn\ngrid: {kind: uniform, bits: 4, group: 128}\n"
WA_RECIPES = ["w4a8-rtn", "w4a4-rtn", "w4a4-gptq-cpu", "w4a4-tesseraq-cpu", "w3a4-tesseraq-cpu"]
TRAINING_WA_RECIPES = ["ternaryllm-a8-cpu"]  # distill recipes: W1.58A8


def refused(call, phrase):
    with pytest.raises(RecipeError) as caught:
        call()
    assert phrase in str(caught.value), str(caught.value)
    assert isinstance(caught.value, TritiumError)
    return str(caught.value)


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_a_weights_only_recipe_has_no_activation_grid_and_no_act_keys():
    for name in recipe_names():
        if name in WA_RECIPES + TRAINING_WA_RECIPES:
            continue
        recipe = load_recipe_object(name)
        assert recipe.activation_grid() is None and recipe.activation_clip_candidates() is None
        assert not any(key.startswith("act_") for key in recipe.to_dict())


def test_the_shipped_wa_recipes_give_their_grids():
    assert set(WA_RECIPES) <= set(recipe_names())
    assert load_recipe_object("w4a8-rtn").activation_grid() == ActivationGrid(bits=8, symmetric=True, group="token")
    for name in WA_RECIPES[1:]:
        recipe = load_recipe_object(name)
        assert recipe.activation_grid() == ActivationGrid(bits=4, symmetric=False, group="token", clip_ratio=1.0)
        assert recipe.activation_clip_candidates() == DEFAULT_ACT_CLIP_RATIOS == (1.0, 0.95, 0.9, 0.85, 0.8)
        assert recipe.grid.group == 128 and recipe.grid.ragged_groups and recipe.grid.symmetric is False
    assert load_recipe_object("w3a4-tesseraq-cpu").grid.bits == 3
    # the W3A4 recipe is the W4A4 one on a 3-bit grid, so the table's columns differ only in their grids
    w3, w4 = load_recipe("w3a4-tesseraq-cpu"), load_recipe("w4a4-tesseraq-cpu")
    assert w3["method_args"] == w4["method_args"] and w3["calib"] == w4["calib"]
    assert {k: v for k, v in w3.items() if k.startswith("act_")} == {k: v for k, v in w4.items() if k.startswith("act_")}


def test_a_file_sets_the_grid_and_the_defaults_fill_the_rest(tmp_path):
    recipe = load_recipe_object(write(tmp_path, BASE + "act_bits: 6\n"))
    assert recipe.activation_grid() == ActivationGrid(bits=6)  # per token, symmetric, no clipping
    assert recipe.to_dict()["act_bits"] == 6 and "act_group" not in recipe.to_dict()
    listed = load_recipe_object(write(tmp_path, BASE + "act_bits: 4\nact_group: 32\nact_clip_search: [1.0, 0.7]\n"))
    assert listed.activation_grid() == ActivationGrid(bits=4, group=32)
    assert listed.activation_clip_candidates() == (1.0, 0.7) and listed.to_dict()["act_clip_search"] == [1.0, 0.7]
    assert listed.with_overrides({}) == listed
    mapping = listed.to_dict()
    assert activation_grid_of(mapping) == listed.activation_grid()
    assert activation_clip_candidates_of(mapping) == (1.0, 0.7)


@pytest.mark.parametrize("line, phrase", [
    ("act_bits: 3\n", "act_bits must be one of 4, 6, 8 (the bits of each activation), not 3"),
    ("act_bits: \"8\"\n", "act_bits must be one of 4, 6, 8"),
    ("act_bits: true\n", "act_bits must be one of 4, 6, 8"),
    ("act_bits: 8\nact_group: channel\n", "act_group must be 'token' or a positive group size, not 'channel'"),
    ("act_bits: 8\nact_group: 0\n", "act_group must be 'token' or a positive group size, not 0"),
    ("act_bits: 8\nact_symmetric: \"no\"\n", "act_symmetric must be true or false, not 'no'"),
    ("act_bits: 8\nact_clip_ratio: 1.5\n", "act_clip_ratio must be a clipping ratio in (0, 1], not 1.5"),
    ("act_bits: 8\nact_clip_search: [1.0, 0]\n", "act_clip_search must be true, false or a list of clipping ratios"),
    ("act_bits: 8\nact_clip_search: []\n", "act_clip_search must be true, false or a list"),
    ("act_group: 32\n", "act_group 32 sets activation quantization without its bits: add act_bits: 8"),
    ("act_bits: 4\nact_clip_ratio: 0.9\nact_clip_search: true\n", "both act_clip_ratio and act_clip_search are set"),
    ("act_bitz: 4\n", "unknown key 'act_bitz' (did you mean 'act_bits'?)"),
])
def test_a_bad_activation_setting_in_a_file_is_refused(tmp_path, line, phrase):
    message = refused(lambda: load_recipe_object(write(tmp_path, BASE + line)), phrase)
    assert message.startswith(f"recipe {tmp_path / 'r.yaml'}")


def test_a_recipe_built_in_python_is_checked_the_same_way():
    assert Recipe(act_bits=8, act_group=64).activation_grid() == ActivationGrid(bits=8, group=64)
    assert refused(lambda: Recipe(act_bits=3), "act_bits must be one of 4, 6, 8").startswith("Recipe:")
    refused(lambda: Recipe(act_symmetric=False), "act_symmetric False sets activation quantization without its bits")


@pytest.mark.parametrize("options, phrase", [
    ({"act_bits": 3}, "--act-bits 3 is not one of 4, 6, 8 (the bits of each activation): pass 4, 6, 8"),
    ({"act_bits": 8, "act_group": 0}, "--act-group 0 is not 'token' or a positive group size"),
    ({"act_bits": 4, "act_clip_ratio": 1.5}, "--act-clip-ratio 1.5 is not a clipping ratio in (0, 1]"),
    ({"act_group": 64}, "--act-group 64 sets activation quantization without its bits: add --act-bits 8"),
    ({"act_bits": 4, "act_clip_ratio": 0.9, "act_clip_search": True},
     "both --act-clip-ratio and --act-clip-search are set"),
])
def test_a_bad_activation_flag_is_refused_naming_it(options, phrase):
    refused(lambda: quantize_recipe(QuantizeJob(model="unused", recipe="w4g128-rtn", **options)), phrase)


def test_activation_flags_override_the_recipe_and_the_rest_stays():
    recipe = quantize_recipe(QuantizeJob(model="unused", recipe="w4g128-rtn", act_bits=4, act_group=32,
                                         act_symmetric=False, act_clip_ratio=0.9))
    assert activation_grid_of(recipe) == ActivationGrid(bits=4, group=32, symmetric=False, clip_ratio=0.9)
    assert recipe["grid"] == load_recipe("w4g128-rtn")["grid"]
    a8 = quantize_recipe(QuantizeJob(model="unused", recipe="w4a4-rtn", act_bits=8, act_symmetric=True,
                                     act_clip_search=False))
    assert activation_grid_of(a8) == ActivationGrid(bits=8) and activation_clip_candidates_of(a8) is None
