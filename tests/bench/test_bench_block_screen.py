"""bench/bench_block_screen.py on a tiny model: per-block errors of each recipe on the cut model."""

import json

import pytest
import yaml

from bench_scripts import load_bench
from tritium.models import decoder_layout, tiny_model
from tritium.recipes import load_recipe


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_block_screen")


def test_the_cut_model_keeps_the_first_blocks(bench):
    model = tiny_model("llama", num_hidden_layers=3)
    cut = bench.truncated(model, 2)
    assert decoder_layout(cut).num_blocks == 2 and decoder_layout(model).num_blocks == 3
    assert cut.config.num_hidden_layers == 2
    with pytest.raises(bench.BenchInputError, match="--layers must lie in 1..3"):
        bench.truncated(model, 4)


def test_each_recipe_gets_its_blocks_errors(bench, tmp_path, tokenizer, tiny_data):
    folder = tmp_path / "tiny"
    tiny_model("llama", num_hidden_layers=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = load_recipe("w2g128-tesseraq-cpu")
    recipe.pop("name", None)
    recipe["grid"] = {"kind": "uniform", "bits": 2, "group": 16}
    recipe["calib"] = {"source": "wikitext2-valid", "samples": 2, "seqlen": 32, "seed": 0}
    recipe["method_args"].update(steps_per_stage=2, soft_fractions=[0.5])
    plain, start = tmp_path / "plain.yaml", tmp_path / "gptq.yaml"
    plain.write_text(yaml.safe_dump(recipe))
    recipe["method_args"]["gptq_start"] = True
    start.write_text(yaml.safe_dump(recipe))
    held = tmp_path / "held.yaml"
    recipe["method_args"]["holdout_samples"] = 1
    held.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "screen.md"
    assert bench.main(["--model", str(folder), "--layers", "2", "--recipes", f"{plain},{start},{held}", "--data",
                       str(tiny_data), "--out", str(out)]) == 0
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert runs[str(start)]["holdout_loss"] == [None, None]
    assert all(x > 0 for key in ("holdout_loss", "gptq_start_holdout_loss") for x in runs[str(held)][key])
    block_0 = next(line for line in out.read_text().splitlines() if line.startswith("| 0 |"))
    assert block_0.count(" / ") == 1  # held.yaml's cell alone shows held-out errors
    assert len(runs[str(plain)]["final_loss"]) == 2 and all(x > 0 for x in runs[str(plain)]["final_loss"])
    assert runs[str(plain)]["gptq_start_loss"] == [None, None]
    assert all(x > 0 for x in runs[str(start)]["gptq_start_loss"])
    assert "| 1 |" in out.read_text() and "| 2 |" not in out.read_text()


def test_a_recipe_with_an_e2e_step_is_refused_first(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--recipes", "w2g128-cpu", "--out", str(tmp_path / "x.md")])
    assert "has an e2e step" in capsys.readouterr().err
