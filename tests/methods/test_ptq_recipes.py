from dataclasses import fields

import pytest

from tritium.methods import config_from_dict, get_method, method_names
from tritium.methods.tesseraq import TesseraQConfig
from tritium.models import tiny_model, tiny_tokenizer
from tritium.recipes import load_recipe, recipe_names
from tritium.runner import quantize_model

PTQ_RECIPES = [n for n in recipe_names() if any(m in n for m in ("gptq", "awq", "tesseraq"))]
# How a run executes, not what it computes: these may stay at their defaults in a recipe.
PIPELINE_ONLY = {"grid", "skip", "device", "checkpoint_dir", "offload_activations", "offload_dir", "seed"}
# Which grid each linear gets, like "grid": mixed precision, off unless a recipe sets it.
MIXED_PRECISION = {"grid_overrides", "bits_budget", "candidate_grids", "sensitivity_samples"}
# Activation quantization: set by the recipe's top-level act_* keys, never by method_args.
ACTIVATIONS = {"act_grid", "act_clip_candidates", "act_clip_ratios"}


def test_the_calibrated_methods_are_registered_beside_rtn():
    assert {"rtn", "gptq", "awq", "tesseraq"} <= set(method_names())


def test_every_method_has_full_and_cpu_recipes():
    for method in ("gptq", "awq", "tesseraq"):
        assert f"w2g128-{method}" in PTQ_RECIPES and f"w2g128-{method}-cpu" in PTQ_RECIPES
        assert f"w3g128-{method}" in PTQ_RECIPES


@pytest.mark.parametrize("name", PTQ_RECIPES)
def test_ptq_recipes_build_their_configs(name):
    recipe = load_recipe(name)
    config = config_from_dict(recipe["method"], recipe["grid"], **dict(recipe["method_args"]))
    assert config.grid.ragged_groups  # SmolLM2's widths 576 and 1536 are not all multiples of 128
    assert recipe["calib"]["samples"] >= 1


@pytest.mark.parametrize("name", PTQ_RECIPES)
def test_ptq_recipes_spell_out_every_hyperparameter(name):
    """TesseraQ's recipes list AWQ's initialisation settings too: a recipe alone says what was run."""
    recipe = load_recipe(name)
    listed = set(recipe["method_args"])
    options = {f.name for f in fields(get_method(recipe["method"]).config_class)}
    missing = options - PIPELINE_ONLY - MIXED_PRECISION - ACTIVATIONS - listed
    assert not missing


def test_the_tesseraq_paper_recipes_hold_the_papers_settings():
    for name in ("w2g128-tesseraq", "w3g128-tesseraq"):
        args = load_recipe(name)["method_args"]
        assert len(args["soft_fractions"]) == 20 and args["soft_fractions"][0] == 0.8
        assert args["soft_fractions"][-1] == 0.005  # 99.5% hard at the last stage, then all
        assert (args["lr"], args["steps_per_stage"], args["batch_size"], args["dst"]) == (1e-3, 250, 4, True)
        assert args["awq_init"] and tuple(args["soft_fractions"]) == TesseraQConfig().soft_fractions


def test_a_cpu_recipe_runs_end_to_end_through_the_runner(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    recipe = load_recipe("w2g128-gptq-cpu")
    recipe["grid"] = {"kind": "uniform", "bits": 2, "group": 32}
    recipe["calib"] = {"source": str(text), "samples": 2, "seqlen": 16, "seed": 0}
    result, config = quantize_model(tiny_model(), tiny_tokenizer(), recipe)
    assert result.method == "gptq" and len(result.weights) == 14
    assert result.details["calibration_shape"] == [2, 16]


@pytest.mark.parametrize("name", ["w4g128-cpu", "w3g128-cpu", "w2g128-cpu", "ternary-g128-cpu"])
@pytest.mark.parametrize("family", ["qwen2", "gemma"])
def test_the_best_cpu_recipes_run_unchanged_on_other_families(name, family, data_dir, tokenizer):
    recipe = load_recipe(name)
    assert recipe["method"] == ("gptq" if name == "w4g128-cpu" else "tesseraq")
    model = tiny_model(family, max_position_embeddings=recipe["calib"]["seqlen"])
    result, config = quantize_model(model, tokenizer, recipe, data_dir)
    assert len(result.weights) == 14 and ("rotation" in result.details) == bool(recipe["rotate"])
    assert result.details["calibration_shape"] == [recipe["calib"]["samples"], recipe["calib"]["seqlen"]]
    if recipe.get("e2e"):  # the scales were tuned end to end, on the recipe's own budget
        train = recipe["e2e"]["train"]
        batch = train["micro_batch_size"] * train.get("grad_accum", 1) * recipe["e2e"]["data"]["seqlen"]
        assert 0 <= train["tokens"] - result.details["e2e"]["training"]["tokens"] < batch
