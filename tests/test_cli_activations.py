"""Weight + activation quantization from the CLI to the saved folder and back: `tritium quantize --act-bits`
saves the activation grid, `tritium eval` on the folder quantizes the activations again and gives the run's own
perplexity, the lean decode loop keeps them, and what cannot keep them (plain transformers, export, pack) says so."""

import json
import os
import subprocess
import sys

import pytest
import torch

import tritium.kernels as kernels
from tritium.cli import main
from tritium.jobs import EvalJob, QuantizeJob, evaluate_model, quantize
from tritium.models import load_model
from tritium.nn import packed_modules
from tritium.nn.activation_quant import activation_grids, grids_from_record
from tritium.quant.activations import ActivationGrid


def _quantized(tiny_folder, out, **options):
    return quantize(QuantizeJob(model=str(tiny_folder), group=32, eval=["wikitext2"], limit=2, seqlen=64,
                                no_progress=True, out=str(out), float_dtype="float32", **options))


@pytest.fixture
def a8_run(tiny_folder, tiny_data, tmp_path):
    return _quantized(tiny_folder, tmp_path / "run", recipe="w4a8-rtn", format="fake")


def test_the_saved_folder_records_the_grid_and_tritium_eval_gives_the_runs_figure(a8_run, tmp_path):
    row = a8_run.rows[-1]
    assert "A8 activations" in row["method"] and row["activations"]["grid"]["bits"] == 8
    qconfig = json.loads((a8_run.model_folder / "config.json").read_text())["quantization_config"]
    assert qconfig["activations"] == row["activations"] and len(qconfig["activations"]["linears"]) == 14
    model, _, _ = load_model(a8_run.model_folder)
    assert activation_grids(model) == grids_from_record(qconfig["activations"])
    assert set(activation_grids(model).values()) == {ActivationGrid(bits=8)}
    evaluated = evaluate_model(EvalJob(model=str(a8_run.model_folder), eval=["wikitext2"], limit=2, seqlen=64,
                                       no_progress=True, out=str(tmp_path / "eval")))
    assert "A8 activations" in evaluated.row["method"]
    assert evaluated.row["perplexity"]["wikitext2"]["ppl"] == pytest.approx(row["perplexity"]["wikitext2"]["ppl"],
                                                                          rel=1e-5)


def test_the_weights_alone_give_another_figure(a8_run, tiny_folder, tmp_path):
    weights_only = _quantized(tiny_folder, tmp_path / "w4", recipe="w4g128-rtn", format="fake", no_float=True)
    assert "activations" not in weights_only.rows[-1]
    assert weights_only.rows[-1]["perplexity"]["wikitext2"]["ppl"] != a8_run.rows[-1]["perplexity"]["wikitext2"]["ppl"]


def test_plain_transformers_warns_that_it_skips_the_quantization_config(a8_run):
    """Without tritium the folder loads as float weights with float activations; transformers says it skipped
    the config (the activations record is a documented field of that config)."""
    code = ("import logging, transformers\n"
            "transformers.logging.set_verbosity_warning()\n"
            f"transformers.AutoModelForCausalLM.from_pretrained({str(a8_run.model_folder)!r})\n"
            "import sys; print('tritium imported' if 'tritium' in sys.modules else 'plain')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "plain"
    assert "Unknown quantization type, got tritium" in done.stderr and "skip the quantization" in done.stderr


def test_export_and_pack_refuse_a_folder_whose_activations_are_quantized(a8_run, capsys):
    assert main(["export", str(a8_run.out), "--format", "gguf"]) == 2
    assert "its linears' inputs are quantized (A8)" in capsys.readouterr().err
    assert main(["pack", str(a8_run.out)]) == 2
    assert "`tritium pack` writes weights that run on float activations" in capsys.readouterr().err


def test_the_lean_decode_loop_runs_the_saved_folder_with_its_activation_quantizers(a8_run):
    """Loaded from disk, the A8 folder's linears quantize their inputs in their own forward; the lean loop runs
    them through it, so its tokens and logits are what generate gives, not those of float inputs."""
    from tritium.runtime import FastDecoder, fast_decode_unsupported_reason

    model, _, _ = load_model(a8_run.model_folder)
    assert fast_decode_unsupported_reason(model) is None
    ids = torch.tensor([[5, 9, 2, 17, 4, 33, 8]])
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
    assert torch.equal(FastDecoder(model, max_length=32).generate(ids, 8).tokens, expected)
    decoder = FastDecoder(model, max_length=32)
    decoder.generate(ids[:, :-1], 1)
    with torch.no_grad():
        ours = decoder.forward(ids[:, -1:], ids.shape[1] - 1)
        torch.testing.assert_close(ours, model(ids).logits[:, -1], rtol=1e-4, atol=1e-4)


def test_a_packed_folder_keeps_its_activations_where_the_kernels_take_them(tiny_folder, tiny_data, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(kernels, "activation_kernel_reason", lambda weight_grid, act_grid: None, raising=False)
    run = _quantized(tiny_folder, tmp_path / "run", recipe="w4a8-rtn", format="packed", no_float=True)
    model, _, _ = load_model(run.model_folder)
    assert len(packed_modules(model)) == 14 and sorted(activation_grids(model)) == sorted(packed_modules(model))
    evaluated = evaluate_model(EvalJob(model=str(run.model_folder), eval=["wikitext2"], limit=2, seqlen=64,
                                       no_progress=True, out=str(tmp_path / "eval")))
    assert evaluated.row["perplexity"]["wikitext2"]["ppl"] == pytest.approx(
        run.rows[-1]["perplexity"]["wikitext2"]["ppl"], rel=1e-4)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_packed_w4a8_folder_runs_integer_activations_end_to_end(tiny_folder, tiny_data, tmp_path, monkeypatch):
    """The kernels' own answer lets W4A8 be saved packed; loaded again, every packed linear runs the int8 kernel
    (tritium::packed_linear_a8), and the model gives what the fake-quant activations + float kernel give."""
    import tritium.nn.packed_linear as packed_linear_module

    run = _quantized(tiny_folder, tmp_path / "run", recipe="w4a8-rtn", format="packed", no_float=True)
    model, _, _ = load_model(run.model_folder)
    layers = packed_modules(model)
    assert len(layers) == 14 and sorted(activation_grids(model)) == sorted(layers)
    calls = []
    real = packed_linear_module.packed_linear_a8
    monkeypatch.setattr(packed_linear_module, "packed_linear_a8", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        integer = model(tokens).logits
        assert len(calls) == 14
        for layer in layers.values():
            layer.int8_activation_kernel = False  # back to the pre-hook's fake quant + the float kernel
        fake = model(tokens).logits
    assert len(calls) == 14
    torch.testing.assert_close(integer, fake, rtol=1e-4, atol=1e-4)


def test_a_packed_ternary_a8_folder_is_bitnets_w158a8_on_the_int8_kernel(tiny_folder, tiny_data, tmp_path):
    """W1.58A8 (BitNet b1.58's pairing): ternary weights packed, 8-bit per-token activations; the folder's own
    evaluation (integer kernel) gives the perplexity the quantize run measured."""
    run = _quantized(tiny_folder, tmp_path / "run", recipe="ternary-absmean-rtn", act_bits=8, format="packed",
                     no_float=True)
    model, _, _ = load_model(run.model_folder)
    layers = packed_modules(model)
    assert layers and set(activation_grids(model)) == set(layers)
    x = torch.randn(1, 3, next(iter(layers.values())).in_features)
    assert all(layer.integer_activation_grid(x) is not None for layer in layers.values())
    evaluated = evaluate_model(EvalJob(model=str(run.model_folder), eval=["wikitext2"], limit=2, seqlen=64,
                                       no_progress=True, out=str(tmp_path / "eval")))
    assert evaluated.row["perplexity"]["wikitext2"]["ppl"] == pytest.approx(
        run.rows[-1]["perplexity"]["wikitext2"]["ppl"], rel=1e-4)
