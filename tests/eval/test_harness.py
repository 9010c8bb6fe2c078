"""lm-evaluation-harness as a second scorer: same requests, same scores as tritium's own, on local files."""

import json
import os

import pytest

from tritium.cli import main
from tritium.eval.harness import HarnessError, TASKS_DIR, check_scorers, evaluate_with_harness, harness_tasks
from tritium.eval.zeroshot import TASKS, evaluate_docs, loglikelihoods
from tritium.models import tiny_model

pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    """A few documents per task, laid out like ../shared/data, with the quirks each task's processing handles:
    numeric ARC labels, HellaSwag's WikiHow brackets and lowercase ctx_b, a leading space in an OBQA answerKey."""
    data = tmp_path / "data"
    write_jsonl(data / "piqa" / "valid.jsonl", [
        {"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper overnight.", "sol2": "Put them in the freezer."},
        {"goal": "To keep bread fresh", "sol1": "store it in a sealed bag.", "sol2": "leave it open on a sunny sill."},
        {"goal": "How can I open a tight jar lid?", "sol1": "Tap the lid and twist with a rubber grip.", "sol2": "Shake it."},
    ])
    (data / "piqa" / "valid-labels.lst").write_text("0\n0\n1\n")
    arc = [{"id": "q1", "question": {"stem": "Which is a mammal?", "choices": [
               {"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}, {"text": "trout", "label": "C"},
               {"text": "squid", "label": "D"}]}, "answerKey": "B"},
           {"id": "q2", "question": {"stem": "What melts ice fastest?", "choices": [
               {"text": "salt", "label": "1"}, {"text": "sand", "label": "2"}, {"text": "sawdust", "label": "3"}]},
            "answerKey": "1"},
           {"id": "q3", "question": {"stem": "The Sun is a", "choices": [
               {"text": "planet", "label": "A"}, {"text": "star", "label": "B"}]}, "answerKey": "B"}]
    write_jsonl(data / "arc_easy" / "ARC-Easy-Test.jsonl", arc)
    write_jsonl(data / "arc_challenge" / "ARC-Challenge-Test.jsonl", arc[::-1])
    write_jsonl(data / "hellaswag" / "hellaswag_val.jsonl", [
        {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
         "ctx_b": "then", "ctx": "Then, the man writes over the snow. then", "split": "val", "split_type": "indomain",
         "label": 3, "endings": [", the man adds wax to the windshield.", ", a woman puts a sign.",
                                 ", the man cleans the car.", ", the man continues removing the snow."],
         "source_id": "activitynet~v_x"},
        {"ind": 9, "activity_label": "Baking cookies", "ctx_a": "[header] How to bake cookies [title] Preheat the oven.",
         "ctx_b": "[step] mix", "ctx": "...", "split": "val", "split_type": "zeroshot", "label": 0,
         "endings": ["the flour and sugar [substeps] in a bowl.", "the  paint.", "a song.", "the oven door."],
         "source_id": "wikihow~1"},
    ])
    write_jsonl(data / "winogrande" / "dev.jsonl", [
        {"qID": "a", "sentence": "The trophy did not fit in the case because the _ was too big.", "option1": "trophy",
         "option2": "case", "answer": "1"},
        {"qID": "b", "sentence": "Anna lent Maria a book, so _ had something to read.", "option1": "Anna",
         "option2": "Maria", "answer": "2"},
    ])
    (data / "winogrande" / "dev-labels.lst").write_text("1\n2\n")
    write_jsonl(data / "boolq" / "dev.jsonl", [
        {"question": "is the moon a planet", "title": "Moon", "answer": False,
         "passage": "The Moon is Earth's only natural satellite."},
        {"question": "is water wet", "title": "Water", "answer": True, "passage": "Water makes things wet."},
    ])
    write_jsonl(data / "openbookqa" / "test.jsonl", [
        {"id": "o1", "question": {"stem": "Plants need", "choices": [
            {"text": "sunlight", "label": "A"}, {"text": "rocks", "label": "B"}, {"text": "plastic", "label": "C"},
            {"text": "noise", "label": "D"}]}, "answerKey": " A"},
    ])
    write_jsonl(data / "lambada_openai" / "lambada_test.jsonl", [
        {"text": "She opened the door and let the dog out into the garden"},
        {"text": "He poured a cup of hot coffee"},
    ])
    monkeypatch.setenv("TRITIUM_DATA", str(data))
    return data


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_every_shipped_task_is_one_tritium_scores():
    assert harness_tasks() == sorted(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_lm_eval_scores_the_requests_tritium_scores(task, tasks_dir, model, tokenizer):
    """Request by request: the same (context, continuation) strings, the same log-likelihoods, the same metrics.
    A prompt, delimiter, preprocessing or normalization that departs from lm-eval's task fails here."""
    result = evaluate_with_harness(model, tokenizer, [task], data_path=tasks_dir, log_samples=True, progress=False)[task]
    docs = TASKS[task].load(tasks_dir)
    samples = sorted(result.pop("samples"), key=lambda s: s["doc_id"])
    assert result["n_docs"] == len(docs) == len(samples)
    for doc, sample in zip(docs, samples):
        assert [tuple(a) for a in sample["arguments"]] == list(zip(doc.contexts, doc.continuations))
        theirs = sample["filtered_resps"]  # (log-likelihood, greedy) per choice
        ours = loglikelihoods(model, tokenizer, list(zip(doc.contexts, doc.continuations)), progress=False)
        assert [float(t[0]) for t in theirs] == pytest.approx([o[0] for o in ours], rel=1e-4, abs=1e-4)
        assert [bool(t[1]) for t in theirs] == [o[1] for o in ours]
    mine = evaluate_docs(model, tokenizer, docs, TASKS[task].metrics, progress=False)
    assert {k: v for k, v in result.items() if k != "n_docs"} == pytest.approx(mine, rel=1e-6)


def test_the_hub_is_off_while_lm_eval_runs(tasks_dir, model, tokenizer, monkeypatch):
    import tritium.eval.harness as harness

    seen = []
    real = harness.local_rows
    monkeypatch.setattr(harness, "local_rows", lambda *a: seen.append(os.environ.get("HF_HUB_OFFLINE")) or real(*a))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    evaluate_with_harness(model, tokenizer, ["piqa"], limit=1, data_path=tasks_dir, progress=False)
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in os.environ


def test_shipped_configs_are_lm_evals_own_tasks():
    """Each YAML under harness_tasks/ keeps lm-eval's prompt, target, choices, metrics and preprocessing;
    only where the documents come from differs."""
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs = Path(lm_eval.__file__).parent / "tasks"
    sources = {"piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
               "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
               "boolq": "super_glue/boolq/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
               "lambada_openai": "lambada/lambada_openai.yaml"}
    assert set(sources) == set(harness_tasks())

    def same(a, b):
        return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__) if callable(a) else a == b

    for task, path in sources.items():
        ours, upstream = load_yaml(TASKS_DIR / f"{task}.yaml"), load_yaml(theirs / path)
        for key in ("task", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "process_docs",
                    "metric_list", "target_delimiter", "fewshot_delimiter", "num_fewshot"):
            assert same(ours.get(key), upstream.get(key)), (task, key)
        split = upstream.get("test_split") or upstream.get("validation_split")
        assert (ours.get("test_split") or ours.get("validation_split")) == split, task


def test_bad_scorer_requests_fail_before_the_model_loads(tiny_data, tmp_path, capsys, monkeypatch):
    import importlib.util

    import tritium.models

    loaded = []
    monkeypatch.setattr(tritium.models, "load_model", lambda *a, **k: loaded.append(1))
    for args, message in [(["--harness", "lm-evl", "--zeroshot", "piqa"], "unknown scorer 'lm-evl'"),
                          (["--harness", "lm-eval", "--zeroshot", "mmlu"], "no local task config for mmlu"),
                          (["--harness", "lm-eval"], "pass --zeroshot")]:
        assert main(["eval", "--model", "x", "--eval", "none", *args, "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(HarnessError, match=r"pip install 'tritium\[harness\]'"):
        check_scorers(["lm-eval"], ["piqa"])
    assert loaded == []


def test_cli_eval_reports_both_scorers_side_by_side(tiny_folder, tasks_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_folder), "--eval", "none", "--zeroshot", "piqa,hellaswag",
                 "--harness", "tritium,lm-eval", "--zeroshot-limit", "2", "--data", str(tasks_dir), "--out", str(out),
                 "--no-progress"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert set(row["zeroshot"]) == set(row["zeroshot_lm_eval"]) == {"piqa", "hellaswag"}
    assert row["lm_eval_version"].startswith("0.4.")
    for task in ("piqa", "hellaswag"):
        assert row["zeroshot_lm_eval"][task]["n_docs"] == row["zeroshot"][task]["n_docs"] == 2
        assert row["zeroshot_lm_eval"][task]["acc_norm"] == pytest.approx(row["zeroshot"][task]["acc_norm"])
    table = (out / "results.md").read_text()
    assert "piqa/acc (lm-eval)" in table and "piqa/acc |" in table
    only = tmp_path / "only"
    assert main(["eval", "--model", str(tiny_folder), "--eval", "none", "--zeroshot", "arc_easy", "--harness",
                 "lm-eval", "--data", str(tasks_dir), "--out", str(only), "--no-progress"]) == 0
    row = json.loads((only / "results.json").read_text())["rows"][0]
    assert row["zeroshot"] == {} and row["zeroshot_lm_eval"]["arc_easy"]["n_docs"] == 3


@pytest.mark.parametrize("save_format", ["fake", "packed"])
def test_quantized_models_are_scored_by_lm_eval_too(save_format, tiny_folder, tiny_data, tasks_dir, tmp_path):
    run = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--group", "32", "--format",
                 save_format, "--eval", "none", "--no-float", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "e"
    assert main(["eval", "--model", str(run / "model"), "--eval", "none", "--zeroshot", "piqa,arc_easy", "--harness",
                 "tritium,lm-eval", "--data", str(tasks_dir), "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["model"] == "quantized"
    for task in ("piqa", "arc_easy"):
        for metric in ("acc", "acc_norm"):
            assert row["zeroshot_lm_eval"][task][metric] == pytest.approx(row["zeroshot"][task][metric])


def test_no_progress_silences_lm_eval_s_own_bars(tasks_dir, model, tokenizer, capfd):
    """lm-eval calls tqdm directly (with disable=False): progress=False must still hide its request bars."""
    from tritium.utils.progress import set_progress_bars

    set_progress_bars(True)  # the process-wide switch on (a CLI test before may have left it off): only progress=False
    task = sorted(TASKS)[0]
    capfd.readouterr()
    evaluate_with_harness(model, tokenizer, [task], data_path=tasks_dir, progress=False)
    err = capfd.readouterr().err
    assert "requests" not in err and "Tokenizing" not in err, err[-500:]
    import lm_eval.models.huggingface as hf_model
    from tqdm import tqdm

    assert hf_model.tqdm is tqdm  # restored afterwards
    evaluate_with_harness(model, tokenizer, [task], data_path=tasks_dir, progress=True)
    assert "requests" in capfd.readouterr().err  # the oracle: with bars on, lm-eval's bar shows
