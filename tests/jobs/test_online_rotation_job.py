"""Online rotations (QuaRot R3/R4) and the KV-cache bits as a quantize job's recipe keys and flags: the job adds
them before quantizing, the saved folder reloads with them, formats whose runtimes cannot apply them refuse the
run, and a width without a Hadamard or an e2e step is refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

import tritium.runner as steps
from tritium.cli import main
from tritium.models import load_model, tiny_model
from tritium.recipes import Recipe, RecipeError


@pytest.fixture
def spies(record_calls):
    import tritium.methods.base as base

    return record_calls([(steps, "evaluate"), (steps, "float_row"), (steps, "quantize_model"),
                         (steps, "calibration_samples"), (base, "quantize_")])


def quantize_args(model, out, *extra):
    return ["quantize", "--model", str(model), "--eval", "wikitext2", "--limit", "1", "--seqlen", "32",
            "--no-progress", "--out", str(out), "--bits", "4", "--group", "32", *extra]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# packed kernels sum in another order, and a last-bit change can move a key across an 8-bit KV step, so the
# packed folder is checked without the KV quantizer, where it matches as closely as the fake one
@pytest.mark.parametrize("save_format, kv_bits", [("fake", 8), ("packed", None)])
def test_a_quantize_job_with_online_rotations_saves_a_folder_that_reloads_with_them(
        tiny_folder, tiny_data, tmp_path, capsys, save_format, kv_bits):
    from tritium.methods import RTNConfig, quantize_
    from tritium.models.online_rotation import OnlineRotationSettings, add_online_rotations_
    from tritium.quant import UniformGrid

    run = tmp_path / "run"
    kv_flags = ["--kv-bits", str(kv_bits)] if kv_bits else []
    assert main(quantize_args(tiny_folder, run, "--online-rotation", "all", *kv_flags, "--no-float",
                              "--format", save_format, "--float-dtype", "float32")) == 0
    row = json.loads((run / "results.json").read_text())["rows"][-1]
    assert row["method"] == "rtn + online R3+R4" + ("+KV8-asym" if kv_bits else ""), row["method"]
    # the same steps by hand: online rotations first, then RTN on the rotated down_proj weights
    expected, _, _ = load_model(tiny_folder)
    add_online_rotations_(expected, OnlineRotationSettings(online_rotation="all", kv_bits=kv_bits))
    quantize_(expected, RTNConfig(grid=UniformGrid(4, group=32)))
    loaded, _, _ = load_model(run / "model")
    assert loaded.config.attn_implementation.startswith("tritium_online_")
    ids = torch.randint(0, loaded.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    want = _logits(expected, ids)
    tolerance = 1e-4
    torch.testing.assert_close(_logits(loaded, ids), want, atol=tolerance, rtol=tolerance)
    # without the online rotations the same weights compute something else: the check above can fail
    plain, _, _ = load_model(tiny_folder)
    quantize_(plain, RTNConfig(grid=UniformGrid(4, group=32)))
    assert (_logits(plain, ids) - want).abs().max() > 10 * tolerance


def test_gguf_and_compressed_tensors_refuse_an_online_rotated_run_and_write_nothing(tiny_folder, tiny_data,
                                                                                    tmp_path, refused):
    run = tmp_path / "run"
    assert main(quantize_args(tiny_folder, run, "--online-rotation", "down_proj", "--no-float", "--format",
                              "fake")) == 0
    for fmt, out in [("gguf", tmp_path / "m.gguf"), ("compressed-tensors", tmp_path / "ct")]:
        refused(["export", str(run), "--format", fmt, "--out", str(out)],
                "applies online rotations", f"which {fmt} runtimes do not apply", "Export it as tritium")
        assert not out.exists()


def test_an_e2e_recipe_with_online_rotations_is_refused_before_any_work(tiny_folder, tiny_data, tmp_path, spies,
                                                                       refused):
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", "w2g128-cpu", "--online-rotation",
                          "down_proj"),
            "e2e step trains scales without online rotations", "drop its e2e section")
    assert spies == [] and not (tmp_path / "run").exists()


def test_a_width_without_a_hadamard_is_refused_from_the_config_alone(tokenizer, tiny_data, tmp_path, spies,
                                                                      refused, monkeypatch):
    import tritium.models as models

    folder = tmp_path / "odd"
    tiny_model("llama", intermediate_size=100).save_pretrained(folder)  # no Hadamard construction of order 100
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    err = refused(quantize_args(folder, tmp_path / "run", "--online-rotation", "down_proj", "--format", "fake",
                                "--ragged-groups"), "100")
    assert "Hadamard" in err
    assert spies == [] and not (tmp_path / "run").exists()


def test_recipe_keys_are_checked_and_kept():
    recipe = Recipe.from_mapping({"method": "rtn", "online_rotation": "qk", "kv_bits": 4}, "recipe r.yaml")
    assert recipe.to_dict()["online_rotation"] == "qk" and recipe.to_dict()["kv_bits"] == 4
    assert "online_rotation" not in Recipe().to_dict()  # other recipes' mappings are as they were
    assert Recipe.from_mapping({"method": "rtn", "online_rotation": False}, "r").online_rotation is None
    with pytest.raises(RecipeError, match="kv_bits must be one of 4, 8"):
        Recipe.from_mapping({"method": "rtn", "kv_bits": 3}, "recipe r.yaml")
    with pytest.raises(RecipeError, match="online_rotation must be one of down_proj, qk, all"):
        Recipe.from_mapping({"method": "rtn", "online_rotation": "r4"}, "recipe r.yaml")


def test_bad_kv_bits_on_the_command_line_exit_2(tiny_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(quantize_args(tiny_folder, "unused", "--kv-bits", "3"))
    assert exit_info.value.code == 2 and "--kv-bits" in capsys.readouterr().err


def test_run_decodes_an_online_rotated_folder_with_hf_generate_and_refuses_the_lean_loop(tiny_folder, tiny_data,
                                                                                        tmp_path, capsys):
    """The lean loop computes plain attention and skips down_proj's input hook: it must not decode such a model."""
    run = tmp_path / "run"
    assert main(quantize_args(tiny_folder, run, "--online-rotation", "all", "--no-float", "--format", "fake")) == 0
    capsys.readouterr()
    decode = ["run", str(run / "model"), "--prompt", "hello world", "--max-new-tokens", "3", "--device", "cpu"]
    assert main(decode) == 0
    assert "with the HF generate" in capsys.readouterr().err
    assert main([*decode, "--loop", "fast"]) == 2
    err = capsys.readouterr().err
    assert "--loop fast does not support attention implementation 'tritium_online_" in err and "--loop hf" in err
