"""`tritium quantize --bits-budget`: mixed precision from the command line."""

import json

import pytest
from transformers import AutoModelForCausalLM

import tritium.runner as runner
from tritium.cli import main
from tritium.models import tiny_model

CALIB = ["--calib-samples", "4", "--calib-seqlen", "32"]


@pytest.fixture
def tiny_folder(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama", num_hidden_layers=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fmt", ["fake", "packed"])
def test_bits_budget_allocates_reports_saves_and_reevaluates(tiny_folder, tiny_data, tmp_path, fmt):
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w2g128-rtn", "--group", "32",
                 "--bits-budget", "2.8", *CALIB, "--format", fmt, "--eval", "wikitext2", "--seqlen", "32",
                 "--limit", "2", "--no-float", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    allocation = row["mixed_precision"]
    assert allocation["bits_budget"] == 2.8 and len(allocation["layers"]) == 28
    assert 2.8 - 0.02 <= row["size"]["linear_bits_per_weight"] <= 2.8
    assert row["size"]["linear_bits_per_weight"] == pytest.approx(allocation["achieved_bits_per_weight"], abs=1e-4)
    assert results["recipe"]["method_args"]["bits_budget"] == 2.8
    assert "| model.layers.3 |" in (out / "results.md").read_text()
    qconfig = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    assert qconfig["grid_overrides"] and qconfig["method_args"]["bits_budget"] == 2.8
    AutoModelForCausalLM.from_pretrained(out / "model")  # loads with every linear on its grid
    assert main(["eval", "--model", str(out / "model"), "--eval", "wikitext2", "--seqlen", "32", "--limit", "2",
                 "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())["rows"][0]
    assert again["size"]["linear_bits_per_weight"] == pytest.approx(row["size"]["linear_bits_per_weight"])
    assert again["bits"] == row["bits"] != 2  # the mean code bits over the linears, not the recipe grid's
    assert again["perplexity"]["wikitext2"]["ppl"] == pytest.approx(row["perplexity"]["wikitext2"]["ppl"], rel=1e-4)


@pytest.mark.parametrize("budget", ["1.0", "9"])
def test_an_unreachable_budget_exits_before_any_evaluation_or_calibration(tiny_folder, tiny_data, tmp_path, capsys,
                                                                          monkeypatch, budget):
    called = []
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: called.append("evaluate"))
    monkeypatch.setattr(runner, "float_row", lambda *a, **k: called.append("float evaluation"))
    monkeypatch.setattr(runner, "calibration_samples", lambda *a, **k: called.append("calibration"))
    code = main(["quantize", "--model", str(tiny_folder), "--method", "gptq", "--bits", "2", "--group", "32",
                 "--bits-budget", budget, *CALIB, "--eval", "wikitext2", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"bits_budget {float(budget):g} cannot be reached" in err and "between 2.100 and 4.625" in err
    assert called == [] and not (tmp_path / "run").exists()
