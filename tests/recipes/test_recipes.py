import pytest

from tritium.recipes import RecipeError, load_recipe, recipe_names
from tritium.utils.errors import TritiumError

BASE = "method: rtn\ngrid: {kind: uniform, bits: 2, group: 128}\n"


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_validates(name):
    assert load_recipe(name)["method"]


@pytest.mark.parametrize("text, phrase", [
    (BASE + "calib: {samples: many}\n", "calib samples must be a positive whole number, not 'many'"),
    (BASE + "calib: {samples: 0}\n", "calib samples must be a positive whole number, not 0"),
    (BASE + "calib: {seqlen: -8}\n", "calib seqlen must be a positive whole number"),
    ("method: rtn\ngrid: {kind: uniform, bits: 2, symmetric: \"no\"}\n", "grid symmetric must be true or false, not 'no'"),
    ("method: rtn\ngrid: uniform\n", "grid must be a mapping"),
    ("method: rtn\ngrid: {kind: uniform, group: 0}\n", "grid group must be a positive whole number"),
    ("method: rtn\ngrid: {kind: uniform, bits: \"2\"}\n", "grid bits must be a whole number"),
    ("method: rtn\ngrid: {kind: uniform, bitz: 2}\n", "unknown key 'bitz' (did you mean 'bits'?)"),
    ("method: rtn\ngrid: {kind: unifrom}\n", "grid kind 'unifrom' is unknown (did you mean 'uniform'?)"),
    (BASE + "calibration: {samples: 4}\n", "unknown key 'calibration' (did you mean 'calib'?)"),
    (BASE + "eval: {batch_size: -1}\n", "eval batch_size must be a positive whole number"),
    (BASE + "eval: {zeroshot_limit: 0}\n", "eval zeroshot_limit must be a positive whole number"),
    (BASE + "eval: {datasets: wikitext2}\n", "eval datasets must be a list of names"),
    (BASE + "rotate: yes please\n", "rotate must be true, false or a mapping"),
    ("grid: {kind: uniform, bits: 2}\n", "names no method: add e.g. `method: rtn`"),
])
def test_a_bad_recipe_is_refused_with_its_fix(tmp_path, text, phrase):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, text))
    assert phrase in str(caught.value) and isinstance(caught.value, TritiumError)


def test_a_good_recipe_file_loads_over_the_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE + "calib: {samples: 4}\neval: {limit: null}\n"))
    assert recipe["grid"] == {"kind": "uniform", "bits": 2, "group": 128}
    assert recipe["calib"]["samples"] == 4 and recipe["calib"]["seqlen"] == 2048
