"""Every bench script claims its --out: a second bench writing the same result is refused before any work."""

import json
import socket
import subprocess
import sys
import time

import pytest

from bench_scripts import load_bench
from tritium.utils.runs import RunFolderBusyError


@pytest.mark.parametrize("name, argv", [("bench_ptq", []), ("bench_decode", []), ("bench_saved_scoring", ["x"]),
                                        ("bench_eval", []), ("bench_export", []),
                                        ("bench_wa", [])])
def test_a_bench_whose_out_is_being_written_is_refused_first(tmp_path, monkeypatch, name, argv):
    bench = load_bench(name)
    out = tmp_path / "result.md"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".{out.name}.tritium.lock").write_text(json.dumps({
            "pid": writer.pid, "host": socket.gethostname(), "started": "now", "started_epoch": time.time(),
            "command": name}))
        monkeypatch.setattr(sys, "argv", [name, *argv, "--out", str(out)])  # for the scripts that read sys.argv
        with pytest.raises(RunFolderBusyError, match=f"pid {writer.pid}"):
            bench.main() if name == "bench_eval" else bench.main([*argv, "--out", str(out)])
    finally:
        writer.kill()
        writer.wait()
    assert not out.exists()
