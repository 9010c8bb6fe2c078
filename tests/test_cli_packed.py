"""`tritium quantize --format packed` writes a folder that loads with packed modules."""

import json
import re

import pytest
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


QUIET = ["--eval", "none", "--no-float", "--no-progress"]


def _float_folder(folder, **overrides):
    model = tiny_model("llama", seed=0, tie_word_embeddings=True, **overrides)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _logits(folder, ids=torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder)(ids).logits


def test_pack_and_quantize_write_a_block_head_that_reloads_runs_and_is_sized_by_its_bits(tmp_path, capsys):
    from tritium.nn import BlockLMHead, head_type_of

    float_folder = _float_folder(tmp_path / "float")
    assert main(["quantize", "--model", str(float_folder), "--grid", "ternary", "--variant", "absmean", "--group",
                 "32", *QUIET, "--format", "fake", "--out", str(tmp_path / "run")]) == 0
    assert main(["pack", str(tmp_path / "run"), "--out", str(tmp_path / "f16")]) == 0
    assert main(["pack", str(tmp_path / "run"), "--head-type", "q8_0", "--out", str(tmp_path / "q8")]) == 0
    assert "embedding and head in q8_0" in capsys.readouterr().out
    config = json.loads((tmp_path / "q8" / "config.json").read_text())["quantization_config"]
    assert config["head"]["type"] == "q8_0" and config["head"]["tied"] is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q8")
    assert head_type_of(loaded) == "q8_0" and isinstance(loaded.lm_head, BlockLMHead)
    q8, f16 = _logits(tmp_path / "q8"), _logits(tmp_path / "f16")
    assert not torch.equal(q8, f16) and torch.allclose(q8, f16, atol=5e-2)  # q8_0 costs little
    capsys.readouterr()
    assert main(["run", str(tmp_path / "q8"), "--prompt", "The quick", "--max-new-tokens", "4"]) == 0
    assert "q8_0 head" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "q8"), "--eval", "none", "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 0
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"][0]
    assert row["head"] == "q8_0"
    assert row["size"]["embedding_bits_per_weight"] == 8.5 and row["size"]["lm_head_params"] == 0
    # GGUF export writes the block head from its decoded values
    assert main(["export", str(tmp_path / "q8"), "--gguf", str(tmp_path / "q8.gguf"), "--embedding-type", "q8_0"]) == 0
    printed = capsys.readouterr()
    assert "decoded values" in printed.out + printed.err and (tmp_path / "q8.gguf").stat().st_size > 0


def test_quantize_format_packed_evaluates_and_saves_the_block_head(tmp_path, tiny_data):
    from tritium.nn import head_type_of

    float_folder = _float_folder(tmp_path / "float")
    assert main(["quantize", "--model", str(float_folder), "--grid", "ternary", "--variant", "absmean", "--group",
                 "32", "--format", "packed", "--head-type", "q4_0", "--eval", "wikitext2", "--limit", "1",
                 "--seqlen", "32", "--no-float", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert head_type_of(loaded) == "q4_0"
    row = json.loads((tmp_path / "run" / "results.json").read_text())["rows"][-1]
    assert row["size"]["embedding_bits_per_weight"] == 4.5
    # the row measured the saved folder: its perplexity is that of the reloaded model
    from tritium.data import load_eval_text
    from tritium.eval.perplexity import perplexity, tokenize_eval_text

    ids = tokenize_eval_text(tiny_tokenizer(), load_eval_text("wikitext2", tiny_data))
    again = perplexity(loaded, ids, seqlen=32, limit=1, progress=False).to_dict()["ppl"]
    assert again == pytest.approx(row["perplexity"]["wikitext2"]["ppl"], rel=1e-4)


def test_run_head_type_q8_0_on_a_float_model(tmp_path, capsys):
    float_folder = _float_folder(tmp_path / "float")
    assert main(["run", str(float_folder), "--prompt", "The quick brown", "--max-new-tokens", "5",
                 "--head-type", "q8_0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"5 new tokens on cpu with the lean loop .*q8_0 head", err), err


def test_a_head_type_the_model_cannot_take_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import tritium.models
    import tritium.nn
    import tritium.runner
    import tritium.runtime

    narrow = _float_folder(tmp_path / "narrow", hidden_size=48)  # rows of 48: no whole blocks of 32

    def must_not_run(*args, **kwargs):
        raise AssertionError("expensive work started before the head type was checked")

    # quantize: neither the float evaluation nor the quantization may start
    monkeypatch.setattr(tritium.runner, "float_row", must_not_run)
    monkeypatch.setattr(tritium.runner, "quantize_model", must_not_run)
    assert main(["quantize", "--model", str(narrow), "--grid", "ternary", "--group", "channel", "--format", "packed",
                 "--head-type", "q8_0", "--eval", "wikitext2", "--out", str(tmp_path / "q")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    # a fake folder cannot hold a block head: refused before the model even loads
    monkeypatch.setattr(tritium.models, "load_model", must_not_run)
    assert main(["quantize", "--model", str(narrow), "--head-type", "q4_0", *QUIET, "--format", "fake",
                 "--out", str(tmp_path / "f")]) == 2
    assert "--format packed" in capsys.readouterr().err
    monkeypatch.undo()
    # pack: no packing starts
    assert main(["quantize", "--model", str(narrow), "--grid", "ternary", "--group", "channel", *QUIET,
                 "--format", "fake", "--out", str(tmp_path / "run")]) == 0
    monkeypatch.setattr(tritium.nn, "pack_with_codes", must_not_run)
    assert main(["pack", str(tmp_path / "run"), "--head-type", "q4_0"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "run" / "packed").exists()
    # run: no decoding starts
    monkeypatch.setattr(tritium.runtime, "FastDecoder", must_not_run)
    assert main(["run", str(narrow), "--prompt", "hi", "--head-type", "q8_0"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
