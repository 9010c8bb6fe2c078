"""The typed Recipe: what a file or a job's options may set, and the plain mapping it gives the jobs."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from tritium.jobs.options import quantize_recipe
from tritium.jobs.quantize import QuantizeJob
from tritium.pack.layouts import PackError
from tritium.recipes import (DEFAULT_RECIPE, RECIPE_DIR, CalibSpec, EvalSpec, GridSpec, Recipe, RecipeError,
                             load_recipe, load_recipe_object, recipe_names)
from tritium.utils.errors import TritiumError

# The defaults and merge rule of load_recipe before the Recipe dataclass, kept here as the reference
# the typed recipe must reproduce: sections merged key by key over the defaults, the grid replaced whole.
DEFAULTS_BEFORE = {
    "description": "",
    "method": "rtn",
    "grid": {"kind": "uniform", "bits": 4, "group": 128},
    "method_args": {},
    "rotate": False,
    "eval": {"datasets": ["wikitext2"], "seqlen": 2048, "limit": None, "zeroshot": [], "zeroshot_limit": None,
             "batch_size": 1},
    "calib": {"source": "wikitext2-valid", "samples": 128, "seqlen": 2048, "seed": 0},
}


def merged_over_defaults(data: dict, name: str) -> dict:
    recipe = copy.deepcopy(DEFAULTS_BEFORE)
    for key, value in data.items():
        if isinstance(recipe.get(key), dict) and key != "grid":
            recipe[key].update(value or {})
        else:
            recipe[key] = value
    return recipe | {"name": name}


def write(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def refused(text_or_call, phrase, tmp_path=None):
    with pytest.raises(RecipeError) as caught:
        text_or_call() if callable(text_or_call) else load_recipe_object(write(tmp_path, text_or_call))
    assert phrase in str(caught.value), str(caught.value)
    assert isinstance(caught.value, TritiumError)
    return str(caught.value)


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_loads_into_a_recipe_that_gives_the_mapping_it_gave_before(name):
    recipe = load_recipe_object(name)
    assert isinstance(recipe, Recipe) and isinstance(recipe.grid, GridSpec) and recipe.name == name
    data = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())
    assert recipe.to_dict() == merged_over_defaults(data, name) == load_recipe(name)
    assert recipe.with_overrides({}) == recipe  # checked again, unchanged


def test_the_defaults_are_those_of_before():
    assert Recipe().to_dict() == DEFAULTS_BEFORE == load_recipe(None) == DEFAULT_RECIPE


def test_to_dict_is_a_fresh_copy():
    recipe = load_recipe_object("w2g128-gptq-cpu")
    data = recipe.to_dict()
    data["method_args"]["damp_percent"] = 0.5
    data["eval"]["datasets"].append("c4")
    assert recipe.to_dict() == load_recipe("w2g128-gptq-cpu")


def test_the_pretraining_recipes_still_load_with_their_own_loader():
    from tritium.train.pretrain import load_pretrain_recipe, pretrain_recipe_names

    names = pretrain_recipe_names()
    assert names and all(isinstance(load_pretrain_recipe(n), dict) for n in names)


BASE = "method: rtn\ngrid: {kind: uniform, bits: 2, group: 128}\n"


@pytest.mark.parametrize("text, phrase", [
    # types
    (BASE + "eval: {seqlen: \"2048\"}\n", "eval seqlen must be a positive whole number, not '2048'"),
    (BASE + "calib: {source: 3}\n", "calib source must be a data set split or a file, not 3"),
    (BASE + "calib: {seed: 1.5}\n", "calib seed must be a whole number, not 1.5"),
    (BASE + "method_args: [a, b]\n", "method_args must be a mapping of settings"),
    (BASE + "e2e: tune\n", "e2e must be a mapping of settings, not 'tune'"),
    (BASE + "description: 3\n", "description must be text, not 3"),
    ("method: 4\n", "method must be a method name such as rtn or gptq, not 4"),
    ("method: rtn\ngrid: {kind: ternary, variant: 1}\n", "grid variant must be absmean, twn or dlt, not 1"),
    ("method: rtn\ngrid: {kind: uniform, ragged_groups: 1}\n", "grid ragged_groups must be true or false, not 1"),
    # ranges
    (BASE + "eval: {limit: -3}\n", "eval limit must be a positive whole number, not -3 (or null for no limit)"),
    (BASE + "eval: {seqlen: 0}\n", "eval seqlen must be a positive whole number"),
    ("method: rtn\ngrid: {kind: uniform, bits: 5}\n", "bits=5 is not supported by the uniform grid"),
    ("method: rtn\ngrid: {kind: ternary, variant: bitnet}\n", "ternary variant 'bitnet' is unknown"),
    ("method: rtn\ngrid: {kind: uniform, group: null}\n", "grid group must be a positive whole number, 'channel' or "
                                                          "'tensor', not None"),
    # unknown keys, with the closest one suggested
    (BASE + "eval: {zero_shot: [piqa]}\n", "unknown key 'zero_shot' (did you mean 'zeroshot'?)"),
    (BASE + "calib: {sample: 4}\n", "unknown key 'sample' (did you mean 'samples'?)"),
    ("method: rtn\ngrid: {kind: ternary, bits: 2}\n", "the ternary grid has an unknown key 'bits'"),
    (BASE + "methd_args: {}\n", "unknown key 'methd_args' (did you mean 'method_args'?)"),
    # a required method
    ("description: no method\n", "names no method: add e.g. `method: rtn`"),
    ("", "names no method"),
])
def test_a_wrong_type_range_or_key_is_refused_on_load(tmp_path, text, phrase):
    message = refused(text, phrase, tmp_path)
    assert message.startswith(f"recipe {tmp_path / 'r.yaml'}")


def test_a_recipe_that_is_not_a_mapping_is_refused(tmp_path):
    refused("- method: rtn\n", "must be a mapping of", tmp_path)


def test_sections_merge_over_their_defaults_and_the_grid_is_replaced_whole():
    recipe = Recipe.from_mapping({"method": "rtn", "grid": {"kind": "ternary"}, "eval": {"limit": 4}}, "here")
    assert recipe.grid == GridSpec(kind="ternary") and recipe.grid.to_dict() == {"kind": "ternary"}
    assert recipe.eval == EvalSpec(limit=4) and recipe.calib == Recipe().calib


def test_overrides_set_fields_of_the_same_recipe_and_are_checked():
    recipe = load_recipe_object("w2g128-gptq-cpu")
    changed = recipe.with_overrides({"grid.bits": 3, "calib.samples": 4, "eval.limit": 2, "method_args.skip": ["x"]})
    assert changed.grid == dataclasses.replace(recipe.grid, bits=3) and changed.calib.samples == 4
    assert changed.eval.limit == 2 and changed.method_args["skip"] == ["x"] and changed.name == recipe.name
    assert recipe.grid.bits == 2  # the recipe it came from stays
    # a new grid kind starts that kind's grid, keeping only the group
    ternary = recipe.with_overrides({"grid.kind": "ternary", "grid.variant": "dlt"})
    assert ternary.grid == GridSpec(kind="ternary", group=128, variant="dlt")


@pytest.mark.parametrize("changes, phrase", [
    ({"calib.samples": 0}, "calib samples must be a positive whole number, not 0"),
    ({"grid.symmetric": "no"}, "grid symmetric must be true or false, not 'no'"),
    ({"grid.bits": 5}, "bits=5 is not supported"),
    ({"eval.batch_sise": 2}, "unknown key 'batch_sise' (did you mean 'batch_size'?)"),
    ({"evaluation.limit": 2}, "'evaluation' is not a section of a recipe"),
    ({"grid.variant": "dlt"}, "the uniform grid has an unknown key 'variant'"),
])
def test_a_bad_override_is_refused_as_a_bad_file_value_is(changes, phrase):
    refused(lambda: load_recipe_object("w2g128-rtn").with_overrides(changes), phrase)


@pytest.mark.parametrize("options, phrase", [
    ({"batch_size": -1}, "--batch-size -1 is not a positive whole number: pass 1 or more"),
    ({"zeroshot_limit": 0}, "--zeroshot-limit 0 is not a positive whole number: pass 1 or more, or leave it out"),
    ({"calib_samples": 0}, "--calib-samples 0 is not a positive whole number"),
    ({"symmetric": "no"}, "--symmetric 'no' is not true or false"),
    ({"group": 0}, "--group 0 is not a positive whole number, 'channel' or 'tensor'"),
    ({"eval": "wikitext2"}, "--eval 'wikitext2' is not a list of names"),
    ({"grid": "ternary", "bits": 2}, "--bits does not apply: recipe w2g128-rtn with --grid 'ternary' --bits 2: "
                                     "the ternary grid has no setting 'bits'"),
    ({"bits": 5}, "recipe w2g128-rtn with --bits 5: grid: bits=5 is not supported"),
])
def test_a_bad_job_option_is_refused_naming_its_flag(options, phrase):
    refused(lambda: quantize_recipe(QuantizeJob(model="unused", recipe="w2g128-rtn", **options)), phrase)


def test_job_options_override_the_recipe_they_start_from():
    recipe = quantize_recipe(QuantizeJob(model="unused", recipe="w2g128-gptq-cpu", bits=3, group=32, calib_samples=4,
                                         limit=2, skip=["*.down_proj"], rotate=True, checkpoint_dir=""))
    expected = load_recipe("w2g128-gptq-cpu")
    expected["grid"] |= {"bits": 3, "group": 32}
    expected["calib"]["samples"], expected["eval"]["limit"], expected["rotate"] = 4, 2, True
    expected["method_args"]["skip"] = ["*.down_proj"]
    assert recipe == expected


def test_a_grid_the_save_format_cannot_store_is_refused_from_the_recipe():
    six = load_recipe_object("w2g128-rtn").with_overrides({"grid.bits": 6})
    with pytest.raises(PackError, match="--format fake"):
        six.check_format("packed")
    six.check_format("fake")  # fake-quant float weights hold any grid
    load_recipe_object("w2g128-rtn").check_format("packed")
    load_recipe_object("ternary-dlt-g128-rtn").check_format("packed")
    mixed = load_recipe_object("w4g128-rtn").with_overrides(
        {"method_args.grid_overrides": {"*.down_proj": {"kind": "uniform", "bits": 6, "group": 128}}})
    with pytest.raises(PackError, match="6 bits have no layout"):
        mixed.check_format("packed")


def test_recipe_files_are_found_by_name_or_path(tmp_path):
    path = write(tmp_path, BASE)
    assert load_recipe_object(path).name == Path(path).stem == "r"
    refused(lambda: load_recipe_object("no-such-recipe"), "recipe 'no-such-recipe' not found")
    refused(lambda: load_recipe_object(write(tmp_path, "method: [rtn\n")), "is not valid YAML")


# (a recipe built in Python, the same setting in a file, what both errors say)
PYTHON_AND_FILE = [
    (lambda: GridSpec(bits=2, group=128, symmetric="no"), "grid: {kind: uniform, bits: 2, symmetric: \"no\"}",
     "symmetric must be true or false, not 'no'"),
    (lambda: GridSpec(bits=2, group=0), "grid: {kind: uniform, bits: 2, group: 0}",
     "group must be a positive whole number, 'channel' or 'tensor', not 0"),
    (lambda: GridSpec(bits="2"), "grid: {kind: uniform, bits: \"2\"}", "bits must be a whole number"),
    (lambda: GridSpec(bits=5), "grid: {kind: uniform, bits: 5}", "bits=5 is not supported"),
    (lambda: GridSpec(kind="ternary", bits=2), "grid: {kind: ternary, bits: 2}", "the ternary grid has an unknown "
                                                                                "key 'bits'"),
    (lambda: GridSpec(kind="unifrom"), "grid: {kind: unifrom}", "grid kind 'unifrom' is unknown (did you mean "
                                                                "'uniform'?)"),
    (lambda: EvalSpec(batch_size=-1), "eval: {batch_size: -1}", "batch_size must be a positive whole number, not -1"),
    (lambda: EvalSpec(zeroshot_limit=0), "eval: {zeroshot_limit: 0}", "zeroshot_limit must be a positive whole number"),
    (lambda: EvalSpec(datasets="wikitext2"), "eval: {datasets: wikitext2}", "datasets must be a list of names"),
    (lambda: CalibSpec(samples="many"), "calib: {samples: many}", "samples must be a positive whole number, not "
                                                                  "'many'"),
    (lambda: CalibSpec(seed=1.5), "calib: {seed: 1.5}", "seed must be a whole number, not 1.5"),
    (lambda: Recipe(method=4), "method: 4", "method must be a method name such as rtn or gptq, not 4"),
    (lambda: Recipe(rotate="yes please"), "rotate: yes please", "rotate must be true, false or a mapping"),
    (lambda: Recipe(e2e="tune"), "e2e: tune", "e2e must be a mapping of settings, not 'tune'"),
]


@pytest.mark.parametrize("build, line, phrase", PYTHON_AND_FILE)
def test_a_recipe_built_in_python_is_refused_as_the_same_file_is(tmp_path, build, line, phrase):
    from_python = refused(build, phrase)
    text = line if line.startswith("method") else "method: rtn\n" + line
    from_file = refused(text + "\n", phrase, tmp_path)
    # the file's error names the file; Python's names the class whose field is wrong and how to set it
    assert from_file.startswith(f"recipe {tmp_path / 'r.yaml'}")
    assert from_python.split(":")[0] in ("GridSpec", "EvalSpec", "CalibSpec", "Recipe")


def test_a_recipe_built_in_python_takes_only_its_section_types_and_keeps_names_as_tuples():
    refused(lambda: Recipe(grid={"kind": "uniform", "bits": 2}), "Recipe: grid must be a GridSpec")
    refused(lambda: Recipe(eval={"limit": 4}), "Recipe: eval must be an EvalSpec")
    refused(lambda: Recipe(method_args=None), "Recipe: method_args must be a mapping")
    refused(lambda: dataclasses.replace(Recipe().grid, group=-2), "GridSpec: grid.group must be a positive")
    built = Recipe(method="rtn", grid=GridSpec(bits=2, group=128), eval=EvalSpec(datasets=["wikitext2"], limit=4))
    assert built == Recipe.from_mapping({"method": "rtn", "grid": {"kind": "uniform", "bits": 2, "group": 128},
                                         "eval": {"datasets": ["wikitext2"], "limit": 4}}, "here")


def test_overrides_reach_settings_nested_in_a_section():
    recipe = load_recipe_object("ternaryllm-cpu")
    changed = recipe.with_overrides({"method_args.train.tokens": 5000, "method_args.train.steps": None,
                                     "method_args.train.optim.lr": 1e-3, "method_args.new.deeper": 1})
    train = changed.method_args["train"]
    assert train["tokens"] == 5000 and train["steps"] is None and train["optim"]["lr"] == 1e-3
    assert train["optim"]["lr_quant"] == recipe.method_args["train"]["optim"]["lr_quant"]  # the rest stays
    assert changed.method_args["new"] == {"deeper": 1} and recipe.method_args["train"]["tokens"] == 1_000_000
    refused(lambda: recipe.with_overrides({"method_args.skip.more": 1}), "'skip' holds [], not a mapping")


def test_distill_options_override_fields_of_the_same_recipe():
    from tritium.jobs.distill import DistillJob, distill_recipe

    job = DistillJob(model="unused", recipe="qat-w2g128-cpu", tokens=5000, lr=1e-3, kl_weight=0.5, group=64,
                     train_data=["wikitext2-valid"], train_seqlen=64, limit=2, no_progress=True)
    expected = load_recipe_object("qat-w2g128-cpu").with_overrides({
        "grid.group": 64, "method_args.train.tokens": 5000, "method_args.train.steps": None,
        "method_args.train.device": "cpu", "method_args.train.optim.lr": 1e-3, "method_args.loss.kl_weight": 0.5,
        "method_args.data.sources": ["wikitext2-valid"], "method_args.data.seqlen": 64, "eval.limit": 2,
        "method_args.train.progress": False}).to_dict()
    assert distill_recipe(job) == expected
    steps = distill_recipe(DistillJob(model="unused", recipe="ternaryllm-cpu", steps=3))["method_args"]["train"]
    assert steps["steps"] == 3 and steps["tokens"] is None  # one budget clears the recipe's other


@pytest.mark.parametrize("options, phrase", [
    ({"limit": 0}, "--limit 0 is not a positive whole number: pass 1 or more"),
    ({"batch_size": -1}, "--batch-size -1 is not a positive whole number"),
    ({"group": 0}, "--group 0 is not a positive whole number, 'channel' or 'tensor'"),
    ({"variant": "twn"}, "--variant does not apply: recipe qat-w2g128-cpu with --variant 'twn': the uniform grid has "
                         "no setting 'variant'"),
    ({"bits": 5}, "bits=5 is not supported"),
    ({"eval": "wikitext2"}, "--eval 'wikitext2' is not a list of names"),
])
def test_a_bad_distill_option_is_refused_naming_its_flag(options, phrase):
    from tritium.jobs.distill import DistillJob, distill_recipe

    refused(lambda: distill_recipe(DistillJob(model="unused", recipe="qat-w2g128-cpu", **options)), phrase)


@pytest.mark.parametrize("options, phrase", [
    ({"zeroshot_limit": 0}, "--zeroshot-limit 0 is not a positive whole number"),
    ({"seqlen": "64"}, "--seqlen '64' is not a positive whole number"),
    ({"eval": "wikitext2"}, "--eval 'wikitext2' is not a list of names"),
])
def test_a_bad_eval_option_is_refused_naming_its_flag(options, phrase):
    from tritium.jobs.evaluate import EvalJob
    from tritium.jobs.options import eval_settings

    refused(lambda: eval_settings(EvalJob(model="unused", **options)), phrase)
    assert eval_settings(EvalJob(model="unused", limit=3, harness=["tritium"])) == (
        DEFAULT_RECIPE["eval"] | {"limit": 3, "scorers": ["tritium"]})
