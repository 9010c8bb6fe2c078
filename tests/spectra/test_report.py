import json

import pytest
from synthetic_suite import make_suite

from tritium.spectra.fit import fit_families
from tritium.spectra.records import load_suite
from tritium.spectra.report import suite_report_markdown, write_suite_report


def test_write_suite_report_and_load_suite(tmp_path):
    entries = make_suite(0.5)
    paths = write_suite_report(entries, tmp_path / "suite", title="synthetic suite",
                               extra_notes=["synthetic numbers from a known law"])
    assert load_suite(tmp_path / "suite") == entries
    data = json.loads(paths.suite_json.read_text())
    assert data["pattern"]["verdict"] == "holds"
    assert data["fits"]["params"]["FloatLM"]["alpha"] == pytest.approx(0.3, rel=1e-5)
    report = paths.report.read_text()
    assert report.startswith("# synthetic suite")
    assert "| TriLM | s64 | 64.5M | 64M |" in report  # table row: family, size, params, linear params
    assert "| FloatLM | s1 | 1.5M | 1M | 3 |" in report  # 16 bits × 1.5M params = 3 MB
    assert "**Verdict: holds.**" in report
    assert "at equal size in bits: better" in report and "at equal parameters: worse" in report
    assert "L(N) = 300 / N^0.3000 + 2.0000" in report
    assert "41.0%" in report and "zero-shot avg" in report
    assert "](figures/val_loss_vs_bits.png)" in report and "(figures/val_loss_vs_bits.svg)" in report
    assert all(p.is_file() for p in paths.figures)
    assert "- synthetic numbers from a known law" in report


def test_report_shows_failed_fits_and_missing_baseline(tmp_path):
    entries = [e for e in make_suite(0.5) if e.family == "TriLM"][:2]
    fits = {"params": fit_families(entries)}
    report = suite_report_markdown(entries, fits, title="two points")
    assert "TriLM**: not fitted (not enough points" in report
    paths = write_suite_report(entries, tmp_path, plots=False)  # no FloatLM: no verdict, no error
    assert json.loads(paths.suite_json.read_text())["pattern"] is None
    assert "Verdict" not in paths.report.read_text()
