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


def _packed_folder(tmp_path):
    from tritium.export.hf import save_packed
    from tritium.methods import RTNConfig, quantize_
    from tritium.nn import pack_model
    from tritium.quant import TernaryGrid, grid_to_dict

    grid = TernaryGrid("absmean", group=32)
    model = tiny_model("llama", seed=0)
    pack_model(model, quantize_(model, RTNConfig(grid=grid)).weights)
    save_packed(model, tiny_tokenizer(), tmp_path / "packed", "rtn", grid_to_dict(grid), float_dtype="float16")
    return tmp_path / "packed"


def test_eval_and_run_refuse_a_damaged_packed_folder_with_exit_2(tmp_path, capsys):
    from tritium.utils.integrity import safetensors_tensor_ranges

    folder = _packed_folder(tmp_path)
    start, end = safetensors_tensor_ranges(folder / "model.safetensors")["model.embed_tokens.weight"]
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[start + 100] ^= 0x20
    (folder / "model.safetensors").write_bytes(bytes(data))
    for argv in (["eval", "--model", str(folder), "--eval", "none", "--no-progress", "--out", str(tmp_path / "e")],
                 ["run", str(folder), "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "model.safetensors does not match the sha256" in err and "model.embed_tokens.weight" in err
        assert "re-export" in err


def test_eval_refuses_a_packed_folder_whose_config_lost_its_quantization_config(tmp_path, capsys):
    from tritium.utils.integrity import write_manifest

    folder = _packed_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    for reseal in (False, True):  # caught by the manifest, and without it by the config/tensor check
        if reseal:
            write_manifest(folder)
        capsys.readouterr()
        assert main(["eval", "--model", str(folder), "--eval", "none", "--no-progress",
                     "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err
        assert ("no tritium quantization_config" if reseal else "config.json is truncated or was edited") in err
    assert not (tmp_path / "e" / "results.json").exists()
