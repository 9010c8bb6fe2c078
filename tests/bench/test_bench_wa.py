"""bench/bench_wa.py on a tiny model: its cells, its table and its resume per cell (the plumbing, not the scores)."""

import argparse
import json
import math

import pytest

from bench_scripts import load_bench
from tritium.models import tiny_model


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_wa")


@pytest.fixture
def tiny(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(bench, tiny, data, out, *extra):
    return bench.main(["--model", str(tiny), "--limit", "2", "--seqlen", "64", "--calib-samples", "2",
                       "--calib-seqlen", "32", "--data", str(data), "--out", str(out), *extra])


def test_a_cell_takes_its_methods_recipe_with_the_columns_grids(bench):
    args = argparse.Namespace(calib_samples=None, calib_seqlen=None, rot_online="down_proj")
    cell = bench.cell_recipe("tesseraq+rot", "W3A4", args)
    assert cell["method"] == "tesseraq" and cell["rotate"] is True and cell["online_rotation"] == "down_proj"
    no_online = bench.cell_recipe("tesseraq+rot", "W3A4", argparse.Namespace(**{**vars(args), "rot_online": "none"}))
    assert no_online["rotate"] is True and "online_rotation" not in no_online
    assert cell["grid"] == {"kind": "uniform", "bits": 3, "group": 128, "symmetric": False, "ragged_groups": True}
    assert (cell["act_bits"], cell["act_symmetric"], cell["act_clip_search"]) == (4, False, True)
    a8 = bench.cell_recipe("gptq", "W4A8", args)
    assert (a8["act_bits"], a8["act_symmetric"], a8["rotate"]) == (8, True, False) and "act_clip_search" not in a8
    assert "online_rotation" not in a8
    weights = bench.cell_recipe("rtn-weights-W3", None, args)
    assert weights["grid"]["bits"] == 3 and not any(k.startswith("act_") for k in weights)
    with pytest.raises(bench.BenchInputError, match="--columns takes names from W4A8, W4A4, W3A4"):
        bench.names("W2A2", bench.COLUMNS, "--columns")


def test_the_table_fills_with_the_baselines_and_resumes_per_cell(bench, tiny, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "wa.md"
    assert run(bench, tiny, tiny_data, out, "--methods", "rtn,rtn+rot", "--columns", "W4A8,W4A4") == 0
    report = json.loads(out.with_suffix(".json").read_text())
    cells = report["cells"]
    assert set(cells) == {"float", "rtn-weights-W4", "rtn|W4A8", "rtn+rot|W4A8", "rtn|W4A4", "rtn+rot|W4A4"}
    assert all("error" not in c and math.isfinite(c["ppl"]) and c["n_chunks"] == 2 for c in cells.values())
    assert cells["rtn|W4A8"]["activations"]["grid"] == {"bits": 8, "symmetric": True, "group": "token",
                                                         "clip_ratio": 1.0}
    assert cells["rtn|W4A4"]["clip_ratio_counts"] and sum(cells["rtn|W4A4"]["clip_ratio_counts"].values()) == 14
    assert cells["rtn+rot|W4A4"]["rotated"] and not cells["rtn|W4A4"]["rotated"]
    assert cells["rtn+rot|W4A4"]["online_rotation"]["online_rotation"] == "down_proj"
    assert cells["rtn|W4A4"]["online_rotation"] is None
    assert cells["rtn-weights-W4"]["activations"] is None
    assert cells["rtn|W4A8"]["ppl"] != cells["rtn-weights-W4"]["ppl"]  # the activations were quantized
    text = out.read_text()
    assert "| method | W4A8 | W4A4 |" in text and "| rtn+rot |" in text and "weights-only RTN: W4" in text
    assert report["command"].startswith("python bench/bench_wa.py --model")

    ran = []
    real = bench.run_cell
    monkeypatch.setattr(bench, "run_cell", lambda *a, **k: ran.append(a[3]) or real(*a, **k))
    assert run(bench, tiny, tiny_data, out, "--methods", "rtn,rtn+rot", "--columns", "W4A8,W4A4,W3A4") == 0
    assert sorted(ran) == ["rtn+rot|W3A4", "rtn-weights-W3", "rtn|W3A4"]  # the finished cells were kept
    again = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert again["rtn|W4A8"] == cells["rtn|W4A8"] and "| rtn | " in out.read_text()
    ran.clear()
    assert run(bench, tiny, tiny_data, out, "--methods", "rtn", "--columns", "W4A8") == 0
    assert ran == []  # a narrower run on the same chunks runs nothing and keeps the wider table's cells
    narrower = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert narrower == again and "rtn+rot" not in out.read_text()
    assert run(bench, tiny, tiny_data, out, "--methods", "rtn", "--columns", "W4A8", "--limit", "1") == 0
    assert sorted(ran) == ["float", "rtn-weights-W4", "rtn|W4A8"]  # other chunks: nothing is kept


def test_a_bad_flag_fails_before_any_work(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "awq", "--out", str(tmp_path / "x.md")])
    assert "--methods takes names from" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_a_recipe_flag_runs_a_methods_cells_with_another_recipe(bench, tiny, tiny_data, tmp_path, capsys):
    recipe = tmp_path / "tq-gptq.yaml"
    from tritium.recipes import load_recipe
    import yaml

    mapping = load_recipe("w4a4-tesseraq-cpu")
    mapping.pop("name", None)
    mapping["method_args"]["gptq_start"] = True
    mapping["method_args"]["revert_if_worse"] = True
    recipe.write_text(yaml.safe_dump(mapping))
    args = argparse.Namespace(calib_samples=None, calib_seqlen=None, rot_online="down_proj",
                              recipe=[f"tesseraq={recipe}"])
    cell = bench.cell_recipe("tesseraq+rot", "W3A4", args)
    assert cell["method_args"]["gptq_start"] is True and cell["grid"]["bits"] == 3
    assert "gptq_start" not in bench.cell_recipe("gptq+rot", "W3A4", args)["method_args"]
    assert run(bench, tiny, tiny_data, tmp_path / "wa.md", "--methods", "tesseraq", "--columns", "W4A8",
               "--recipe", f"tesseraq={recipe}") == 0
    summary = json.loads((tmp_path / "wa.json").read_text())["cells"]["tesseraq|W4A8"]["gptq_start"]
    assert summary["blocks"] == 2 and 0 <= summary["improved"] <= 2 and summary["median_final_over_start"] > 0
    reverted = json.loads((tmp_path / "wa.json").read_text())["cells"]["tesseraq|W4A8"]["reverted_to_start"]
    assert reverted["blocks"] == 2 and 0 <= reverted["reverted"] <= 2
    for bad in ("awq=w2g128-awq", "tesseraq", f"tesseraq={tmp_path / 'missing.yaml'}"):
        with pytest.raises(SystemExit):
            bench.main(["--recipe", bad, "--out", str(tmp_path / "x.md")])
        err = capsys.readouterr().err
        assert "--recipe takes METHOD=RECIPE" in err or "missing.yaml' not found" in err, err
    assert not (tmp_path / "x.md").exists()


def test_a_run_killed_before_it_reaches_the_kept_cells_still_keeps_them(bench, tiny, tiny_data, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "wa.md"
    assert run(bench, tiny, tiny_data, out, "--methods", "rtn", "--columns", "W4A8") == 0
    before = json.loads(out.with_suffix(".json").read_text())["cells"]
    real, calls = bench.run_cell, []

    def killed_at_the_second(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "run_cell", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):  # column-major: rtn|W4A4 runs, rtn+rot|W4A4 is killed, W4A8 not reached
        run(bench, tiny, tiny_data, out, "--methods", "rtn,rtn+rot", "--columns", "W4A4,W4A8")
    assert calls == ["rtn|W4A4", "rtn+rot|W4A4"]
    after = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert "rtn|W4A4" in after and all(after[k] == c for k, c in before.items())


def test_zero_shot_columns_score_every_cell_and_perplexity_only_runs_keep_them(bench, tiny, staged, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "wa.md"
    assert run(bench, tiny, staged, out, "--methods", "rtn", "--columns", "W4A8", "--zeroshot", "piqa",
               "--zeroshot-limit", "6") == 0
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    for key in ("float", "rtn-weights-W4", "rtn|W4A8"):
        scored = cells[key]["zeroshot"]["piqa"]
        assert scored["n_docs"] == 6 and 0 <= scored["acc"] <= 1 and 0 <= scored["acc_norm"] <= 1
        assert cells[key]["settings"]["zeroshot"] == {"tasks": ["piqa"], "limit": 6}
    assert "piqa zero-shot acc_norm (%, 6 documents); float" in out.read_text()

    ran = []
    real = bench.run_cell
    monkeypatch.setattr(bench, "run_cell", lambda *a, **k: ran.append(a[3]) or real(*a, **k))
    assert run(bench, tiny, staged, out, "--methods", "rtn", "--columns", "W4A8") == 0
    assert ran == []  # perplexity only: the zero-shot cells serve it
    assert run(bench, tiny, staged, out, "--methods", "rtn", "--columns", "W4A8", "--zeroshot", "piqa",
               "--zeroshot-limit", "4") == 0
    assert sorted(ran) == ["float", "rtn-weights-W4", "rtn|W4A8"]  # other documents: scored again

    for bad, message in ((["--zeroshot", "piqaa"], "--zeroshot takes names from"),
                         (["--zeroshot-limit", "3"], "--zeroshot-limit needs --zeroshot"),
                         (["--zeroshot", "piqa", "--zeroshot-limit", "0"], "--zeroshot-limit must be at least 1")):
        with pytest.raises(SystemExit):
            bench.main([*bad, "--out", str(tmp_path / "x.md")])
        assert message in capsys.readouterr().err
    # a task whose file is missing fails before the float model is scored
    with pytest.raises(Exception, match="arc_easy|ARC-Easy|arc"):
        run(bench, tiny, staged, tmp_path / "y.md", "--methods", "rtn", "--columns", "W4A8", "--zeroshot", "arc_easy")
    assert not (tmp_path / "y.json").exists()
