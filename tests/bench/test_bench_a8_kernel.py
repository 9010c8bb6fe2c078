"""bench/bench_a8_kernel.py on tiny shapes: the plumbing (paths, flags, columns, its own error check), not the speed."""

import json

import pytest

from bench_scripts import load_bench
from tritium.kernels import available_paths, load_cpu_kernel
from tritium.kernels.cpu import simd_flags

pytestmark = pytest.mark.usefixtures("restore_cpu_path")


def test_tiny_run_times_every_path_and_checks_the_int8_path(tmp_path, capsys):
    if not load_cpu_kernel():
        pytest.skip("no CPU kernel")
    out = tmp_path / "a8.json"
    bench = load_bench("bench_a8_kernel")
    assert bench.main(["--threads", "1", "--shapes", "64x48,40x17", "--tokens", "1,9", "--trials", "1",
                       "--seconds", "0.001", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    paths = available_paths()
    assert report["flags"] == simd_flags() and report["threads"] == 1 and list(report["kernels"]) == paths
    assert len(report["rows"]) == 2 * 2 * 2 * len(paths)  # weights x shapes x token counts x paths
    assert {(r["in"], r["out"], r["tokens"]) for r in report["rows"]} == {(64, 48, 1), (64, 48, 9), (40, 17, 1),
                                                                          (40, 17, 9)}
    assert all(r["a8_max_error_vs_reference"] < 1e-5 for r in report["rows"])
    assert "| path | weights | in→out | tokens | a8 µs | float µs | hook+float µs | fp32 µs |" in printed
    assert "SIMD flags: " + " ".join(simd_flags()) in printed
