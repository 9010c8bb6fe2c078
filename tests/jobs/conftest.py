"""What the preflight tests share: spies that fail a test when refused work starts anyway, and a folder this user
may not write into."""

from __future__ import annotations

import os

import pytest


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
