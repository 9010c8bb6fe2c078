"""Preflight: each bad input is a TritiumError naming the problem and its fix, raised before any
evaluation, calibration or training starts (spies on those steps prove none began)."""

from __future__ import annotations

import os

import pytest
import torch

import tritium.runner as steps
from tritium.cli import main
from tritium.jobs import QuantizeJob, quantize
from tritium.jobs.preflight import PreflightError, check_writable, model_shape
from tritium.models import tiny_model
from tritium.utils.errors import TritiumError


@pytest.fixture
def spies(monkeypatch):
    """Every step that evaluates, calibrates or trains, replaced by a recorder."""
    started = []

    def spy(name):
        def record(*args, **kwargs):
            started.append(name)
            raise AssertionError(f"{name} started although the job should have been refused first")
        return record

    for name in ("evaluate", "float_row", "quantize_model", "calibration_samples"):
        monkeypatch.setattr(steps, name, spy(name))
    import tritium.train.distill as distill_module

    monkeypatch.setattr(distill_module, "distill", spy("distill"))
    return started


def quantize_args(model, out, *extra):
    return ["quantize", "--model", str(model), "--eval", "wikitext2", "--limit", "1", "--seqlen", "32",
            "--no-progress", "--out", str(out), *extra]


def refused(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_a_group_that_does_not_divide_a_width_is_refused_from_the_config_alone(tiny_folder, tiny_data, tmp_path,
                                                                            spies, capsys, monkeypatch):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--bits", "2", "--group", "48"),
            "group size 48 does not divide the input width", "--ragged-groups", "--group 64")
    assert spies == [] and not (tmp_path / "run").exists()


def test_the_group_check_reads_widths_from_a_folder_and_a_gguf_header(tiny_folder):
    shape = model_shape(str(tiny_folder))
    model = tiny_model("llama")
    assert shape.input_widths["q_proj"] == model.config.hidden_size
    assert shape.input_widths["down_proj"] == model.config.intermediate_size
    assert shape.context == model.config.max_position_embeddings


def test_an_unsupported_architecture_is_refused_before_evaluation(tokenizer, tiny_data, tmp_path, spies, capsys):
    import transformers

    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(capsys, quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            "unsupported architecture")
    assert spies == []


def test_a_calibration_seqlen_beyond_the_context_is_refused(tiny_folder, tiny_data, tmp_path, spies, capsys):
    context = tiny_model("llama").config.max_position_embeddings
    refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--method", "gptq", "--bits", "2", "--group", "32",
                                  "--calib-samples", "2", "--calib-seqlen", str(context * 4)),
            f"--calib-seqlen {context * 4} is longer than the model's context of {context}",
            f"--calib-seqlen {context} or less")
    assert spies == []


def test_six_bits_cannot_be_saved_packed(tiny_folder, tiny_data, tmp_path, spies, capsys):
    refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--bits", "6", "--group", "32", "--format", "packed"),
            "--format fake")
    assert spies == []


def test_an_out_below_a_file_is_refused(tiny_folder, tiny_data, tmp_path, spies, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    refused(capsys, quantize_args(tiny_folder, tmp_path / "a-file" / "run", "--bits", "4", "--group", "32"),
            "is a file, not a folder", "choose another --out")
    assert spies == []


def test_an_unwritable_out_is_refused(tiny_folder, tiny_data, tmp_path, spies, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # the suite may run as root, for whom every folder is writable: the permission answer is faked
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    refused(capsys, quantize_args(tiny_folder, locked / "run", "--bits", "4", "--group", "32"),
            f"{locked} is not writable", "choose a --out in a folder you can write")
    assert spies == []


def test_check_writable_accepts_a_new_folder_below_a_writable_one(tmp_path):
    check_writable(tmp_path / "new" / "deeper")  # nothing raised


@pytest.mark.parametrize("flag, value, phrase", [
    ("--batch-size", "-1", "--batch-size -1 is not a positive whole number"),
    ("--batch-size", "0", "--batch-size 0 is not a positive whole number"),
    ("--zeroshot-limit", "0", "--zeroshot-limit 0 is not a positive whole number"),
    ("--limit", "0", "--limit 0 is not a positive whole number"),
])
def test_sizes_and_limits_must_be_positive(tiny_folder, tiny_data, tmp_path, spies, capsys, flag, value, phrase):
    refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32", flag, value), phrase)
    refused(capsys, ["eval", "--model", str(tiny_folder), "--eval", "wikitext2", "--out", str(tmp_path / "e"),
                     flag, value], phrase)
    assert spies == []


def test_cuda_on_a_cpu_only_torch_is_refused(tiny_folder, tiny_data, tmp_path, spies, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32", "--device", "cuda"),
            "--device cuda asks for a GPU", "pass --device cpu")
    refused(capsys, ["eval", "--model", str(tiny_folder), "--device", "cuda", "--out", str(tmp_path / "e")],
            "--device cuda asks for a GPU")
    assert spies == []


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tokenizer, tiny_data, tmp_path, spies, capsys):
    folder = tmp_path / "small-vocab"
    tiny_model("llama", vocab_size=len(tokenizer) // 2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(capsys, quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {len(tokenizer) // 2}")
    refused(capsys, ["eval", "--model", str(folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")],
            "do not belong together")
    assert spies == []


def test_a_negative_token_budget_is_refused_before_distillation(tiny_folder, tiny_data, tmp_path, spies, capsys):
    refused(capsys, ["distill", "--model", str(tiny_folder), "--recipe", "ternaryllm-cpu", "--tokens", "-5",
                     "--eval", "wikitext2", "--no-progress", "--out", str(tmp_path / "run")],
            "--tokens -5 is not a positive whole number", "training budget")
    assert spies == []


def test_nan_weights_are_refused_at_load_before_evaluation(tokenizer, tiny_data, tmp_path, spies, capsys):
    folder = tmp_path / "nan"
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[2, 3] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(capsys, quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            "hold NaN or Inf", "model.layers.1.self_attn.v_proj.weight", "export it again")
    refused(capsys, ["eval", "--model", str(folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")],
            "hold NaN or Inf")
    assert spies == []


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_calibration_or_training_file_that_is_not_utf8_is_named(tiny_folder, tiny_data, tmp_path, spies, capsys,
                                                                     suffix):
    binary = tmp_path / f"blob{suffix}"
    binary.write_bytes(b'{"text": "ok"}\n' + bytes(range(128, 256)) * 8)
    if suffix == ".txt":
        refused(capsys, quantize_args(tiny_folder, tmp_path / "run", "--method", "gptq", "--bits", "4", "--group", "32",
                                      "--calib", str(binary), "--calib-samples", "2", "--calib-seqlen", "16"),
                f"the calibration file {binary.resolve()} is not UTF-8 text", "offset", "convert it to UTF-8")
    else:
        from tritium.data.documents import read_documents
        from tritium.utils.io import TextDecodeError

        with pytest.raises(TextDecodeError, match=f"{binary}:2 is not UTF-8 text.*byte 0x80 at offset 0"):
            list(read_documents(binary))
    assert spies == []


def test_the_python_job_raises_the_same_error(tiny_folder, tiny_data, tmp_path, spies):
    with pytest.raises(PreflightError, match="group size 48 does not divide") as caught:
        quantize(QuantizeJob(model=str(tiny_folder), bits=2, group=48, eval=["wikitext2"], out=str(tmp_path / "r")))
    assert isinstance(caught.value, TritiumError) and spies == []
