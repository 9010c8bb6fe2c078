import json

import pytest
import torch

from tritium.cli import main
from tritium.methods import config_from_dict, quantize_
from tritium.models import load_model, tiny_model, tiny_tokenizer
from tritium.quant.grids import QuantConfigError, TernaryGrid
from tritium.train.distill import DistillConfig, distill
from tritium.train.trainer import TrainConfigError

TEXT = "The quick brown fox jumps over the lazy dog. A ternary weight is minus one, zero or one. " * 30


def _config(**overrides):
    base = dict(grid=TernaryGrid(variant="dlt", group=32), loss={"off_weight": 1.0, "kl_weight": 1.0},
                train={"steps": 12, "micro_batch_size": 2, "progress": False,
                       "optim": {"lr": 1e-3, "lr_quant": 1e-3, "schedule": "constant"}},
                data={"seqlen": 16})
    return DistillConfig(**{**base, **overrides})


def test_distill_trains_folds_and_beats_its_untrained_start(tmp_path):
    tokenizer = tiny_tokenizer()
    (tmp_path / "train.txt").write_text(TEXT)
    model = tiny_model("llama", seed=0)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :64]
    config = _config(data={"seqlen": 16, "sources": [str(tmp_path / "train.txt")]})
    result, train = distill(model, tokenizer, config, tmp_path / "run")
    losses = train.losses()
    assert len(losses) == 12 and sum(losses[-4:]) / 4 < 0.9 * losses[0]  # per-batch noise: compare a mean
    assert result.method == "dlt" and len(result.weights) == 14 and result.details["train_steps"] == 12
    assert all(set(q.codes.unique().tolist()) <= {-1, 0, 1} for q in result.weights.values())
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.isfinite(model(ids).logits).all()
    # the embeddings and norms stayed exactly float (train_float: none)
    fresh = tiny_model("llama", seed=0)
    assert torch.equal(model.model.embed_tokens.weight, fresh.model.embed_tokens.weight)
    assert torch.equal(model.model.norm.weight, fresh.model.norm.weight)


def test_dlt_is_a_registered_method_trained_on_calibration(tmp_path):
    model = tiny_model("llama", seed=0)
    config = config_from_dict("dlt", {"kind": "ternary", "variant": "dlt", "group": 32},
                              train={"steps": 3, "micro_batch_size": 2, "progress": False}, run_dir=str(tmp_path))
    calibration = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    layer = model.model.layers[0].self_attn.q_proj
    result = quantize_(model, config, calibration)
    assert model.model.layers[0].self_attn.q_proj is layer  # the original linears hold the result
    torch.testing.assert_close(layer.weight, result.weights["model.layers.0.self_attn.q_proj"].dequantize())
    with pytest.raises(QuantConfigError, match="needs calibration"):
        quantize_(tiny_model("llama"), config)


def test_absmean_baseline_uses_plain_ste(tmp_path):
    model = tiny_model("llama", seed=0)
    seqs = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    config = _config(grid=TernaryGrid(variant="absmean", group="channel"), loss={"off_weight": 0, "kl_weight": 0,
                     "ce_weight": 1.0}, train={"steps": 2, "micro_batch_size": 2, "progress": False})
    result, _ = distill(model, None, config, tmp_path, sequences=seqs)
    assert result.method == "qat-ste" and all(q.shift is None for q in result.weights.values())


def test_bad_recipe_values_fail_before_loading_a_model():
    with pytest.raises(TrainConfigError, match="no option"):
        _config(train={"steps": 1, "learning_rate": 1.0})
    with pytest.raises(QuantConfigError, match="train_float"):
        _config(train_float="embeddings")
    with pytest.raises(QuantConfigError, match="no option"):
        config_from_dict("dlt", {"kind": "ternary", "variant": "dlt"}, epochs=3)


def test_cli_distill_end_to_end(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_model("llama", seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i:i + 300]}) for i in range(0, 2000, 300)))
    (tmp_path / "eval.txt").write_text(TEXT)
    out = tmp_path / "run"
    code = main(["distill", "--model", str(folder), "--recipe", "ternaryllm-cpu", "--steps", "3", "--data",
                 str(tmp_path / "train.jsonl"), "--train-seqlen", "16", "--micro-batch-size", "2", "--group", "32",
                 "--eval", str(tmp_path / "eval.txt"), "--seqlen", "32", "--out", str(out), "--no-progress",
                 "--precision", "bf16", "--format", "fake"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["float", "quantized"] and report["training"]["steps"] == 3
    assert report["recipe"]["method_args"]["train"]["precision"] == "bf16"  # the flag reached the trainer's recipe
    assert report["rows"][1]["method"] == "dlt"
    assert (out / "model" / "config.json").is_file() and (out / "train" / "log.jsonl").is_file()
    reloaded, _, _ = load_model(out / "model")
    q = reloaded.model.layers[0].mlp.up_proj.weight
    assert len(torch.unique(q[0, :32])) <= 3  # α·T + γ: at most three values per group
    # the run keeps its codes, so `tritium pack` packs the distilled (shifted) weights exactly
    assert main(["pack", str(out), "--float-dtype", "float32"]) == 0  # float32 float parts: exact comparison
    packed, _, _ = load_model(out / "packed")
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        assert packed.model.layers[0].mlp.up_proj.shift is not None
        torch.testing.assert_close(packed(ids).logits, reloaded(ids).logits, rtol=1e-4, atol=1e-4)
    assert main(["distill", "--model", str(folder), "--recipe", "w4g128-rtn", "--steps", "1"]) == 2
    assert "distill needs a dlt recipe" in capsys.readouterr().err


def test_distill_bf16_on_a_cpu_that_emulates_it_warns_before_the_model_loads(tmp_path, monkeypatch):
    import tritium.models
    import tritium.utils.hardware as hardware

    class Loaded(Exception):
        pass

    def stop(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma", "f16c"}))
    monkeypatch.setattr(hardware, "_warned", set())
    monkeypatch.setattr(tritium.models, "load_model", stop)
    with pytest.warns(RuntimeWarning, match="neither amx_bf16 nor avx512_bf16"), pytest.raises(Loaded):
        main(["distill", "--model", "any", "--recipe", "ternaryllm-cpu", "--steps", "1", "--precision", "bf16",
              "--device", "cpu", "--out", str(tmp_path / "run")])
