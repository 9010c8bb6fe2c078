"""Preflight of weight + activation quantization: a bad activation setting, an activation group that does not
divide a width, and an activation grid the packed kernels cannot run are refused before any calibration."""

from __future__ import annotations

import pytest

import tritium.kernels as kernels
import tritium.runner as steps
from tritium.jobs.preflight import packed_activation_reason
from tritium.quant.activations import ActivationGrid
from tritium.quant.grids import UniformGrid


@pytest.fixture
def spies(record_calls):
    """Every step that evaluates, calibrates or quantizes, replaced by a recorder."""
    import tritium.calib.activation_clip as clip
    import tritium.methods.base as base

    return record_calls([(steps, "evaluate"), (steps, "float_row"), (steps, "quantize_model"),
                         (steps, "calibration_samples"), (base, "quantize_"),
                         (clip, "search_activation_clip_ratios")])


def quantize_args(model, out, *extra):
    return ["quantize", "--model", str(model), "--eval", "wikitext2", "--limit", "1", "--seqlen", "32",
            "--no-progress", "--out", str(out), "--group", "32", *extra]


def test_three_activation_bits_are_refused_naming_the_flag(tiny_folder, tiny_data, tmp_path, spies, refused):
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--act-bits", "3", "--format", "fake"),
            "--act-bits 3 is not one of 4, 6, 8")
    assert spies == [] and not (tmp_path / "run").exists()


def test_an_activation_group_that_does_not_divide_a_width_is_refused_from_the_config_alone(
        tiny_folder, tiny_data, tmp_path, spies, refused, monkeypatch):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", "w4a4-rtn", "--act-group", "48",
                          "--format", "fake"),
            "act_group 48 does not divide the input width 64", "pass --act-group 64 or 32 or 16 or token")
    assert spies == [] and not (tmp_path / "run").exists()


def test_the_loaded_models_linears_are_checked_too():
    """What preflight cannot read from a config (a hub id, skipped linears) is checked on the loaded model, before
    the float model's evaluation (prepare_config runs right after loading)."""
    from tritium.methods.base import QuantConfigError
    from tritium.models import tiny_model
    from tritium.recipes import load_recipe

    recipe = load_recipe("w4a8-rtn") | {"act_group": 48}
    with pytest.raises(QuantConfigError, match="act_group 48 does not divide"):
        steps.prepare_config(tiny_model("llama"), recipe)


@pytest.mark.parametrize("recipe", ["w4a8-rtn", "w4a4-tesseraq-cpu"])
def test_the_packed_format_is_refused_while_its_kernels_take_float_activations(
        tiny_folder, tiny_data, tmp_path, spies, refused, monkeypatch, recipe):
    monkeypatch.delattr(kernels, "activation_kernel_reason", raising=False)
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", recipe, "--format", "packed"),
            "--format packed cannot hold W4g32 weights with", "activations: this tritium's packed kernels take float "
            "activations only", "Pass --format fake")
    assert spies == [] and not (tmp_path / "run").exists()


def test_the_kernels_reason_is_what_the_refusal_says(tiny_folder, tiny_data, tmp_path, spies, refused, monkeypatch):
    asked = []

    def reason(weight_grid, act_grid):
        asked.append((weight_grid, act_grid))
        return "no 4-bit activation path" if act_grid.bits == 4 else None

    monkeypatch.setattr(kernels, "activation_kernel_reason", reason, raising=False)
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", "w4a4-rtn", "--format", "packed"),
            "no 4-bit activation path")
    assert spies == []
    assert asked and asked[0][1] == ActivationGrid(bits=4, symmetric=False)
    assert packed_activation_reason(UniformGrid(4, 128), ActivationGrid(bits=8)) is None


def test_without_the_kernel_function_every_activation_grid_is_refused(monkeypatch):
    monkeypatch.delattr(kernels, "activation_kernel_reason", raising=False)
    for grid in (ActivationGrid(bits=8), ActivationGrid(bits=4, symmetric=False), ActivationGrid(bits=6, group=32)):
        assert "float activations only" in packed_activation_reason(UniformGrid(4, 128), grid)


def test_weights_only_jobs_never_ask_the_kernels(tiny_folder, tiny_data, tmp_path, monkeypatch, spies, refused):
    monkeypatch.setattr(kernels, "activation_kernel_reason", lambda *a: pytest.fail("asked"), raising=False)
    # --format packed (the default) and no act_bits: refused for a later reason, the kernels never asked
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--zeroshot", "no_such_task"),
            "unknown zero-shot task 'no_such_task'")
    assert spies == []


def test_distill_with_activations_still_refuses_a_packed_folder(tiny_folder, tiny_data, tmp_path, refused):
    """distill trains W·A students now (tests/jobs/test_distill_activations.py); what the kernels cannot run
    is still refused before loading."""
    import yaml

    from tritium.recipes import load_recipe

    recipe = load_recipe("ternaryllm-cpu")
    recipe.pop("name")
    path = tmp_path / "tern-a8.yaml"
    path.write_text(yaml.safe_dump(recipe | {"act_bits": 4, "act_symmetric": False}))
    refused(["distill", "--model", str(tiny_folder), "--recipe", str(path), "--steps", "1", "--group", "32",
             "--no-progress", "--out", str(tmp_path / "d")], "--format packed cannot hold", "--format fake")
    assert not (tmp_path / "d").exists()


def test_the_packed_format_takes_a8_on_the_kernels_word_and_refuses_a4_with_their_reason(
        tiny_folder, tiny_data, tmp_path, spies, refused):
    """With the kernels' own answer (no stand-in): W4A8 packed passes the activation check, W4A4 packed is refused
    before anything is calibrated, naming what the integer kernel runs."""
    from tritium.jobs.preflight import check_activation_recipe
    from tritium.recipes import load_recipe

    assert check_activation_recipe(load_recipe("w4a8-rtn"), "packed") == ActivationGrid(bits=8)
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", "w4a4-rtn", "--format", "packed"),
            "--format packed cannot hold W4g32 weights with A4-asym activations: the integer-activation kernel "
            "takes 8-bit activations, not 4-bit ones", "it runs A8", "Pass --format fake")
    assert spies == [] and not (tmp_path / "run").exists()
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", "w4a8-rtn", "--act-group", "32",
                          "--format", "packed"), "one activation scale per token, not one per group of 32")
    assert spies == []
