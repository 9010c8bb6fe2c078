"""Preflight: each bad input is a TritiumError naming the problem and its fix, raised before any
evaluation, calibration or training starts (spies on those steps prove none began)."""

from __future__ import annotations

import pytest
import torch

import tritium.runner as steps
from tritium.cli import main
from tritium.jobs import QuantizeJob, quantize
from tritium.jobs.preflight import PreflightError, check_writable, model_shape
from tritium.models import tiny_model
from tritium.utils.errors import TritiumError


@pytest.fixture
def spies(record_calls):
    """Every step that evaluates, calibrates or trains, replaced by a recorder."""
    import tritium.train.distill as distill_module

    return record_calls([(steps, "evaluate"), (steps, "float_row"), (steps, "quantize_model"),
                                       (steps, "calibration_samples"), (distill_module, "distill")])


def quantize_args(model, out, *extra):
    return ["quantize", "--model", str(model), "--eval", "wikitext2", "--limit", "1", "--seqlen", "32",
            "--no-progress", "--out", str(out), *extra]


def test_a_group_that_does_not_divide_a_width_is_refused_from_the_config_alone(tiny_folder, tiny_data, tmp_path,
                                                                            spies, refused, monkeypatch):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "2", "--group", "48"),
            "group size 48 does not divide the input width", "--ragged-groups", "--group 64")
    assert spies == [] and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_group_100_on_smollm2_is_refused_in_seconds(tmp_path):
    """The issue's own case: the float model's evaluation (30 minutes) used to run before this refusal."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tritium.cli", "quantize", "--model", "smollm2-135m", "--method",
                           "rtn", "--bits", "2", "--group", "100", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "group size 100 does not divide the input width of down_proj (1536)" in proc.stderr
    assert "evaluating" not in proc.stderr and not (tmp_path / "run").exists()
    assert seconds < 30


def test_the_group_check_reads_widths_from_a_folder_and_a_gguf_header(tiny_folder):
    shape = model_shape(str(tiny_folder))
    model = tiny_model("llama")
    assert shape.input_widths["q_proj"] == model.config.hidden_size
    assert shape.input_widths["down_proj"] == model.config.intermediate_size
    assert shape.context == model.config.max_position_embeddings


def test_an_unsupported_architecture_is_refused_before_evaluation(tokenizer, tiny_data, tmp_path, spies, refused):
    import transformers

    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            "unsupported architecture")
    assert spies == []


def test_a_calibration_seqlen_beyond_the_context_is_refused(tiny_folder, tiny_data, tmp_path, spies, refused):
    context = tiny_model("llama").config.max_position_embeddings
    refused(quantize_args(tiny_folder, tmp_path / "run", "--method", "gptq", "--bits", "2", "--group", "32",
                                  "--calib-samples", "2", "--calib-seqlen", str(context * 4)),
            f"--calib-seqlen {context * 4} is longer than the model's context of {context}",
            f"--calib-seqlen {context} or less")
    assert spies == []


def test_perplexity_chunks_beyond_the_context_are_refused_before_calibration_or_training(tiny_folder, tiny_data,
                                                                                          tmp_path, spies, refused):
    context = tiny_model("llama").config.max_position_embeddings
    args = quantize_args(tiny_folder, tmp_path / "run", "--method", "gptq", "--bits", "2", "--group", "32",
                         "--calib-samples", "2", "--calib-seqlen", "16", "--no-float")
    refused(args + ["--seqlen", str(context + 1)], f"--seqlen {context + 1} is longer than the model's context of "
                                                   f"{context}", f"--seqlen {context} or less")
    refused(["distill", "--model", str(tiny_folder), "--recipe", "ternaryllm-cpu", "--steps", "1", "--group", "32",
             "--eval", "wikitext2", "--no-float", "--no-progress", "--out", str(tmp_path / "d"),
             "--seqlen", str(context + 1)], f"--seqlen {context + 1} is longer than the model's context")
    assert spies == []


def test_six_bits_cannot_be_saved_packed(tiny_folder, tiny_data, tmp_path, spies, refused):
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "6", "--group", "32", "--format", "packed"),
            "--format fake")
    assert spies == []


def test_an_out_below_a_file_is_refused(tiny_folder, tiny_data, tmp_path, spies, refused):
    (tmp_path / "a-file").write_text("not a folder")
    refused(quantize_args(tiny_folder, tmp_path / "a-file" / "run", "--bits", "4", "--group", "32"),
            "is a file, not a folder", "choose another --out")
    assert spies == []


def test_an_unwritable_out_is_refused(tiny_folder, tiny_data, tmp_path, spies, refused, locked_folder):
    locked = locked_folder
    refused(quantize_args(tiny_folder, locked / "run", "--bits", "4", "--group", "32"),
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
def test_sizes_and_limits_must_be_positive(tiny_folder, tiny_data, tmp_path, spies, refused, flag, value, phrase):
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32", flag, value), phrase)
    refused(["eval", "--model", str(tiny_folder), "--eval", "wikitext2", "--out", str(tmp_path / "e"),
                     flag, value], phrase)
    assert spies == []


def test_an_unknown_zero_shot_task_is_refused_before_evaluation(tiny_folder, tiny_data, tmp_path, spies, refused):
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32", "--zeroshot",
                                  "piqa,no_such_task"), "unknown zero-shot task 'no_such_task': choose from")
    refused(["eval", "--model", str(tiny_folder), "--zeroshot", "no_such_task", "--out", str(tmp_path / "e")],
            "unknown zero-shot task 'no_such_task'")
    assert spies == []


def test_cuda_on_a_cpu_only_torch_is_refused(tiny_folder, tiny_data, tmp_path, spies, refused, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32", "--device", "cuda"),
            "--device cuda asks for a GPU", "pass --device cpu")
    refused(["eval", "--model", str(tiny_folder), "--device", "cuda", "--out", str(tmp_path / "e")],
            "--device cuda asks for a GPU")
    assert spies == []


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tokenizer, tiny_data, tmp_path, spies, refused):
    folder = tmp_path / "small-vocab"
    tiny_model("llama", vocab_size=len(tokenizer) // 2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {len(tokenizer) // 2}")
    refused(["eval", "--model", str(folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")],
            "do not belong together")
    assert spies == []


def test_a_negative_token_budget_is_refused_before_distillation(tiny_folder, tiny_data, tmp_path, spies, refused):
    refused(["distill", "--model", str(tiny_folder), "--recipe", "ternaryllm-cpu", "--tokens", "-5",
                     "--eval", "wikitext2", "--no-progress", "--out", str(tmp_path / "run")],
            "--tokens -5 is not a positive whole number", "training budget")
    assert spies == []


def test_nan_weights_are_refused_at_load_before_evaluation(tokenizer, tiny_data, tmp_path, spies, refused):
    folder = tmp_path / "nan"
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[2, 3] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    refused(quantize_args(folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            "hold NaN or Inf", "model.layers.1.self_attn.v_proj.weight", "export it again")
    refused(["eval", "--model", str(folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")],
            "hold NaN or Inf")
    assert spies == []


def test_a_truncated_safetensors_file_is_refused_before_evaluation(tiny_folder, tiny_data, tmp_path, spies, refused):
    weights = tiny_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(quantize_args(tiny_folder, tmp_path / "run", "--bits", "4", "--group", "32"),
            f"{weights} is truncated or corrupt", "copy, download or save the model again")
    refused(["eval", "--model", str(tiny_folder), "--eval", "wikitext2", "--out", str(tmp_path / "e")],
            f"{weights} is truncated or corrupt")
    assert spies == []


@pytest.mark.parametrize("text, phrases", [
    ("method: gptq\ngrid: {kind: uniform, bits: 2, group: 32}\ncalib: {samples: many}\n",
     ["calib samples must be a positive whole number, not 'many'"]),
    ("method: rtn\ngrid: {kind: uniform, bits: 2, group: 32, symmetric: \"no\"}\n",
     ["grid symmetric must be true or false, not 'no'", "write it unquoted"]),
    ("grid: {kind: uniform, bits: 2, group: 32}\n", ["names no method", "add e.g. `method: rtn`"]),
    ("method: rtn\ngrid: uniform\n", ["grid must be a mapping", "write `grid: {kind: uniform}`"]),
])
def test_a_bad_recipe_file_is_refused_before_the_model_loads(tiny_folder, tiny_data, tmp_path, spies, refused,
                                                             monkeypatch, text, phrases):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", str(recipe)), f"recipe {recipe}",
            *phrases)
    assert spies == [] and not (tmp_path / "run").exists()


def test_two_training_budgets_are_refused_before_distillation(tiny_folder, tiny_data, tmp_path, spies, refused):
    refused(["distill", "--model", str(tiny_folder), "--recipe", "ternaryllm-cpu", "--tokens", "5000",
                     "--steps", "3", "--eval", "wikitext2", "--no-progress", "--out", str(tmp_path / "run")],
            "--tokens 5000 and --steps 3 are two budgets for one run: give one of them")
    assert spies == []


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_calibration_or_training_file_that_is_not_utf8_is_named(tiny_folder, tiny_data, tmp_path, spies, refused,
                                                                     suffix):
    binary = tmp_path / f"blob{suffix}"
    binary.write_bytes(b'{"text": "ok"}\n' + bytes(range(128, 256)) * 8)
    if suffix == ".txt":
        refused(quantize_args(tiny_folder, tmp_path / "run", "--method", "gptq", "--bits", "4", "--group", "32",
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


# --------------------------------------------------------------------------- pack, run, export

QUIET = ["--eval", "none", "--no-float", "--no-progress", "--format", "fake"]


@pytest.fixture(scope="module")
def narrow_runs(tmp_path_factory, tokenizer):
    """A float Llama 48 wide (rows that blocks of 32 do not cut) and a fake-quant ternary run of it."""
    root = tmp_path_factory.mktemp("narrow")
    tiny_model("llama", hidden_size=48).save_pretrained(root / "float")
    tokenizer.save_pretrained(root / "float")
    assert main(["quantize", "--model", str(root / "float"), "--grid", "ternary", "--group", "channel", *QUIET,
                 "--out", str(root / "ternary")]) == 0
    return root


@pytest.fixture
def no_model_work(record_calls):
    """Loading a model, packing, exporting and decoding, each replaced by a recorder that fails the test."""
    import tritium.export.source
    import tritium.models
    import tritium.nn
    import tritium.runtime

    return record_calls([(tritium.models, "load_model"), (tritium.nn, "pack_with_codes"),
                                       (tritium.export.source, "load_folder_source"), (tritium.runtime, "FastDecoder")])


def test_pack_refuses_an_out_it_cannot_write_before_loading(narrow_runs, tmp_path, no_model_work, refused,
                                                             locked_folder):
    (tmp_path / "a-file").write_text("not a folder")
    refused(["pack", str(narrow_runs / "ternary"), "--out", str(tmp_path / "a-file")],
            "is a file, and a packed model is a folder", "choose another --out")
    locked = locked_folder
    refused(["pack", str(narrow_runs / "ternary"), "--out", str(locked / "packed")],
            f"{locked} is not writable", "choose a --out in a folder you can write")
    assert no_model_work == [] and not (locked / "packed").exists()


def test_pack_and_run_refuse_a_block_head_the_width_cannot_hold_before_loading(narrow_runs, tmp_path, no_model_work,
                                                                               refused):
    refused(["pack", str(narrow_runs / "ternary"), "--head-type", "q8_0", "--out", str(tmp_path / "p")],
            "the embedding: --head-type q8_0", "not a multiple of 32", "keep --head-type f16")
    refused(["run", str(narrow_runs / "float"), "--prompt", "hi", "--device", "cpu", "--head-type", "q4_0"],
            "not a multiple of 32")
    assert no_model_work == []


@pytest.mark.parametrize("options, error, phrase", [
    ({"format": "gguf"}, PreflightError, "pack writes only format 'tritium'"),
    ({"ternary_layout": "3bit"}, TritiumError, "ternary_layout must be one of base3, 2bit"),
    ({"scale_dtype": "float8"}, TritiumError, "scale_dtype must be one of"),
    ({"float_dtype": "int8"}, TritiumError, "float_dtype must be one of"),
    ({"head_type": "q5_k"}, TritiumError, "head type 'q5_k' is unknown"),
])
def test_a_python_pack_job_with_a_bad_option_is_refused_before_loading(narrow_runs, tmp_path, no_model_work, options,
                                                                       error, phrase):
    from tritium.jobs import PackJob, pack_folder

    with pytest.raises(error, match=phrase):
        pack_folder(PackJob(run=str(narrow_runs / "ternary"), out=str(tmp_path / "p"), **options))
    assert no_model_work == [] and not (tmp_path / "p").exists()


@pytest.mark.parametrize("flags, phrase", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_run_refuses_sizes_below_one_before_loading(narrow_runs, no_model_work, refused, flags, phrase):
    refused(["run", str(narrow_runs / "float"), "--prompt", "hi", "--device", "cpu", *flags], phrase)
    assert no_model_work == []


def test_run_refuses_a_missing_device_model_or_a_run_folder_before_loading(narrow_runs, tmp_path, no_model_work,
                                                                           refused, monkeypatch):
    refused(["run", str(narrow_runs / "ternary"), "--prompt", "hi", "--device", "cpu"],
            "is a run folder, not a model folder", f"`tritium run {narrow_runs / 'ternary' / 'model'}`")
    refused(["run", str(tmp_path / "nowhere"), "--prompt", "hi", "--device", "cpu"], "was not found")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(["run", str(narrow_runs / "float"), "--prompt", "hi", "--device", "cuda"],
            "--device cuda: no CUDA device is available here; use --device cpu")
    assert no_model_work == []


@pytest.mark.parametrize("options, phrase", [
    ({"max_new_tokens": "5"}, "--max-new-tokens must be a whole number of at least 1, not '5'"),
    ({"dtype": "float8"}, "--dtype 'float8' is unknown: choose one of auto, float32, bfloat16, float16"),
    ({"loop": "turbo"}, "--loop 'turbo' is unknown"),
    ({"device": "tpu:0"}, "is not a device torch knows"),
    ({"head_type": "q5_k"}, "head type 'q5_k' is unknown"),
])
def test_a_python_run_job_with_a_bad_option_is_refused_before_loading(narrow_runs, no_model_work, options, phrase):
    from tritium.jobs import RunJob, run_model

    with pytest.raises(TritiumError, match=phrase):
        run_model(RunJob(model=str(narrow_runs / "float"), prompt="hi", **{"device": "cpu", **options}))
    assert no_model_work == []


def test_export_refuses_an_out_it_cannot_write_before_loading(narrow_runs, tmp_path, no_model_work, refused,
                                                               locked_folder):
    locked = locked_folder
    refused(["export", str(narrow_runs / "ternary"), "--gguf", str(locked / "m.gguf")],
            f"{locked} is not writable", "choose a --out in a folder you can write")
    assert no_model_work == [] and not (locked / "m.gguf").exists()


@pytest.mark.parametrize("flags, phrase", [
    (["--format", "compressed-tensors"], "ternary"),  # a grid the format has no form for
    (["--format", "compressed-tensors", "--type", "tq2_0"], "--type does not apply to --format"),
    (["--gguf", "a.gguf", "--format", "tritium"], "--gguf a.gguf means --format gguf"),
    ([], "choose a format"),
])
def test_export_refuses_a_format_its_options_or_grid_do_not_fit_before_loading(narrow_runs, no_model_work, refused,
                                                                               flags, phrase):
    refused(["export", str(narrow_runs / "ternary"), *flags], phrase)
    assert no_model_work == []


def test_a_python_export_job_refuses_an_unknown_format_before_loading(narrow_runs, no_model_work):
    from tritium.export.registry import ExportError
    from tritium.jobs import ExportJob, export_folder

    with pytest.raises(ExportError, match="export format 'onnx' is unknown: choose one of"):
        export_folder(ExportJob(model=str(narrow_runs / "ternary"), format="onnx"))
    assert no_model_work == []


def test_holdout_samples_that_leave_nothing_to_train_are_refused_before_the_model_loads(tiny_folder, tiny_data,
                                                                                      tmp_path, spies, refused,
                                                                                      monkeypatch):
    import tritium.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    recipe = tmp_path / "holdout.yaml"
    recipe.write_text("method: tesseraq\ngrid: {kind: uniform, bits: 2, group: 16}\n"
                      "method_args: {holdout_samples: 4}\ncalib: {source: wikitext2-valid, samples: 4, seqlen: 32}\n")
    refused(quantize_args(tiny_folder, tmp_path / "run", "--recipe", str(recipe)),
            "holdout_samples 4 leaves none of the 4 calibration samples", "--calib-samples")
    assert spies == [] and not (tmp_path / "run").exists()
