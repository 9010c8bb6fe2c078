import json
import subprocess
import sys

import pytest
import torch

from tritium.cli import main
from tritium.models import tiny_model



def test_quantize_evaluates_side_by_side_saves_and_reloads(tiny_folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["quantize", "--model", str(tiny_folder), "--recipe", "w2g128-rtn", "--group", "32",
                 "--eval", "wikitext2", "--seqlen", "64", "--limit", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    table = capsys.readouterr().out
    assert "| float | none |" in table and "| quantized | rtn | 2.00 | 32 |" in table
    results = json.loads((out / "results.json").read_text())
    float_row, quant_row = results["rows"]
    assert float_row["perplexity"]["wikitext2"]["n_chunks"] == 3
    assert quant_row["size"]["linear_bits_per_weight"] == pytest.approx(2 + 18 / 32)
    assert quant_row["perplexity"]["wikitext2"]["ppl"] != float_row["perplexity"]["wikitext2"]["ppl"]
    assert (out / "results.md").read_text().count("|") > 20

    code = main(["eval", "--model", str(out / "model"), "--eval", "wikitext2", "--seqlen", "64", "--limit", "3",
                 "--out", str(tmp_path / "reeval"), "--no-progress"])
    assert code == 0
    again = json.loads((tmp_path / "reeval" / "results.json").read_text())["rows"][0]
    assert again["method"] == "rtn" and again["bits"] == 2
    # the default packed folder stores fp16 scales and float parts, the run measured fp32 ones
    assert again["perplexity"]["wikitext2"]["ppl"] == pytest.approx(quant_row["perplexity"]["wikitext2"]["ppl"], rel=1e-4)
    assert again["size"]["linear_bits_per_weight"] == pytest.approx(quant_row["size"]["linear_bits_per_weight"])


def test_flags_override_the_recipe(tiny_folder, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--grid", "ternary",
                 "--variant", "dlt", "--group", "channel", "--eval", "none", "--out", str(out), "--no-float",
                 "--no-progress"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["grid"] == "ternary-dlt-perchannel"
    assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["grid"]["variant"] == "dlt"



def test_calibrated_quantize_checkpoints_and_offloads_where_told(tiny_folder, tiny_data, tmp_path, monkeypatch):
    """--checkpoint-dir and --offload-dir reach the pipeline: blocks are checkpointed and wait on disk."""
    from tritium.calib import offload

    offloaded = []
    original = offload.BlockOffloader.offload
    monkeypatch.setattr(offload.BlockOffloader, "offload",
                        lambda self, index: (offloaded.append((str(self.folder), index)), original(self, index)))
    out, checkpoints, offload_dir = tmp_path / "run", tmp_path / "ckpt", tmp_path / "offload"
    assert main(["quantize", "--model", str(tiny_folder), "--method", "gptq", "--bits", "2", "--group", "32",
                 "--calib-samples", "2", "--calib-seqlen", "32", "--checkpoint-dir", str(checkpoints),
                 "--offload-dir", str(offload_dir), "--eval", "none", "--no-float", "--no-progress",
                 "--out", str(out)]) == 0
    blocks = tiny_model("llama").config.num_hidden_layers
    assert sorted(index for folder, index in offloaded if folder == str(offload_dir)) == sorted(
        list(range(blocks)) * 2)  # every block waits on disk before and after its turn
    assert json.loads((checkpoints / "progress.json").read_text())["finished_blocks"] == blocks


def test_info(tiny_folder, capsys):
    assert main(["info", "--model", str(tiny_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_layers"] == 2 and info["quantizable_linears"] == 14
    assert info["group_sizes_that_divide_all_widths"] == [32, 64]


@pytest.mark.parametrize("args, message", [
    (["--recipe", "no-such-recipe"], "recipe 'no-such-recipe' not found"),
    (["--bits", "5"], "bits=5 is not supported"),
    (["--group", "48"], "group size 48 does not divide"),
    (["--method", "magic"], "unknown method 'magic'"),
])
def test_bad_inputs_exit_with_a_clear_message(tiny_folder, tiny_data, tmp_path, capsys, args, message):
    code = main(["quantize", "--model", str(tiny_folder), "--eval", "none", "--no-float", "--no-progress",
                 "--out", str(tmp_path / "run"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model").exists()


def test_missing_model_and_data(tiny_folder, tmp_path, monkeypatch, capsys):
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    assert "was not found" in capsys.readouterr().err
    monkeypatch.setenv("TRITIUM_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "--model", str(tiny_folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")]) == 2
    assert "could not find wikitext2" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_real_smollm2(data_dir, tmp_path):
    """The README's main job on the embedded default, cut to one chunk and a little calibration."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tritium.cli", "quantize", "--model", "smollm2-135m", "--recipe", "w4g128-cpu",
         "--eval", "wikitext2", "--limit", "1", "--calib-samples", "4", "--calib-seqlen", "128", "--no-progress",
         "--generate", "The capital of France is", "--generate-tokens", "8", "--data", str(data_dir),
         "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    float_ppl = rows[0]["perplexity"]["wikitext2"]["ppl"]
    quantized_ppl = rows[1]["perplexity"]["wikitext2"]["ppl"]
    assert 5 < float_ppl < 40  # SmolLM2-135M lands near 19 on the first chunks
    assert float_ppl < quantized_ppl < 1.6 * float_ppl  # GPTQ W4g128 keeps the model working
    assert rows[1]["size"]["linear_bits_per_weight"] < 4.3
    assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["format"] == "packed"
    assert results["generation"]["quantized"].strip() and "quantized: The capital of France is" in proc.stdout


def test_a_bare_method_starts_from_its_shipped_recipe(tiny_folder, tiny_data, tmp_path, capsys, monkeypatch):
    """`--method tesseraq` alone takes the method's recipe (the -cpu one without a GPU), not bare defaults."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--method", "tesseraq", "--bits", "2", "--group", "32",
                 "--calib-samples", "2", "--calib-seqlen", "32", "--eval", "none", "--no-float", "--no-progress",
                 "--out", str(out)]) == 0
    assert "starting from recipe w2g128-tesseraq-cpu" in capsys.readouterr().err
    recipe = json.loads((out / "results.json").read_text())["recipe"]
    assert recipe["method"] == "tesseraq" and recipe["method_args"]["steps_per_stage"] == 10
    assert recipe["grid"]["group"] == 32 and recipe["grid"]["ragged_groups"] is True


def test_a_bare_method_takes_the_paper_recipe_where_a_gpu_is_present(monkeypatch):
    import torch

    from tritium.jobs.options import method_recipe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert method_recipe("tesseraq") == "w2g128-tesseraq"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert method_recipe("tesseraq") == "w2g128-tesseraq-cpu"


@pytest.mark.parametrize("save_format", ["fake", "packed"])
def test_rotated_quantize_saves_a_model_that_reloads_to_the_same_figure(tmp_path, tokenizer, tiny_data, save_format):
    folder = tmp_path / "tied"
    tiny_model("llama", tie_word_embeddings=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(folder), "--recipe", "w4g128-rtn", "--group", "32", "--rotate",
                 "--format", save_format, "--eval", "wikitext2", "--seqlen", "64", "--limit", "3",
                 "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    float_row, quant_row = results["rows"]
    assert quant_row["method"] == "rtn + rotation"
    assert results["recipe"]["rotate"] is True
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # the head absorbed the final norm
    assert main(["eval", "--model", str(out / "model"), "--eval", "wikitext2", "--seqlen", "64", "--limit", "3",
                 "--out", str(tmp_path / "reeval"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "reeval" / "results.json").read_text())["rows"][0]
    assert again["perplexity"]["wikitext2"]["ppl"] == pytest.approx(quant_row["perplexity"]["wikitext2"]["ppl"],
                                                                     rel=1e-4)


def test_rotation_of_an_unsupported_layout_is_refused_before_the_float_evaluation(tmp_path, tokenizer, tiny_data,
                                                                                   monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, Gemma2Config

    import tritium.runner

    folder = tmp_path / "gemma2"
    config = Gemma2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    evaluated = []
    monkeypatch.setattr(tritium.runner, "evaluate", lambda *a, **k: evaluated.append(1))
    assert main(["quantize", "--model", str(folder), "--recipe", "w4g128-rtn", "--group", "32", "--rotate",
                 "--eval", "wikitext2", "--out", str(tmp_path / "run")]) == 2
    assert "without --rotate" in capsys.readouterr().err
    assert not evaluated and not (tmp_path / "run").exists()


def test_quantize_saves_packed_by_default_and_shows_a_greedy_generation(tiny_folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--group", "32", "--eval",
                 "wikitext2", "--seqlen", "64", "--limit", "2", "--out", str(out), "--no-progress",
                 "--generate", "the quick brown", "--generate-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    assert saved["format"] == "packed"
    generation = json.loads((out / "results.json").read_text())["generation"]
    assert generation["prompt"] == "the quick brown" and generation["max_new_tokens"] == 5
    assert generation["float"] and generation["quantized"]
    assert f"quantized: the quick brown{generation['quantized']}" in printed
    assert "Greedy continuation" in (out / "results.md").read_text()


def test_a_grid_the_packed_default_cannot_hold_is_refused_before_loading(tiny_folder, tmp_path, monkeypatch, capsys):
    import tritium.models

    loaded = []
    monkeypatch.setattr(tritium.models, "load_model", lambda *a, **k: loaded.append(1))
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--bits", "6", "--group", "32",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--format fake" in capsys.readouterr().err
    assert not loaded and not (tmp_path / "run").exists()


def test_the_advised_format_fake_saves_a_grid_that_has_no_packed_layout(tiny_folder, tiny_data, tmp_path, capsys):
    """--bits 6 --format fake (the advice above) ends with a saved folder, not an error after the evaluation."""
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--bits", "6", "--group", "32",
                 "--format", "fake", "--no-float", "--eval", "wikitext2", "--seqlen", "32", "--limit", "2",
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    from tritium.models import load_model

    model, _, _ = load_model(out / "model")
    weight = model.model.layers[0].mlp.up_proj.weight
    assert len(torch.unique(weight[0, :32])) <= 64  # 6-bit codes: at most 64 values per group
    assert not (out / "model" / "tritium_codes.safetensors").exists()  # no packed layout holds 6-bit codes
