"""Run folders: one writer at a time, no silent overwrite, fresh default names, no orphaned temporaries."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritium.utils import runs
from tritium.utils.io import atomic_directory, atomic_write_text
from tritium.utils.runs import (LOCK_FILE, RECORD_FILE, FolderLock, RunFolderBusyError, RunFolderError,
                                claim_output, claim_run_folder, clean_stale_temporaries, new_run_folder, run_session)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def write_lock(folder: Path, pid: int, host: str | None = None, name: str = LOCK_FILE):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                           "started": "2025-01-01 00:00:00", "started_epoch": time.time(),
                                           "command": "quantize"}))


def test_a_live_writer_s_lock_refuses_a_second_writer_naming_it(tmp_path, sleeper):
    write_lock(tmp_path / "run", sleeper.pid)
    with pytest.raises(RunFolderBusyError, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
        claim_run_folder(tmp_path / "run", "quantize", {"bits": 2})
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == sleeper.pid  # untouched
    assert not (tmp_path / "run" / RECORD_FILE).exists()


def test_a_lock_from_another_machine_is_never_taken_over(tmp_path):
    write_lock(tmp_path / "run", 1, host="some-other-host")
    with pytest.raises(RunFolderBusyError, match="another machine"):
        claim_run_folder(tmp_path / "run", "quantize", {})


def test_a_dead_writer_s_lock_is_taken_over_with_a_note(tmp_path, capsys):
    pid = dead_pid()
    write_lock(tmp_path / "run", pid)
    with claim_run_folder(tmp_path / "run", "quantize", {"bits": 2}) as run:
        assert json.loads((run.path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"took over the lock {tmp_path / 'run' / LOCK_FILE}" in capsys.readouterr().err
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released at the end


def test_a_lock_whose_pid_was_reused_by_a_newer_process_is_stale(tmp_path, sleeper):
    write_lock(tmp_path / "run", sleeper.pid)
    info = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    info["started_epoch"] = time.time() - 3600  # the lock is older than the process now holding that pid
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(info))
    assert runs.owner_running(info) is False


def test_two_processes_claiming_one_folder_exclusive(tmp_path):
    """A real second process: while the first holds the folder, the second is refused; afterwards it may continue."""
    script = (f"import sys, time; sys.path.insert(0, {SRC!r})\n"
              "from tritium.utils.runs import claim_run_folder\n"
              f"run = claim_run_folder({str(tmp_path / 'run')!r}, 'quantize', {{'bits': 2}})\n"
              "print('claimed', flush=True); time.sleep(60)\n")
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "claimed"
        with pytest.raises(RunFolderBusyError, match=f"pid {first.pid}"):
            claim_run_folder(tmp_path / "run", "quantize", {"bits": 2})
    finally:
        first.kill()
        first.wait()
    with claim_run_folder(tmp_path / "run", "quantize", {"bits": 2}) as run:  # the killed run's lock is stale now
        (run.path / "results.json").write_text("{}")  # something to continue from
        assert run.record["pieces"][0]["status"] == "running"


def test_a_non_empty_folder_is_refused_unless_the_same_unfinished_job_or_overwrite(tmp_path):
    out = tmp_path / "run"
    with claim_run_folder(out, "quantize", {"bits": 2}) as run:
        (run.path / "results.json").write_text("{}")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["status"] == "finished" and record["pieces"][0]["ended"]
    with pytest.raises(RunFolderError, match="finished `tritium quantize` run with these same settings.*--overwrite"):
        claim_run_folder(out, "quantize", {"bits": 2})
    with pytest.raises(RunFolderError, match=r"other settings \(--bits: 2 there, 3 here\).*--overwrite"):
        claim_run_folder(out, "quantize", {"bits": 3})
    with claim_run_folder(out, "quantize", {"bits": 3}, overwrite=True) as run:
        assert run.record["replaced"]["job"] == {"bits": 2}
    # an unfinished run of the same job continues; of another job it is refused, naming the way to resume it
    with pytest.raises(KeyboardInterrupt):
        with claim_run_folder(out, "quantize", {"bits": 4}, overwrite=True):
            raise KeyboardInterrupt
    assert json.loads((out / RECORD_FILE).read_text())["status"] == "interrupted"
    with pytest.raises(RunFolderError, match="unfinished .* rerun that exact command to resume it"):
        claim_run_folder(out, "quantize", {"bits": 2})
    with claim_run_folder(out, "quantize", {"bits": 4}) as run:
        assert run.continued and len(run.record["pieces"]) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty .*notes.txt.* holds no tritium run"):
        claim_run_folder(tmp_path / "foreign", "quantize", {})
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_a_run_that_fails_before_writing_anything_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError):
        with claim_run_folder(tmp_path / "run", "quantize", {}):
            raise ValueError("bad input")
    assert not (tmp_path / "run").exists()


def test_default_names_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda *a: "20250101-000000")
    first = new_run_folder("tiny", "rtn", root=tmp_path)
    second = new_run_folder("tiny", "rtn", root=tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == first.name + "-2"


def test_atomic_directory_leaves_nothing_when_the_body_fails(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("old")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_directory(tmp_path / "model") as tmp:
                (tmp / "config.json").write_text("half")
                raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (tmp_path / "model" / "config.json").read_text() == "old"


def test_stale_temporaries_are_removed_and_a_live_writer_s_kept(tmp_path, sleeper):
    dead = dead_pid()
    orphan = tmp_path / f".model.tritium-{dead}.abcd1234.tmp"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x" * 1000)
    legacy = tmp_path / ".results.json.k3j4h5.tmp"  # named by an older tritium: no pid
    legacy.write_text("{")
    live = tmp_path / f".results.md.tritium-{sleeper.pid}.zz.tmp"
    live.write_text("being written")
    set_aside = tmp_path / f".packed.tritium-{dead}.old-0a0b.tmp"  # a killed swap had moved the original aside
    set_aside.mkdir()
    (set_aside / "config.json").write_text("{}")
    notes = clean_stale_temporaries(tmp_path)
    assert not orphan.exists() and not legacy.exists() and live.exists()
    assert (tmp_path / "packed" / "config.json").is_file()  # put back, not deleted
    assert any(f"pid {dead} is no longer running" in n for n in notes)
    assert any(f"pid {sleeper.pid}) is still running" in n for n in notes)


def test_a_claim_clears_the_temporaries_of_a_killed_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    write_lock(out, dead_pid())
    orphan = out / f".model.tritium-{dead_pid()}.a1b2.tmp"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"\0" * 4096)
    with claim_run_folder(out, "quantize", {}):
        pass
    assert not orphan.exists()
    assert "a temporary a killed run left behind" in capsys.readouterr().err


def test_sigterm_during_a_save_runs_every_cleanup(tmp_path):
    """A plain `kill` of a command in the middle of a save leaves no temporary and no lock."""
    script = (f"import os, signal, sys, time; sys.path.insert(0, {SRC!r})\n"
              "from tritium.utils.io import atomic_directory\n"
              "from tritium.utils.runs import claim_run_folder, run_session\n"
              "with run_session():\n"
              f"    run = claim_run_folder({str(tmp_path / 'run')!r}, 'quantize', {{}})\n"
              "    with atomic_directory(run.path / 'model') as tmp:\n"
              "        (tmp / 'model.safetensors').write_bytes(b'0' * 10000)\n"
              "        print('saving', flush=True); time.sleep(60)\n")
    (tmp_path / "run").mkdir()  # given by --out: it stays, with the record of how the run ended
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + 15
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [RECORD_FILE]  # no model, no .model.*.tmp, no lock
    assert json.loads((tmp_path / "run" / RECORD_FILE).read_text())["status"] == "interrupted"


def test_a_session_closes_its_claims_and_the_lock_is_reentrant(tmp_path):
    with run_session():
        run = claim_run_folder(tmp_path / "run", "quantize", {})
        inner = FolderLock(run.path / LOCK_FILE, "the same folder")  # e.g. --checkpoint-dir = --out
        inner.acquire()
        inner.release()
        assert (run.path / LOCK_FILE).exists()  # still held by the run
        atomic_write_text(run.path / "results.json", "{}")
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    assert json.loads((tmp_path / "run" / RECORD_FILE).read_text())["status"] == "finished"


def test_an_existing_output_is_refused_unless_overwrite(tmp_path, sleeper):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"GGUF")
    with pytest.raises(RunFolderError, match="exists already: pass --overwrite"):
        claim_output(target, "export", flag="--gguf")
    with claim_output(target, "export", overwrite=True):
        assert (tmp_path / f".m.gguf{LOCK_FILE}").exists()
    assert not (tmp_path / f".m.gguf{LOCK_FILE}").exists()
    write_lock(tmp_path, sleeper.pid, name=f".m.gguf{LOCK_FILE}")
    with pytest.raises(RunFolderBusyError, match=f"pid {sleeper.pid}"):
        claim_output(target, "export", overwrite=True)
