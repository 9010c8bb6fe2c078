import json

import torch
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers the "tritium" quantizer with transformers)
from tritium.export.hf import save_fake_quantized
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.quant import UniformGrid, grid_to_dict


def test_fake_quant_folder_loads_with_plain_from_pretrained(tmp_path, tokenizer):
    model = tiny_model("qwen2")
    grid = UniformGrid(bits=3, group=32)
    result = quantize_(model, RTNConfig(grid=grid))
    save_fake_quantized(model, tokenizer, tmp_path / "q", result.method, grid_to_dict(grid))
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "tritium" and config["grid"]["bits"] == 3 and config["format"] == "fake"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    x = torch.randint(0, 512, (1, 12))
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_failed_save_leaves_the_previous_folder_intact(tmp_path, tokenizer):
    model = tiny_model("llama")
    target = tmp_path / "q"
    save_fake_quantized(model, tokenizer, target, "rtn", {"kind": "uniform", "bits": 4, "group": 32})
    before = sorted(p.name for p in target.iterdir())

    class Broken:
        def save_pretrained(self, folder):
            (folder / "partial.bin").write_text("half")
            raise RuntimeError("disk full")

    try:
        save_fake_quantized(model, Broken(), target, "rtn", {"kind": "uniform", "bits": 2, "group": 32})
    except RuntimeError:
        pass
    assert sorted(p.name for p in target.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q.")]
