"""The CLI refuses calibration and training text holding an evaluation split, by content, before any
model is loaded or evaluated."""

import json
import shutil

import pytest

from staged_splits import paragraphs, wikitext_file
from tritium.cli import main


@pytest.fixture
def renamed_test_split(staged, tmp_path, monkeypatch):
    """The staged WikiText-2 test split copied to work/mydata.txt, the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(staged / "wikitext-2-raw-v1" / "wiki.test.raw", work / "mydata.txt")
    monkeypatch.chdir(work)
    return work / "mydata.txt"


@pytest.fixture
def spies(monkeypatch):
    """Record every model load and evaluation the command starts."""
    import tritium.models
    import tritium.runner

    calls = []
    real_load = tritium.models.load_model
    monkeypatch.setattr(tritium.runner, "evaluate", lambda *a, **k: calls.append("evaluate") or {})
    monkeypatch.setattr(tritium.models, "load_model", lambda *a, **k: calls.append("load_model") or real_load(*a, **k))
    return calls


def test_quantize_refuses_a_renamed_test_split_before_loading_or_evaluating(tiny_folder, renamed_test_split, spies,
                                                                           capsys):
    code = main(["quantize", "--model", str(tiny_folder), "--method", "gptq", "--group", "32", "--calib", "mydata.txt",
                 "--calib-samples", "2", "--calib-seqlen", "16", "--eval", "wikitext2", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 2 and "wikitext2 test split" in err and str(renamed_test_split.resolve()) in err
    assert "wikitext2-valid" in err
    assert spies == [] and not (renamed_test_split.parent / "run").exists()


def test_quantize_with_a_method_that_reads_no_calibration_does_not_check_it(tiny_folder, renamed_test_split, spies):
    assert main(["quantize", "--model", str(tiny_folder), "--recipe", "w4g128-rtn", "--group", "32", "--calib",
                 "mydata.txt", "--eval", "none", "--no-save", "--out", "run"]) == 0
    assert spies == ["load_model", "evaluate", "evaluate"]


def test_distill_refuses_training_text_holding_a_test_split_before_evaluating(tiny_folder, renamed_test_split, spies,
                                                                            tmp_path, capsys):
    rows = [{"text": p} for p in paragraphs(2, 30) + paragraphs(1, 80)[10:13]]  # valid text, three test paragraphs
    (renamed_test_split.parent / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["distill", "--model", str(tiny_folder), "--recipe", "ternaryllm-cpu", "--steps", "1", "--data",
                 "train.jsonl", "--train-seqlen", "16", "--group", "32", "--eval", "wikitext2", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 2 and "wikitext2 test split" in err and "train.jsonl" in err and "Training on" in err
    assert spies == []


def test_data_ingest_refuses_a_test_split_in_a_folder_and_writes_nothing(renamed_test_split, capsys, tmp_path):
    corpus = renamed_test_split.parent / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(wikitext_file(paragraphs(2, 20)))
    shutil.move(renamed_test_split, corpus / "b.md")
    assert main(["data", "ingest", str(corpus), "--out", "tokens", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "wikitext2 test split" in err and "b.md" in err
    assert not (renamed_test_split.parent / "tokens").exists()


def test_pretrain_refuses_a_token_folder_made_before_the_test_split_was_staged(staged, tmp_path, monkeypatch, capsys,
                                                                               tokenizer):
    from tritium.data.tokens import ingest

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate([wikitext_file(paragraphs(2, 20)), (staged / "wikitext-2-raw-v1" / "wiki.test.raw").read_text()]):
        (corpus / f"doc{i}.txt").write_text(text)
    with monkeypatch.context() as unstaged:  # nothing to compare with yet: the folder is made, and says so
        unstaged.delenv("TRITIUM_DATA")
        folder = ingest([str(corpus)], tmp_path / "tokens", tokenizer, val_fraction=0.4, progress=False)
    assert folder.meta["test_split_check"] == []
    out = tmp_path / "run"
    code = main(["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(folder.path), "--steps", "1",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "wikitext2 test split" in err and "token folder" in err
    assert not (out / "model").exists()
