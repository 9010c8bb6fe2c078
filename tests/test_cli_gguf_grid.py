"""``tritium quantize --grid gguf:TYPE``: a model quantized under a llama.cpp block format, with llama.cpp's
per-tensor fallbacks listed in the report, exported losslessly by ``tritium export --format gguf``."""

import json

import pytest

from gguf import GGUFReader

from tritium.cli import main
from tritium.models import tiny_model, tiny_tokenizer

QUIET = ["--eval", "none", "--no-float", "--no-progress"]


def _folder(path, **widths):
    tiny_model("llama", seed=0, num_attention_heads=4, num_key_value_heads=2, **widths).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_quantize_on_a_gguf_type_lists_its_fallbacks_and_exports_them(tmp_path, capsys):
    model = _folder(tmp_path / "float", hidden_size=256, intermediate_size=288)  # down_proj: 288 inputs
    run = tmp_path / "run"
    assert main(["quantize", "--model", str(model), "--method", "rtn", "--grid", "gguf:q3_k", *QUIET,
                 "--out", str(run)]) == 0
    row = json.loads((run / "results.json").read_text())["rows"][0]
    down = {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
    assert row["grid"] == "mixed gguf:q3_k×12, gguf:q4_0×2"
    assert row["gguf_fallbacks"] == {name: {"type": "q4_0", "instead_of": "q3_k", "in_features": 288} for name in down}
    report = (run / "results.md").read_text()
    assert "2 linears are on llama.cpp's fallback type" in report
    assert "model.layers.1.mlp.down_proj (288 wide): Q4_0 instead of Q3_K" in report
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_0" and types["blk.0.ffn_up.weight"] == "Q3_K"
    assert sum(t == "Q3_K" for t in types.values()) == 12
    assert "read-back max error 0" in capsys.readouterr().out


def test_an_unknown_gguf_type_or_a_width_no_type_fits_is_refused_before_quantizing(tmp_path, capsys):
    model = _folder(tmp_path / "float", hidden_size=256, intermediate_size=272)  # 272 = 17·16: no 32-blocks
    assert main(["quantize", "--model", str(model), "--method", "rtn", "--grid", "gguf:q2_ks", *QUIET,
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "GGUF type 'q2_ks' is unknown; the GGUF grids are gguf:q4_0," in err and "gguf:q2_k, gguf:q3_k" in err
    assert main(["quantize", "--model", str(model), "--method", "rtn", "--grid", "gguf:q2_k", *QUIET,
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "down_proj: GGUF Q2_K stores blocks of 256" in err and "nor do those of Q4_0" in err
    assert "skip this linear" in err
    assert not (tmp_path / "b" / "model").exists()


def _gemma3_folder(path):
    """A tiny Gemma 3: a family tritium's adapter walks and llama.cpp runs, but tritium does not write as GGUF."""
    import transformers

    config = transformers.Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _spy_on_loading(monkeypatch):
    """Every call of the model loader (quantize and export both load through tritium.models.load_model)."""
    import tritium.models

    calls, real = [], tritium.models.load_model

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tritium.models, "load_model", spy)
    return calls


def test_quantize_on_a_gguf_grid_refuses_a_family_gguf_cannot_hold_before_the_model_loads(tmp_path, capsys,
                                                                                          monkeypatch):
    import json

    loads = _spy_on_loading(monkeypatch)
    gemma3 = _gemma3_folder(tmp_path / "gemma3")
    assert main(["quantize", "--model", str(gemma3), "--method", "rtn", "--grid", "gguf:q4_0", *QUIET,
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "gguf:q4_0 quantizes for llama.cpp's GGUF format" in err and "'gemma3_text' is not one of them" in err
    assert "writes the llama, mistral, qwen2, qwen3, gemma, gemma2 families" in err and "gemma3 graph also needs" in err
    assert "--grid uniform" in err and "loading" not in err
    # an architecture neither tritium nor llama.cpp's converter knows, named by config.json alone
    other = _folder(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"model_type": "gpt_bigcode",
                                                            "architectures": ["GPTBigCodeForCausalLM"]}))
    assert main(["quantize", "--model", str(other), "--method", "rtn", "--grid", "gguf:q2_k", *QUIET,
                 "--out", str(tmp_path / "b")]) == 2
    assert "'gpt_bigcode' is not one of them" in capsys.readouterr().err
    assert loads == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the same family on a uniform grid is not GGUF's business: it quantizes
    assert main(["quantize", "--model", str(gemma3), "--method", "rtn", "--bits", "4", "--group", "32", *QUIET,
                 "--format", "fake", "--out", str(tmp_path / "uniform")]) == 0
    assert len(loads) == 1


def test_gguf_export_refuses_a_family_it_cannot_write_before_any_weight_is_read(tmp_path, capsys, monkeypatch):
    gemma3 = _gemma3_folder(tmp_path / "gemma3")
    run = tmp_path / "run"
    assert main(["quantize", "--model", str(gemma3), "--method", "rtn", "--bits", "4", "--group", "32", *QUIET,
                 "--format", "fake", "--out", str(run)]) == 0
    capsys.readouterr()
    loads = _spy_on_loading(monkeypatch)
    import tritium.utils.integrity as integrity

    hashed = []
    monkeypatch.setattr(integrity, "verify_folder", lambda *a, **k: hashed.append(a))  # the weights' checksums
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "'gemma3_text' is not one of them" in err and "--format compressed-tensors" in err
    assert loads == [] and hashed == [] and not (tmp_path / "m.gguf").exists()
    # from Python, on the folder: the same refusal, before the load
    from tritium.export.api import export_model
    from tritium.export.gguf import GGUFExportError

    with pytest.raises(GGUFExportError, match="'gemma3_text' is not one of them"):
        export_model(run, format="gguf", out=tmp_path / "m.gguf")
    assert loads == []


def test_a_bit_budget_on_a_gguf_grid_lists_each_layers_type_and_exports_in_them(tmp_path, tiny_data, capsys,
                                                                               monkeypatch):
    import tritium.runner as runner

    model = tmp_path / "float"
    tiny_model("llama", seed=0, num_hidden_layers=6, hidden_size=256, intermediate_size=256, num_attention_heads=4,
               num_key_value_heads=1).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    calib = ["--calib-samples", "4", "--calib-seqlen", "32"]
    run = tmp_path / "run"
    assert main(["quantize", "--model", str(model), "--method", "rtn", "--grid", "gguf:q2_k", "--bits-budget", "3.2",
                 *calib, *QUIET, "--out", str(run)]) == 0
    row = json.loads((run / "results.json").read_text())["rows"][0]
    allocation = row["mixed_precision"]
    assert 3.19 <= allocation["achieved_bits_per_weight"] <= 3.2
    types = {layer["label"] for layer in allocation["layers"].values()}
    assert len(types) > 1 and types <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    assert "Bit allocation: budget 3.2" in (run / "results.md").read_text() and "Q2_K" in (run / "results.md").read_text()
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert "read-back max error 0" in capsys.readouterr().out
    stored = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert stored["blk.5.attn_k.weight"] == allocation["layers"]["model.layers.5.self_attn.k_proj"]["label"]
    # a budget no mix of the types reaches stops before calibration or any evaluation
    called = []
    monkeypatch.setattr(runner, "calibration_samples", lambda *a, **k: called.append("calibration"))
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: called.append("evaluate"))
    assert main(["quantize", "--model", str(model), "--method", "rtn", "--grid", "gguf:q2_k", "--bits-budget", "7",
                 *calib, "--eval", "wikitext2", "--no-progress", "--out", str(tmp_path / "far")]) == 2
    err = capsys.readouterr().err
    assert "bits_budget 7 cannot be reached" in err and "between 2.625 and 6.562" in err
    assert called == [] and not (tmp_path / "far").exists()
