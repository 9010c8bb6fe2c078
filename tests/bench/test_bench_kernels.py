"""bench/bench_kernels.py on tiny shapes: the plumbing (paths, CPU flags, contention mode), not the speed."""

import importlib.util
import json
from pathlib import Path

import pytest

from tritium.kernels import available_paths, load_cpu_kernel
from tritium.kernels.cpu import simd_flags

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_cpu_path")


def test_tiny_run_records_flags_paths_and_contention(bench, tmp_path, capsys):
    if not load_cpu_kernel():
        pytest.skip("no CPU kernel")
    out = tmp_path / "kernels.json"
    assert bench.main(["--threads", "1", "--shapes", "64x48,40x16", "--path", "all", "--trials", "2",
                       "--seconds-per-trial", "0.002", "--contention", "--contention-calls", "20",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    paths = available_paths()
    assert report["kernel_paths_timed"] == ", ".join(paths)
    assert report["cpu_simd_flags"].split() == simd_flags() and report["threads"] == 1
    assert [r["shape"] for r in report["rows"]] == ["64->48", "40->16"]
    for row in report["rows"]:
        assert set(row["paths"]) == set(paths)
        assert all(v["max_abs_error_vs_reference"] < 1e-4 for v in row["paths"].values())
    cells = {(c["threads"], c["load"]) for c in report["contention"]}
    assert cells == {(1, "idle"), (1, "busy"), (2, "idle"), (2, "busy")}
    assert all(c["openmp_threads"] == c["threads"] for c in report["contention"])
    assert "90th percentile" in capsys.readouterr().out


def test_a_path_the_cpu_cannot_run_stops_before_timing(bench, monkeypatch):
    if not load_cpu_kernel():
        pytest.skip("no CPU kernel")
    from tritium.kernels import CpuPathError

    with pytest.raises(CpuPathError, match="names no CPU kernel path"):
        bench.main(["--shapes", "16x16", "--path", "avx3"])
