"""``tritium quantize --grid gguf:TYPE``: a model quantized under a llama.cpp block format, with llama.cpp's
per-tensor fallbacks listed in the report, exported losslessly by ``tritium export --format gguf``."""

import json

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
