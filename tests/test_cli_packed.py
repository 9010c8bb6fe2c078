"""`tritium quantize --format packed` writes a folder that loads with packed modules."""

import json

import torch
from transformers import AutoModelForCausalLM

from tritium.cli import main
from tritium.models import tiny_model, tiny_tokenizer
from tritium.nn import TernaryLinear, packed_modules


def test_quantize_format_packed_then_load_and_eval(tmp_path, capsys):
    model = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "float")
    tiny_tokenizer().save_pretrained(tmp_path / "float")
    code = main(["quantize", "--model", str(tmp_path / "float"), "--recipe", "ternary-dlt-g128-rtn", "--group", "32",
                 "--format", "packed", "--eval", "none", "--no-float", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "packed" and len(config["packed_modules"]) == 14
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(loaded.model.layers[1].mlp.down_proj, TernaryLinear)
    assert len(packed_modules(loaded)) == 14
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.tensor([[1, 2, 3]])).logits).all()
    # `tritium eval` reads the packed folder too, and sizes it from its grid.
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--eval", "none", "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "results.json").read_text())  # beside it, run.json: the run's record
    assert "quantized" in json.dumps(report)
