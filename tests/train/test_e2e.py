"""A quantize recipe's e2e step: PTQ, then its scales tuned end to end with the codes fixed (E2E-QP)."""

import json

import pytest
import torch

from tritium import runner
from tritium.cli import main
from tritium.models import tiny_model, tiny_tokenizer
from tritium.quant.grids import QuantConfigError
from tritium.recipes import load_recipe
from tritium.utils.errors import TritiumError

TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(300))
E2E = {"loss": {"off_weight": 1.0, "kl_weight": 1.0},
       "data": {"sources": [], "seqlen": 32},
       "train": {"steps": 4, "micro_batch_size": 2, "progress": False,
                 "optim": {"lr": 1e-3, "lr_quant": 1e-2, "schedule": "constant"}}}


def _recipe(tmp_path, method="rtn", grid=None, **e2e_overrides):
    text = tmp_path / "train.txt"
    text.write_text(TEXT)
    recipe = load_recipe(None) | {"method": method,
                                  "grid": grid or {"kind": "uniform", "bits": 2, "group": 32, "symmetric": False}}
    recipe["calib"] = {"source": str(text), "samples": 2, "seqlen": 32, "seed": 0}
    e2e = json.loads(json.dumps(E2E))
    e2e["data"]["sources"] = [str(text)]
    recipe["e2e"] = e2e | e2e_overrides
    return recipe


@pytest.mark.parametrize("arch, method, grid", [
    ("llama", "rtn", None), ("qwen2", "gptq", None), ("gemma", "rtn", None),
    ("llama", "rtn", {"kind": "ternary", "variant": "dlt", "group": 32}),  # DLT: α and γ train
])
def test_e2e_keeps_the_codes_and_moves_the_scales(tmp_path, arch, method, grid):
    recipe = _recipe(tmp_path, method, grid)
    plain = {k: v for k, v in recipe.items() if k != "e2e"}
    ptq, _ = runner.quantize_model(tiny_model(arch, seed=0), tiny_tokenizer(), plain)
    tuned, _ = runner.quantize_model(tiny_model(arch, seed=0), tiny_tokenizer(), recipe, work_dir=tmp_path / "e2e")
    assert tuned.method == method and set(tuned.weights) == set(ptq.weights)
    moved = 0
    for name, weight in tuned.weights.items():
        assert torch.equal(weight.codes, ptq.weights[name].codes), name
        moved += not torch.equal(weight.scale, ptq.weights[name].scale)
    assert moved == len(tuned.weights)
    training = tuned.details["e2e"]["training"]
    assert training["steps"] == 4 and training["first_loss"] is not None
    # the start and the checkpoints served a resume only; the training log stays
    assert (tmp_path / "e2e" / "train" / "log.jsonl").is_file()
    assert not (tmp_path / "e2e" / "ptq-model").exists() and not (tmp_path / "e2e" / "train" / "checkpoints").exists()


def test_e2e_on_a_gguf_grid_tunes_each_linear_in_its_own_type_and_stays_exportable(tmp_path):
    from gguf import GGMLQuantizationType

    from tritium.export.gguf_tensors import decode_tensor, encode_tensor

    recipe = _recipe(tmp_path, "gptq", {"kind": "gguf", "type": "q2_k"})
    plain = {k: v for k, v in recipe.items() if k != "e2e"}
    model = lambda: tiny_model("llama", seed=0, intermediate_size=256)  # noqa: E731  (down_proj: a Q2_K row)
    ptq, _ = runner.quantize_model(model(), tiny_tokenizer(), plain)
    tuned, _ = runner.quantize_model(model(), tiny_tokenizer(), recipe, work_dir=tmp_path / "e2e")
    # 64 inputs hold no 256-weight super-block: all but down_proj are on llama.cpp's Q4_0 fallback, and stay there
    assert tuned.grid_overrides == ptq.grid_overrides and len(ptq.grid_overrides) == 12
    moved = 0
    for name, weight in tuned.weights.items():
        assert weight.grid == ptq.weights[name].grid and torch.equal(weight.codes, ptq.weights[name].codes), name
        moved += not torch.equal(weight.scale, ptq.weights[name].scale)
        qtype = GGMLQuantizationType[weight.grid.type.upper()]
        assert (decode_tensor(encode_tensor(weight, qtype), qtype) == weight.dequantize().numpy()).all()
    assert moved == len(tuned.weights)


def test_e2e_lowers_the_distillation_loss(tmp_path):
    recipe = _recipe(tmp_path, train={"steps": 12, "micro_batch_size": 2, "progress": False,
                                      "optim": {"lr": 1e-3, "lr_quant": 5e-3, "schedule": "constant"}})
    tuned, _ = runner.quantize_model(tiny_model("llama", seed=0), tiny_tokenizer(), recipe, work_dir=tmp_path / "e2e")
    log = [json.loads(line) for line in (tmp_path / "e2e" / "train" / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in log[:3]) / 3, sum(r["loss"] for r in log[-3:]) / 3
    assert last < first


def test_e2e_without_a_work_folder_leaves_no_temporary_files(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tuned, _ = runner.quantize_model(tiny_model("llama", seed=0), tiny_tokenizer(), _recipe(tmp_path))
    assert tuned.details["e2e"]["training"]["steps"] == 4
    assert not list(scratch.iterdir())


@pytest.mark.parametrize("change, message", [
    ({"grid": {"kind": "ternary", "variant": "twn", "group": 32}}, "learnable scales"),
    ({"e2e": {"train": {"steps": 2}}}, "training text"),
    ({"e2e": {"loss": {}, "data": {"sources": ["x"]}}}, "budget"),
    ({"e2e": {"train": {"steps": 2}, "data": {"sources": ["x"]}, "lr": 1}}, "no option"),
    ({"e2e": {"train": {"steps": 2, "batch": 3}, "data": {"sources": ["x"]}}}, "batch"),
    ({"e2e": "yes"}, "mapping"),
])
def test_bad_e2e_settings_fail_before_calibration(tmp_path, monkeypatch, change, message):
    recipe = _recipe(tmp_path) | change
    calls = []
    monkeypatch.setattr(runner, "calibration_samples", lambda *a, **k: calls.append(a))
    with pytest.raises(TritiumError, match=message):
        runner.prepare_config(tiny_model("llama"), recipe)
    assert not calls


def test_e2e_with_a_bit_budget_is_refused(tmp_path):
    recipe = _recipe(tmp_path)
    recipe["method_args"] = {"bits_budget": 2.5}
    with pytest.raises(QuantConfigError, match="bit budget"):
        runner.prepare_config(tiny_model("llama"), recipe)


def test_quantize_cli_with_e2e_saves_the_tuned_packed_model(tmp_path):
    import yaml

    recipe = _recipe(tmp_path)
    recipe["eval"] = {"datasets": [str(tmp_path / "train.txt")], "seqlen": 32, "limit": 2}
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(recipe))
    folder = tmp_path / "model-in"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(folder), "--recipe", str(path), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["quantization_config"]["format"] == "packed"
    from tritium.models import load_model

    reloaded, _, _ = load_model(out / "model")
    ids = torch.randint(0, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.isfinite(reloaded(ids).logits).all()
    assert results["rows"][-1]["method"] == "rtn"
