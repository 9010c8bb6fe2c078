"""Calibration and training text is refused when it holds an evaluation split, whatever the file is called."""

import json
import shutil
import time

import pytest

import tritium.data.contamination as contamination
from staged_splits import paragraphs, wikitext_file
from tritium.data import CalibrationError, calibration_text
from tritium.data.contamination import EVALUATED_SPLITS, EvalSplitOverlapError, check_text, load_fingerprints

def test_the_test_split_under_another_name_and_a_relative_path_is_refused(staged, tmp_path, monkeypatch):
    copy = tmp_path / "work" / "mydata.txt"
    copy.parent.mkdir()
    shutil.copy(staged / "wikitext-2-raw-v1" / "wiki.test.raw", copy)
    monkeypatch.chdir(copy.parent)
    with pytest.raises(EvalSplitOverlapError) as err:
        calibration_text("mydata.txt")
    message = str(err.value)
    assert "wikitext2 test split" in message and str((staged / "wikitext-2-raw-v1" / "wiki.test.raw").resolve()) in message
    assert str(copy.resolve()) in message  # the offending file, by its real path
    assert "wikitext2-valid" in message  # what to use instead
    # re-wrapped and detokenized ("word." for "word .") it is still the test split
    rewrapped = tmp_path / "rewrapped.txt"
    rewrapped.write_text(" ".join(copy.read_text().split()).replace(" .", "."))
    with pytest.raises(EvalSplitOverlapError, match="wikitext2 test split"):
        calibration_text(str(rewrapped))


def test_a_file_of_valid_text_with_a_chunk_of_test_is_refused(staged, tmp_path):
    valid = paragraphs(2, 80)
    chunk = paragraphs(1, 80)[40:42]  # 2 of the test split's 80 paragraphs, 2.5% of the file
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(wikitext_file(valid[:50] + chunk + valid[50:]))
    with pytest.raises(EvalSplitOverlapError) as err:
        calibration_text(str(mixed))
    assert "wikitext2 test split" in str(err.value) and chunk[0].split()[0] in str(err.value)  # the excerpt


def test_scattered_items_of_a_zero_shot_split_are_refused(staged, tmp_path):
    """PIQA's solutions are too short for a long shared passage; many of them still add up to a refusal."""
    rows = [json.loads(line) for line in (staged / "piqa" / "valid.jsonl").read_text().splitlines()]
    text = wikitext_file(paragraphs(2, 80)) + "".join(f"{r['goal']}? {r['sol1']}\n" for r in rows)
    with pytest.raises(EvalSplitOverlapError, match="piqa valid split") as err:
        check_text(text, "the text")
    assert "wikitext2-valid or ptb-valid" in str(err.value)
    few = wikitext_file(paragraphs(2, 80)) + "".join(f"{r['sol1']}\n" for r in rows[:3])
    (overlap,) = check_text(few, "the text")  # three short items: reported, not refused
    assert overlap.split.dataset == "piqa" and 0 < overlap.matched < contamination.MIN_MATCHES


def test_the_valid_split_passes(staged, tmp_path):
    assert calibration_text("wikitext2-valid")
    copy = tmp_path / "valid-copy.txt"
    shutil.copy(staged / "wikitext-2-raw-v1" / "wiki.valid.raw", copy)
    assert calibration_text(str(copy)) == copy.read_text()
    assert check_text(copy.read_text(), "valid") == []  # no n-gram in common with any evaluation split


def test_a_passage_that_the_valid_split_shares_with_the_test_split_is_allowed(staged, tmp_path):
    """PTB's validation split repeats a block of its test split: the recommended split must still pass."""
    shared = paragraphs(9, 3)
    wiki = staged / "wikitext-2-raw-v1"
    (wiki / "wiki.test.raw").write_text(wikitext_file(paragraphs(1, 80) + shared))
    (wiki / "wiki.valid.raw").write_text(wikitext_file(paragraphs(2, 80) + shared))
    assert calibration_text("wikitext2-valid")
    with pytest.raises(EvalSplitOverlapError):  # the rest of the test split is still refused
        check_text(wikitext_file(paragraphs(1, 80)), "test")


def test_the_fingerprints_are_cached_and_reused(staged, tmp_path, monkeypatch):
    first = load_fingerprints()
    assert first.built and first.cache_file.is_file() and first.cache_file.parent == tmp_path / "cache" / "test-splits"
    assert [s.label for s in first.splits] == ["wikitext2 test split", "piqa valid split"]
    monkeypatch.setattr(contamination, "_loaded", {})  # a new process: only the disk cache is left

    def no_rebuild(path):
        raise AssertionError(f"read {path} again instead of the cache")

    monkeypatch.setattr(contamination, "_file_hashes", no_rebuild)
    again = load_fingerprints()
    assert not again.built and (again.hashes == first.hashes).all() and (again.masks == first.masks).all()
    with pytest.raises(EvalSplitOverlapError):  # the cached fingerprints still refuse the test split
        check_text((staged / "wikitext-2-raw-v1" / "wiki.test.raw").read_text(), "test")
    # a changed split file is a new key: the fingerprints are rebuilt, not served stale
    monkeypatch.undo()
    monkeypatch.setenv("TRITIUM_DATA", str(staged))
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path / "cache"))
    test_file = staged / "wikitext-2-raw-v1" / "wiki.test.raw"
    test_file.write_text(wikitext_file(paragraphs(5, 80)))
    rebuilt = load_fingerprints()
    assert rebuilt.built and rebuilt.key != first.key
    assert check_text(wikitext_file(paragraphs(1, 80)), "the old test split") == []


def test_a_damaged_cache_is_rebuilt(staged):
    first = load_fingerprints()
    first.cache_file.write_bytes(b"not an npz")
    contamination._loaded.pop(first.key)
    again = load_fingerprints()
    assert again.built and (again.hashes == first.hashes).all()


def test_without_staged_splits_the_check_says_nothing_but_names_are_still_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITIUM_DATA", raising=False)
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_fingerprints() is None
    text = tmp_path / "any.txt"
    text.write_text(wikitext_file(paragraphs(1, 10)))
    assert calibration_text(str(text))
    with pytest.raises(CalibrationError, match="test split"):
        calibration_text("wikitext2-test")
    assert not (tmp_path / "cache").exists()


def test_the_splits_checked_are_the_splits_evaluated(data_dir, monkeypatch):
    """EVALUATED_SPLITS must name the split every zero-shot task and perplexity data set reads."""
    import tritium.eval.zeroshot as zeroshot
    from tritium.data import sources

    read = []
    real = zeroshot.require_data_file

    def spy(name, split, path=None):
        read.append((name, split))
        return real(name, split, path)

    monkeypatch.setattr(zeroshot, "require_data_file", spy)
    for task, spec in zeroshot.TASKS.items():
        read.clear()
        spec.load(data_dir)
        splits = {(n, s) for n, s in read if not s.endswith("-labels")}
        assert splits == {(task, EVALUATED_SPLITS[task])}, task
    for name in ("wikitext2", "ptb"):  # load_eval_text reads a data set's test split
        assert "test" in sources.DATASETS[name].files and EVALUATED_SPLITS[name] == "test"
    assert set(EVALUATED_SPLITS) == set(zeroshot.TASKS) | {"wikitext2", "ptb"}


def test_the_real_wikitext_test_split_is_refused_and_the_valid_splits_pass(data_dir, tmp_path, monkeypatch):
    data_dir = data_dir.resolve()  # $TRITIUM_DATA may be relative (../shared/data): this test changes folder
    monkeypatch.setenv("TRITIUM_DATA", str(data_dir))
    copy = tmp_path / "mydata.txt"
    shutil.copy(data_dir / "wikitext-2-raw-v1" / "wiki.test.raw", copy)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EvalSplitOverlapError, match="wikitext2 test split") as err:
        calibration_text("mydata.txt")
    assert "wiki.test.raw" in str(err.value) and "wikitext2-valid" in str(err.value)
    valid = (data_dir / "wikitext-2-raw-v1" / "wiki.valid.raw").read_text().splitlines(keepends=True)
    test = copy.read_text().splitlines(keepends=True)
    paragraph = max(test[:200], key=len)  # one paragraph of the test split in 3,760 lines of validation text
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("".join(valid[:1800] + [paragraph] + valid[1800:]))
    with pytest.raises(EvalSplitOverlapError, match="wikitext2 test split"):
        calibration_text(str(mixed))
    load_fingerprints()  # built or read once; what follows is the per-text cost
    for source in ("wikitext2-valid", "ptb-valid"):
        text = calibration_text(source)
        start = time.perf_counter()
        overlaps = check_text(text + " ", source)  # a new text: not answered from the memo
        seconds = time.perf_counter() - start
        assert not any(o.refused for o in overlaps)
        print(f"{source}: checked {len(text):,} characters in {seconds:.3f} s")


def test_a_token_folder_checked_at_ingest_is_trusted_and_an_unchecked_one_is_decoded(staged, tmp_path, monkeypatch,
                                                                                    tokenizer):
    from tritium.data.tokens import TokenFolder, check_token_folder, ingest

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(paragraphs(2, 6)):
        (corpus / f"doc{i}.txt").write_text(text)
    folder = ingest([str(corpus)], tmp_path / "tokens", tokenizer, val_fraction=0.3, progress=False)
    assert [s["dataset"] for s in folder.meta["test_split_check"]] == ["wikitext2", "piqa"]
    decoded = []
    monkeypatch.setattr(TokenFolder, "tokenizer", lambda self: decoded.append(self) or tokenizer)
    check_token_folder(folder)
    assert decoded == []  # ingest compared it with every split staged here: trusted without decoding
    folder.meta.pop("test_split_check")  # as an older tritium wrote it
    check_token_folder(folder)
    assert decoded == [folder]  # decoded and scanned: clean
