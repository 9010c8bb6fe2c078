"""What the job tests share: a small text corpus and its token folder; for the preflight tests, spies that fail a
test when refused work starts anyway, a folder this user may not write into, and the check of a refused command."""

from __future__ import annotations

import os

import pytest

WORDS = ("ternary weights keep a scale per matrix while float models keep sixteen bits for every weight and "
         "the suite compares them by parameters and by bits").split()


def write_corpus(folder, n_docs=24, words=120):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(WORDS[(i * 7 + k * (1 + i % 3)) % len(WORDS)] for k in range(words))
        (folder / f"doc{i:02d}.txt").write_text(text + ".")
    return folder


@pytest.fixture
def corpus():
    """``corpus(folder)``: a folder of small text documents, written and returned."""
    return write_corpus


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory):
    """The corpus tokenized by a 320-token BPE learnt from it, a fifth of the documents held out."""
    from tritium.data.tokens import ingest, train_tokenizer

    root = tmp_path_factory.mktemp("suite-data")
    src = write_corpus(root / "text")
    tokenizer = train_tokenizer([p.read_text() for p in sorted(src.iterdir())], 320)
    return ingest([str(src)], root / "tokens", tokenizer, val_fraction=0.2, progress=False)


@pytest.fixture
def refused(capsys):
    """``refused(argv, *phrases)``: the command exits 2 and its error holds every phrase; returns the error."""
    from tritium.cli import main

    def check(argv, *phrases):
        assert main(argv) == 2
        err = capsys.readouterr().err
        for phrase in phrases:
            assert phrase in err, err
        return err

    return check


@pytest.fixture
def record_calls(monkeypatch):
    """``record_calls([(module, name), ...])`` replaces each by a recorder that fails the test; it returns the list
    of the names called (which a test asserts empty)."""

    def install(targets) -> list[str]:
        started = []

        def spy(name):
            def record(*args, **kwargs):
                started.append(name)
                raise AssertionError(f"{name} started although the job should have been refused first")
            return record

        for module, name in targets:
            monkeypatch.setattr(module, name, spy(name))
        return started

    return install


@pytest.fixture
def locked_folder(tmp_path, monkeypatch):
    """A folder this user may not write into (faked: the suite may run as root, who may write anywhere)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    return locked
