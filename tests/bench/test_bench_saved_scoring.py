"""bench/bench_saved_scoring.py: a saved run scored by plain transformers matches the run's own figure."""

import importlib.util
import json
from pathlib import Path

import pytest

from tritium.cli import main
from tritium.models import tiny_model

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_saved_scoring.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_saved_scoring", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("save_format", ["fake", "packed"])
def test_plain_transformers_gives_the_runs_figure(bench, tmp_path, tokenizer, tiny_data, save_format):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run = tmp_path / "run"
    assert main(["quantize", "--model", str(folder), "--recipe", "w3g128-rtn", "--group", "32", "--eval", "wikitext2",
                 "--seqlen", "64", "--limit", "3", "--no-float", "--no-progress", "--format", save_format,
                 "--float-dtype", "float32", "--out", str(run)]) == 0
    out = tmp_path / "scores.md"
    assert bench.main([str(run), "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["chunks"] == 3 and row["seqlen"] == 64
    assert row["packed"] is (save_format == "packed")
    assert row["tritium_imported"] is (save_format == "packed")  # a fake folder scores without tritium
    assert row["relative_difference"] < 1e-4, row
