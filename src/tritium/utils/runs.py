"""Run folders and outputs that one process writes at a time, and that no run silently overwrites.

Every command that writes a run folder (quantize, eval, distill, pretrain, suite) claims it with
:func:`claim_run_folder`; every command that writes one output among others (``pack --out``, ``export
--gguf``) claims it with :func:`claim_output`. A claim

* takes a lock file created with O_EXCL that holds the writer's pid, host and start time: a second
  writer is refused with an error naming the first, and the lock of a process that died on this host
  is taken over with a note;
* removes the temporary files killed runs left there (``.*.tmp``, see :mod:`tritium.utils.io`), or
  reports them while the process that writes them still runs;
* refuses a folder that holds something already, unless it is an unfinished run of the same job (which
  continues: its checkpoints resume it) or ``--overwrite`` says to write over it.

What a run folder holds and for which job is recorded in its ``run.json``; a default run folder gets a
fresh name made with an exclusive mkdir, so two runs started in the same second never share one.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import TritiumError
from .io import atomic_write_json, folder_bytes

LOCK_FILE = ".tritium.lock"
RECORD_FILE = "run.json"
# Command-line settings that do not change what a run computes: a rerun differing only in them is the same job.
NOT_PART_OF_THE_JOB = ("out", "overwrite", "no_progress", "no_resume", "command")


class RunFolderError(TritiumError, FileExistsError):
    """The output folder or file holds something a run would overwrite."""


class RunFolderBusyError(RunFolderError):
    """Another process is writing the output right now."""


def _host() -> str:
    return socket.gethostname()


def _stamp(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _print_note(message: str) -> None:
    print(f"tritium: note: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- processes


def process_alive(pid) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _process_start_epoch(pid: int) -> float | None:
    """When process ``pid`` started (Linux /proc), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        with open("/proc/stat") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_running(info: dict) -> bool | None:
    """Whether the process a lock names still runs: True or False on this host, None on another host."""
    if info.get("host") != _host():
        return None
    pid = info.get("pid")
    if not process_alive(pid):
        return False
    started, locked = _process_start_epoch(int(pid)), info.get("started_epoch")
    if started is not None and isinstance(locked, (int, float)) and started > locked + 2:
        return False  # that pid now belongs to a process started after the lock was taken
    return True


# --------------------------------------------------------------------------- locks

_HELD: dict[str, int] = {}  # lock files this process holds -> how many claims hold each
_HELD_GUARD = threading.Lock()


class FolderLock:
    """A lock file created with O_EXCL; re-entrant within one process (a checkpoint folder inside the run
    folder, or the run folder itself passed as --checkpoint-dir, takes the lock the run already holds)."""

    def __init__(self, path: Path, what: str, command: str = ""):
        self.path = Path(path)
        self.what = what
        self.command = command
        self.held = False
        self.info = {"pid": os.getpid(), "host": _host(), "started": _stamp(), "started_epoch": time.time(),
                     "command": command}

    @property
    def _key(self) -> str:
        return str(self.path.parent.resolve() / self.path.name)

    def acquire(self) -> list[str]:
        """Take the lock; returns notes (a stale lock taken over). Raises RunFolderBusyError while another
        live process holds it."""
        notes: list[str] = []
        with _HELD_GUARD:
            if self._key in _HELD:
                _HELD[self._key] += 1
                self.held = True
                return notes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                with _HELD_GUARD:
                    _HELD[self._key] = 1
                self.held = True
                return notes
            raw, other = self._read()
            if raw is None:  # removed meanwhile: try again
                continue
            if other is None:  # not JSON: a writer between its create and its write, or a damaged file
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 5:
                    time.sleep(0.2)
                    continue
                other, running = {}, False
            else:
                running = owner_running(other)
            if running is False:
                if self._take_over(raw):
                    notes.append(f"took over the lock {self.path}: the process that held it ("
                                 f"{_describe_owner(other)}) is no longer running")
                continue
            raise RunFolderBusyError(self._busy_message(other, running))
        raise RunFolderBusyError(f"could not take the lock {self.path}: other processes keep taking it; try again")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[bytes | None, dict | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return raw, None
        return raw, info if isinstance(info, dict) else None

    def _take_over(self, stale: bytes) -> bool:
        """Move the stale lock aside, atomically; if another process replaced it meanwhile, put theirs back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if aside.read_bytes() == stale:
            aside.unlink(missing_ok=True)
            return True
        try:  # we moved a fresh lock of another process: restore it unless the place was taken again
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False

    def _busy_message(self, other: dict, running: bool | None) -> str:
        alive = ("it is still running" if running else
                 "on another machine, so tritium cannot tell whether it still runs")
        return (f"{self.what} is being written by another tritium process ({_describe_owner(other)}; {alive}). "
                f"Wait for it to finish, or choose another --out; if that process is gone, delete {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _HELD_GUARD:
            _HELD[self._key] -= 1
            if _HELD[self._key] > 0:
                return
            del _HELD[self._key]
        _, info = self._read()
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == _host():
            self.path.unlink(missing_ok=True)


def _describe_owner(info: dict) -> str:
    command = info.get("command")
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f", `tritium {command}`" if command else ""))


# --------------------------------------------------------------------------- temporaries

# Names tritium.utils.io gives its temporaries: .<target>.tritium-<pid>.[old-]<random>.tmp
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tritium-(?P<pid>\d+)\.(?P<old>old-)?[^.]*\.tmp$")
# Names older tritium versions used: .<target>.<random>.tmp, .<target>.tmp-<pid>, .<target>.old-<pid>
_OLD_TEMPORARY = re.compile(r"^\.(?P<target>.+?)\.(?:[^.]+\.tmp|tmp-(?P<pid>\d+)|(?P<old>old)-(?P<oldpid>\d+))$")


def _parse_temporary(name: str) -> tuple[str, int | None, bool] | None:
    """(target name, owner pid or None, whether it is a replaced original) of a temporary's name."""
    match = _TEMPORARY.match(name)
    if match:
        return match["target"], int(match["pid"]), bool(match["old"])
    match = _OLD_TEMPORARY.match(name)
    if match:
        pid = match["pid"] or match["oldpid"]
        return match["target"], int(pid) if pid else None, bool(match["old"])
    return None


def clean_stale_temporaries(folder: Path, recursive: bool = True, target: str | None = None) -> list[str]:
    """Remove the temporaries killed processes left in ``folder`` (only those of ``target`` when given);
    returns one note per temporary found. Call it holding the folder's lock: every other tritium writer
    of the folder then is gone, and a temporary is kept only while the process named in it runs.
    An original that a killed swap had set aside, with nothing in its place, is put back."""
    notes: list[str] = []
    folder = Path(folder)
    if not folder.is_dir():
        return notes
    for root, dirs, files in os.walk(folder):
        for name in sorted([*dirs, *files]):
            parsed = _parse_temporary(name)
            if parsed is None or (target is not None and parsed[0] != target):
                continue
            target_name, pid, is_original = parsed
            path = Path(root) / name
            if name in dirs:
                dirs.remove(name)  # never walk into a temporary
            if pid is not None and pid != os.getpid() and process_alive(pid):
                notes.append(f"kept {path}: the process writing it (pid {pid}) is still running")
                continue
            destination = Path(root) / target_name
            if is_original and not destination.exists():
                os.replace(path, destination)
                notes.append(f"put {destination} back: a killed run had moved it aside to replace it")
                continue
            size = folder_bytes(path) if path.exists() else 0
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            owner = f" (pid {pid} is no longer running)" if pid is not None else ""
            notes.append(f"removed {path} ({size / 1e6:.1f} MB), a temporary a killed run left behind{owner}")
        if not recursive:
            break
    return notes


# --------------------------------------------------------------------------- claims


class _Claim:
    def __init__(self, lock: FolderLock | None):
        self._lock = lock
        self.closed = False

    def close(self, status: str = "finished") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._finish(status)
        finally:
            if self._lock is not None:
                self._lock.release()

    def _finish(self, status: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(_status_of(kind))
        return False


def _status_of(kind) -> str:
    if kind is None:
        return "finished"
    return "interrupted" if issubclass(kind, (KeyboardInterrupt, SystemExit)) else "failed"


class RunFolder(_Claim):
    """A claimed run folder: ``path``; ``continued`` when it takes up an unfinished run of the same job."""

    def __init__(self, path: Path, command: str, lock: FolderLock | None, record: dict | None, created: bool,
                 continued: bool):
        super().__init__(lock)
        self.path, self.command, self.record, self.created, self.continued = path, command, record, created, continued

    def _finish(self, status: str) -> None:
        if self.record is None:  # not the writing process (another rank of a distributed run)
            return
        piece = self.record["pieces"][-1]
        piece.update(ended=_stamp(), status=status)
        self.record["status"] = status
        leftovers = [p for p in self.path.iterdir() if p.name not in (LOCK_FILE, RECORD_FILE)] \
            if self.path.is_dir() else []
        if status != "finished" and self.created and not leftovers:
            shutil.rmtree(self.path, ignore_errors=True)  # a run that failed before writing anything leaves no folder
            return
        atomic_write_json(self.path / RECORD_FILE, self.record)


class OutputClaim(_Claim):
    """A claimed output (a folder written whole, or a file) at ``path``."""

    def __init__(self, path: Path, lock: FolderLock):
        super().__init__(lock)
        self.path = path


def job_settings(args) -> dict:
    """The settings of a command-line job, as JSON values, without those that do not change what it computes."""
    values = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_PART_OF_THE_JOB and not callable(v)}
    return json.loads(json.dumps(values, default=str))


def new_run_folder(name: str, tag: str, root: str | os.PathLike = "runs") -> Path:
    """Create and return ``root/<name>-<tag>-<time>`` (``-2``, ``-3``, ... when taken): an exclusive mkdir,
    so runs started in the same second get folders of their own."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(name)).name)
    base = f"{safe}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _differences(theirs: dict, ours: dict) -> str:
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    shown = [f"--{k.replace('_', '-')}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def claim_run_folder(out: str | os.PathLike | None, command: str, job: dict, overwrite: bool = False,
                     default_name: tuple[str, str] | None = None) -> RunFolder:
    """Claim the run folder ``out`` (or a new ``runs/<name>-<tag>-<time>`` from ``default_name``) for
    ``tritium <command>`` with settings ``job`` (see :func:`job_settings`).

    A folder holding something already is taken only for an unfinished run of the same command and
    settings (it continues; checkpoints resume it) or with ``overwrite`` (files are replaced as the new run
    writes them; nothing is deleted first). Close the claim when the run ends (``with``, or a
    :func:`run_session`): it records how the run ended and releases the lock.
    """
    if out is None and default_name is None:
        raise ValueError("claim_run_folder needs a folder or a default name")
    if _rank() > 0:  # a distributed run's other processes write where process 0 claimed
        if out is None:
            raise RunFolderError("a distributed run needs --out, so that all its processes write the same folder")
        return _register(RunFolder(Path(out), command, None, None, False, False))
    created = False
    if out is None:
        path, created = new_run_folder(*default_name), True
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder: choose another --out")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(path / LOCK_FILE, f"the run folder {path}", command)
    notes: list[str] = []
    try:
        notes += lock.acquire()
        notes += clean_stale_temporaries(path)
        record = _read_record(path)
        entries = sorted(p.name for p in path.iterdir() if p.name not in (LOCK_FILE, RECORD_FILE))
        same = record is not None and record.get("command") == command and record.get("job") == job
        continued = False
        if same and record.get("status") != "finished" and entries:
            continued = True
            for piece in record["pieces"]:
                if piece.get("status") == "running":  # its process died without closing the run
                    piece["status"] = "killed"
            notes.append(f"continuing the unfinished run in {path} (piece {len(record['pieces']) + 1}; the last "
                         f"one {record['pieces'][-1].get('status')}); checkpoints in it resume it")
        elif entries and not overwrite:
            raise RunFolderError(_refusal(path, record, command, job, entries))
        elif entries:
            what = (f"a {record.get('status')} `tritium {record.get('command')}` run" if record else
                    f"{len(entries)} entries")
            notes.append(f"--overwrite: {path} holds {what}; this run writes over it (files are replaced as it "
                         "writes them, and checkpoints of the same job in it still resume)")
        if not continued:
            replaced = ({k: record.get(k) for k in ("command", "job", "status")} | {
                "ended": (record.get("pieces") or [{}])[-1].get("ended")}) if record and entries else None
            record = {"command": command, "job": job, "created": _stamp(), "status": "running", "pieces": [],
                      **({"replaced": replaced} if replaced else {})}
        record["status"] = "running"
        record["pieces"].append({"pid": os.getpid(), "host": _host(), "started": _stamp(), "ended": None,
                                 "status": "running"})
        atomic_write_json(path / RECORD_FILE, record)
    except BaseException:
        lock.release()
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        for note in notes:  # what was cleared before the refusal
            _print_note(note)
        raise
    for note in notes:
        _print_note(note)
    return _register(RunFolder(path, command, lock, record, created, continued))


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads((path / RECORD_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pieces"), list) else None


def _refusal(path: Path, record: dict | None, command: str, job: dict, entries: list[str]) -> str:
    elsewhere = "choose another --out (or none: every run then gets a new folder of its own)"
    if record is None:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        return (f"{path} is not empty ({len(entries)} entries: {shown}) and holds no tritium run ({RECORD_FILE}): "
                f"{elsewhere}, or pass --overwrite to write into it anyway")
    theirs = f"`tritium {record.get('command')}` run"
    if record.get("command") == command and record.get("job") == job:
        return (f"{path} already holds a finished {theirs} with these same settings (ended "
                f"{record['pieces'][-1].get('ended') if record['pieces'] else '?'}): pass --overwrite to run it "
                f"again there, or {elsewhere}")
    differs = (f"it was a {theirs}" if record.get("command") != command
               else _differences(record.get("job") or {}, job))
    if record.get("status") != "finished":
        return (f"{path} holds an unfinished {theirs} with other settings ({differs}): rerun that exact command to "
                f"resume it, pass --overwrite to start this run there in its place, or {elsewhere}")
    return (f"{path} already holds a finished {theirs} with other settings ({differs}): pass --overwrite to "
            f"replace it, or {elsewhere}")


def claim_output(path: str | os.PathLike, command: str, overwrite: bool = False, flag: str = "--out") -> OutputClaim:
    """Claim one output written whole (a model folder, a file): a lock beside it, its orphaned temporaries
    removed, and an existing output refused unless ``overwrite``."""
    path = Path(path)
    lock = FolderLock(path.parent / f".{path.name}{LOCK_FILE}", str(path), command)
    notes = lock.acquire()
    try:
        notes += clean_stale_temporaries(path.parent, recursive=False, target=path.name)
        exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
        if exists and not overwrite:
            raise RunFolderError(f"{path} exists already: pass --overwrite to replace it, or choose another {flag}")
    except BaseException:
        lock.release()
        for note in notes:
            _print_note(note)
        raise
    for note in notes:
        _print_note(note)
    return _register(OutputClaim(path, lock))


# --------------------------------------------------------------------------- the session of one command

_SESSION: list[_Claim] | None = None


def _register(claim: _Claim) -> _Claim:
    if _SESSION is not None:
        _SESSION.append(claim)
    else:  # claimed outside a command: released at exit at the latest
        atexit.register(claim.close, "ended")
    return claim


class Session:
    def __init__(self):
        self.claims: list[_Claim] = []
        self.failed = False  # set when the command returns a failure code


@contextmanager
def run_session():
    """Around one command: the claims it makes are closed when it ends, recording in each run folder how it
    ended (finished, failed or interrupted). SIGTERM becomes SystemExit meanwhile, so that a plain ``kill``
    still runs every cleanup (temporaries, locks) on its way out."""
    global _SESSION
    session = Session()
    previous, _SESSION = _SESSION, session.claims
    restore = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def terminated(signum, frame):
            raise SystemExit(128 + signum)

        restore = signal.signal(signal.SIGTERM, terminated)
    status = "failed"
    try:
        yield session
        status = "failed" if session.failed else "finished"
    except BaseException as err:
        status = _status_of(type(err))
        raise
    finally:
        _SESSION = previous
        for claim in reversed(session.claims):
            claim.close(status)
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
