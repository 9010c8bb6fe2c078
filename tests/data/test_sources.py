import pytest

from tritium.data import (
    CalibrationError,
    DataNotFoundError,
    calibration_samples,
    find_data_file,
    load_eval_text,
    load_text_rows,
    require_data_file,
)


def make_wikitext(folder, test="= Title =\n\n Some text here .\n", valid=" valid line one\n\n valid line two\n"):
    target = folder / "wikitext-2-raw-v1"
    target.mkdir(parents=True)
    (target / "wiki.test.raw").write_text(test)
    (target / "wiki.valid.raw").write_text(valid)
    return folder


def test_search_order_explicit_path_then_env(tmp_path, monkeypatch):
    explicit = make_wikitext(tmp_path / "explicit", test="explicit\n")
    env = make_wikitext(tmp_path / "env", test="from env\n")
    monkeypatch.setenv("TRITIUM_DATA", str(env))
    assert find_data_file("wikitext2", "test", explicit).parent.parent == explicit
    assert find_data_file("wikitext2", "test").parent.parent == env
    assert find_data_file("wikitext2", "test", explicit / "wikitext-2-raw-v1" / "wiki.test.raw").read_text() == "explicit\n"


def test_rows_follow_the_hf_split_and_join_with_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITIUM_DATA", str(make_wikitext(tmp_path)))
    assert load_text_rows("wikitext2", "test") == ["= Title =\n", "", " Some text here .\n"]
    assert load_eval_text("wikitext2") == "= Title =\n" + "\n\n" + "" + "\n\n" + " Some text here .\n"


def test_not_found_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITIUM_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFoundError) as err:
        load_text_rows("wikitext2", "test", tmp_path / "explicit")
    message = str(err.value)
    assert str(tmp_path / "explicit" / "wiki.test.raw") in message
    assert str(tmp_path / "empty" / "wikitext-2-raw-v1" / "wiki.test.raw") in message
    assert "HF hub" in message and "TRITIUM_DATA" in message
    with pytest.raises(DataNotFoundError, match="TRITIUM_DATA"):
        require_data_file("piqa", "valid")


def test_unset_env_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITIUM_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"\$TRITIUM_DATA \(not set\)"):
        load_text_rows("ptb", "test")


def test_any_text_file_is_evaluable(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("plain text\n")
    assert load_eval_text(str(file)) == "plain text\n"
    with pytest.raises(DataNotFoundError, match="neither a known data set"):
        load_eval_text(str(tmp_path / "missing.txt"))


def test_calibration_never_uses_a_test_split(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("TRITIUM_DATA", str(make_wikitext(tmp_path, valid="The quick brown fox. " * 200)))
    with pytest.raises(CalibrationError, match="test split"):
        calibration_samples(tokenizer, "wikitext2-test", 2, 16)
    samples = calibration_samples(tokenizer, "wikitext2-valid", 4, 16, seed=1)
    assert samples.shape == (4, 16)
    assert (samples == calibration_samples(tokenizer, "wikitext2-valid", 4, 16, seed=1)).all()


def test_calibration_smaller_than_one_sample(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("TRITIUM_DATA", str(make_wikitext(tmp_path, valid="short\n")))
    with pytest.raises(CalibrationError, match="fewer than one sample"):
        calibration_samples(tokenizer, "wikitext2-valid", 2, 64)


def test_staged_splits_have_the_hf_row_counts(data_dir):
    assert len(load_text_rows("wikitext2", "test", data_dir)) == 4358
    ptb = load_text_rows("ptb", "test", data_dir)
    assert len(ptb) == 3761 and ptb[0] == "no it was n't black monday"
