"""Preflight of pretrain, suite and data ingest: each bad input is a TritiumError naming the problem and its fix,
raised before any tokenizer is learnt, any text tokenized or any model trained (spies on those prove none began)."""

from __future__ import annotations

import re

import pytest
import torch

from tritium.utils.errors import TritiumError

@pytest.fixture
def no_training(record_calls):
    """Learning a tokenizer, tokenizing, pretraining and running a suite, each replaced by a recorder."""
    import tritium.data.tokens
    import tritium.jobs.suite
    import tritium.train.pretrain

    return record_calls([(tritium.data.tokens, "train_tokenizer"), (tritium.data.tokens, "ingest"),
                         (tritium.train.pretrain, "pretrain"), (tritium.jobs.suite, "pretrain"),
                         (tritium.jobs.suite, "run_suite")])


def pretrain_args(data, out, *extra):
    return ["pretrain", "--arch", "trilm", "--size", "tiny-xs", "--data", str(data), "--steps", "1", "--seqlen", "32",
            "--micro-batch-size", "2", "--eval", "none", "--no-progress", "--out", str(out), *extra]


def suite_args(data, out, *extra):
    return ["suite", "--sizes", "tiny-xs", "--kinds", "float,tri", "--data", str(data), "--steps", "1", "--seqlen",
            "32", "--micro-batch-size", "2", "--eval", "none", "--no-progress", "--out", str(out), *extra]


def drop(args, flag):
    """``args`` without ``flag`` and its value."""
    i = args.index(flag)
    return args[:i] + args[i + 2:]


# (flags, what the error says): refused for pretrain and suite alike, on a token folder
TRAINING_OPTIONS = [
    (["--tokens", "-5"], "--tokens -5 is not a positive whole number: pass the training budget in tokens"),
    (["--steps", "0"], "--steps 0 is not a positive whole number"),
    (["--tokens", "5000", "--steps", "1"], "--tokens 5000 and --steps 1 are two budgets for one run: give one of them"),
    (["--shards", "0"], "--shards 0 is not a positive whole number"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1 is not a whole number of 0 or more"),
    (["--lr", "0"], "--lr 0.0 is not a positive learning rate"),
    (["--limit", "0"], "--limit 0 is not a positive whole number"),
    (["--zeroshot-limit", "0"], "--zeroshot-limit 0 is not a positive whole number"),
    (["--eval", "no-such-file.txt"], "'no-such-file.txt' is neither a known data set"),
    (["--train-tokenizer", "320"], "is a token folder: it was tokenized already"),
    (["--val-fraction", "0.5"], "the token folder fixes the split"),
]


@pytest.mark.parametrize("command", [pretrain_args, suite_args])
@pytest.mark.parametrize("flags, phrase", TRAINING_OPTIONS)
def test_a_bad_training_option_is_refused_before_any_training(token_folder, tmp_path, no_training, refused, command,
                                                               flags, phrase):
    args = command(token_folder.path, tmp_path / "run")
    for flag in ("--eval", "--steps"):
        if flag in flags or (flag, "--tokens") == ("--steps", flags[0]):
            args = drop(args, flag)  # the case's own value replaces it
    refused(args + flags, phrase)
    assert no_training == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [pretrain_args, suite_args])
def test_a_seqlen_or_budget_the_token_folder_cannot_fill_is_refused(token_folder, tmp_path, no_training, refused,
                                                                   command):
    train, held_out = token_folder.n_tokens("train"), token_folder.n_tokens("val")
    assert held_out < train
    args = drop(command(token_folder.path, tmp_path / "run"), "--seqlen")
    refused(args + ["--seqlen", str(train + 1)], f"has {train} tokens, fewer than one sequence of {train + 1}")
    refused(args + ["--seqlen", str(held_out + 1)], f"the val split of {token_folder.path} has {held_out} tokens",
            "raise --val-fraction")
    budget = drop(args, "--steps") + ["--seqlen", "32", "--tokens", "10"]
    refused(budget, "a budget of 10 tokens is less than one step of 64 tokens")
    assert no_training == []


@pytest.mark.parametrize("command", [pretrain_args, suite_args])
def test_an_unwritable_out_or_a_missing_device_is_refused(token_folder, tmp_path, no_training, refused, command,
                                                          locked_folder, monkeypatch):
    refused(command(token_folder.path, locked_folder / "run"), f"{locked_folder} is not writable",
            "choose a --out in a folder you can write")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(command(token_folder.path, tmp_path / "run", "--device", "cuda"),
            "--device cuda asks for a GPU", "pass --device cpu")
    assert no_training == [] and not (tmp_path / "run").exists()


def test_an_unknown_zero_shot_task_is_refused_before_pretraining(token_folder, tmp_path, no_training, refused):
    refused(pretrain_args(token_folder.path, tmp_path / "run", "--zeroshot", "piqa,no_such_task"),
            "unknown zero-shot task(s) ['no_such_task']")
    assert no_training == []


def undecodable(corpus, folder):
    """A folder of text in which one file is not UTF-8."""
    corpus(folder)
    (folder / "blob.txt").write_bytes(b"fine text, then " + bytes(range(128, 256)) * 4)
    return folder / "blob.txt"


# (flags, what the error says): raw text that cannot be tokenized as asked
RAW_TEXT_OPTIONS = [
    (["--tokenizer", "smollm2-135m", "--train-tokenizer", "320"], "give either --tokenizer or --train-tokenizer, "
                                                                  "not both"),
    (["--train-tokenizer", "100"], "a byte-level BPE vocabulary needs more than its 256 bytes"),
    (["--train-tokenizer", "0"], "--train-tokenizer 0, use e.g. 8192"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1 (exclusive), got 1.5"),
    (["--tokenizer", "/no/such/tokenizer"], "was not found"),
]


@pytest.mark.parametrize("flags, phrase", RAW_TEXT_OPTIONS)
def test_raw_text_with_inconsistent_tokenizer_options_is_refused_before_tokenizing(tmp_path, no_training, refused,
                                                                                 corpus, flags, phrase):
    src = corpus(tmp_path / "text")
    refused(pretrain_args(src, tmp_path / "run", *flags), phrase)
    refused(["data", "ingest", str(src), "--out", str(tmp_path / "tokens"), *flags], phrase)
    assert no_training == [] and not (tmp_path / "run").exists() and not (tmp_path / "tokens").exists()


@pytest.mark.parametrize("with_eval_splits", [True, False])
def test_data_that_is_missing_or_does_not_decode_is_refused_before_tokenizing(tmp_path, no_training, refused,
                                                                             corpus, monkeypatch, tiny_data,
                                                                             with_eval_splits):
    if not with_eval_splits:  # nothing to compare the text with: it is read all the same
        monkeypatch.setenv("TRITIUM_DATA", str(tmp_path / "empty"))
    blob = undecodable(corpus, tmp_path / "text")
    for args in (pretrain_args(tmp_path / "text", tmp_path / "run", "--train-tokenizer", "320"),
                 suite_args(tmp_path / "text", tmp_path / "run"),
                 ["data", "ingest", str(tmp_path / "text"), "--out", str(tmp_path / "tokens")]):
        refused(args, f"{blob} is not UTF-8 text", "convert it to UTF-8")
    refused(pretrain_args(tmp_path / "missing", tmp_path / "run"), "was not found")
    refused(["data", "ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "tokens")], "was not found")
    assert no_training == [] and not (tmp_path / "run").exists() and not (tmp_path / "tokens").exists()


def test_ingest_refuses_an_out_it_cannot_write_or_must_not_replace(tmp_path, no_training, refused, locked_folder,
                                                                  corpus):
    src = corpus(tmp_path / "text")
    refused(["data", "ingest", str(src), "--out", str(locked_folder / "tokens")],
            f"{locked_folder} is not writable")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not tokens")
    refused(["data", "ingest", str(src), "--out", str(tmp_path / "other")],
            "exists and is not a token folder: choose a new or empty folder for --out")
    assert no_training == [] and (tmp_path / "other" / "keep.txt").is_file()


@pytest.mark.parametrize("options, phrase", [
    ({"text_field": ""}, "--text-field must name the jsonl key or column"),
    ({"seed": 1.5}, "--seed must be a whole number, not 1.5"),
    ({"val_fraction": "0.1"}, "--val-fraction must be between 0 and 1 (exclusive), got '0.1'"),
])
def test_a_python_ingest_job_with_a_bad_option_is_refused_before_tokenizing(tmp_path, no_training, corpus, options,
                                                                             phrase):
    from tritium.jobs import IngestJob, ingest_corpus

    with pytest.raises(TritiumError, match=re.escape(phrase)):
        ingest_corpus(IngestJob(sources=[str(corpus(tmp_path / "text"))], out=str(tmp_path / "tokens"), **options))
    assert no_training == [] and not (tmp_path / "tokens").exists()
