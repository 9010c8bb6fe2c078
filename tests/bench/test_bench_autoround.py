"""bench/bench_autoround.py on a tiny random model: the plumbing, not the scores (auto-round is optional)."""

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch

from tritium.models import tiny_model, tiny_tokenizer

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_autoround.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_autoround", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    words = "the quick brown fox jumps over a lazy dog while scales and groups of weights round".split()
    rng = random.Random(0)
    folder = tmp_path / "data" / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    for split in ("valid", "test"):
        lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(120))
        (folder / f"wiki.{split}.raw").write_text("\n".join(lines) + "\n")
    ptb = tmp_path / "data" / "ptb"
    ptb.mkdir()
    (ptb / "ptb.test.txt").write_text("\n".join(" ".join(rng.choice(words[::-1]) for _ in range(9))
                                                for _ in range(150)) + "\n")
    return tmp_path / "data"


def test_distinct_counts_per_group_include_the_short_last_group(bench):
    torch.manual_seed(0)
    weight = torch.randn(8, 320)  # groups of 128, 128 and 64
    assert bench.group_distinct_counts(weight) == 128
    levels = torch.tensor([-1.0, -0.25, 0.5, 2.0])
    on_grid = levels[torch.randint(0, 4, (8, 320))]
    assert bench.group_distinct_counts(on_grid) == 4
    on_grid[3, 300] = 7.0  # a fifth value in the short last group only
    assert bench.group_distinct_counts(on_grid) == 5


def test_bad_bits_fail_before_any_work(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--bits", "5", "--iters", "2"])
    assert "--bits" in capsys.readouterr().err


def test_tiny_run_feeds_our_tokens_and_leaves_weights_on_the_grid(bench, tiny_data, tmp_path):
    pytest.importorskip("auto_round", reason="auto-round is optional: pip install 'tritium[compare]'")
    model_dir = tmp_path / "tiny"
    # 320 is not a multiple of 128, like SmolLM2's 576: the short last group is exercised.
    tiny_model("llama", hidden_size=320, intermediate_size=512, num_hidden_layers=1).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "out" / "autoround.md"
    assert bench.main(["--model", str(model_dir), "--bits", "2", "--iters", "2", "--limit", "2", "--nsamples", "4",
                       "--seqlen", "64", "--eval-seqlen", "128", "--data", str(tiny_data), "--threads", "2",
                       "--datasets", "wikitext2,ptb", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert "auto-round SignRound" in out.read_text()
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"float", "tritium RTN", "auto-round SignRound"}
    ar = rows["auto-round SignRound"]
    assert ar["calibration_tokens_seen"] == 4 and ar["calibration_tokens_identical"]
    assert ar["grid_check"]["ok"] and len(ar["grid_check"]["quantized"]) == 7
    assert ar["grid_check"]["ragged_widths"] == {"320": 6}  # q, k, v, o, gate, up read the 320-wide stream
    assert ar["optimizer_steps"] == 2 and ar["seconds_per_iter"] > 0
    # Same layout as tritium's ragged g128 grid: codes, an fp16 scale and a 2-bit zero point per group.
    assert ar["linear_bits_per_weight"] == pytest.approx(rows["tritium RTN"]["linear_bits_per_weight"])
    assert 2 < ar["linear_bits_per_weight"] < 2.2
    assert all(math.isfinite(row["ppl"]) and row["n_chunks"] == 2 for row in rows.values())
    # Every row is scored on PTB too, and on other text than WikiText-2's.
    assert all(math.isfinite(row["ppl_ptb"]) and row["n_chunks_ptb"] == 2 for row in rows.values())
    assert rows["float"]["ppl_ptb"] != rows["float"]["ppl"]
    assert "| ptb ppl |" in out.read_text()
    assert report["versions"]["auto_round"] and report["calibration"]["digest"]
    assert report["command"].endswith(f"--out {out}")  # the command as run, not the test runner's argv


def test_recipe_rows_run_whole_with_their_e2e_step(bench, tiny_data, tmp_path):
    pytest.importorskip("auto_round", reason="auto-round is optional: pip install 'tritium[compare]'")
    import yaml

    from tritium.recipes import load_recipe

    model_dir = tmp_path / "tiny"
    tiny_model("llama", hidden_size=320, intermediate_size=512, num_hidden_layers=1).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    # The shipped recipe's method and E2E step, at sizes a tiny model and tiny data allow.
    recipe = load_recipe("w2g128-cpu")
    recipe.pop("name", None)
    recipe["method_args"].update(soft_fractions=[0.5], steps_per_stage=1, n_grid=2, clip_n_grid=2, search_tokens=64,
                                 clip_tokens=32)
    recipe["calib"].update(samples=2, seqlen=32)
    recipe["e2e"]["data"]["seqlen"] = 32
    recipe["e2e"]["train"].update(tokens=128, micro_batch_size=2, checkpoint_every=0)
    recipe_path = tmp_path / "tiny-w2.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out" / "autoround.md"
    assert bench.main(["--model", str(model_dir), "--bits", "2", "--iters", "1", "--limit", "2", "--nsamples", "2",
                       "--seqlen", "32", "--eval-seqlen", "128", "--data", str(tiny_data), "--threads", "1",
                       "--skip-rtn", "--recipes", str(recipe_path), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"float", "tritium tiny-w2", "auto-round SignRound"}
    ours = rows["tritium tiny-w2"]
    assert ours["method"] == "tesseraq" and ours["e2e_tokens"] == 128 and ours["quantize_seconds"] > 0
    assert ours["quantized_linears"] == 7 and math.isfinite(ours["ppl"]) and ours["n_chunks"] == 2
    assert ours["ppl"] != rows["float"]["ppl"]  # the copy was quantized, the float model was not
    assert "run whole (tesseraq" in out.read_text() and "E2E scale tuning on 128 tokens" in out.read_text()


def test_a_test_set_that_is_not_text_fails_before_any_work(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--bits", "2", "--iters", "2", "--datasets", "wikitext2,piqa"])
    assert "--datasets" in capsys.readouterr().err


def test_a_recipe_that_does_not_exist_fails_before_any_work(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--bits", "2", "--iters", "2", "--recipes", "w2g128-nonesuch"])
    assert "w2g128-nonesuch" in capsys.readouterr().err
