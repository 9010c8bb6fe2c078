import json
import math

import numpy as np
import pytest

from tritium.eval.scaling import (
    PowerLawFit,
    SuiteEntry,
    compare_at_equal,
    fit_families,
    fit_power_law,
    load_suite,
    plot_suite,
    spectra_pattern,
    suite_report_markdown,
    write_suite_report,
)

EMBED_PARAMS = 500_000  # vocab × width, kept at 16 bits by every family
SIZES = {"s1": 1_000_000, "s4": 4_000_000, "s16": 16_000_000, "s64": 64_000_000}


def law(n, A=300.0, alpha=0.3, eps=2.0):
    return A * np.power(n, -alpha) + eps


def make_suite(tri_efficiency: float, sizes=SIZES, float_sizes=SIZES) -> list[SuiteEntry]:
    """FloatLM on the law; TriLM as good as a FloatLM with ``tri_efficiency`` × its parameters.

    Bits: FloatLM 16 per weight, TriLM 1.58 per weight, embeddings 16 bits in both.
    """
    entries = []
    for size, n in float_sizes.items():
        loss = float(law(n))
        entries.append(SuiteEntry("FloatLM", size, n + EMBED_PARAMS, n, 16.0 * (n + EMBED_PARAMS), loss,
                                  {"val_ppl": math.exp(loss), "piqa": 0.5 + 0.02 * math.log10(n),
                                   "arc_easy": 0.3 + 0.03 * math.log10(n)}, tokens=20 * n))
    for size, n in sizes.items():
        loss = float(law(n * tri_efficiency))
        entries.append(SuiteEntry("TriLM", size, n + EMBED_PARAMS, n, 1.58 * n + 16.0 * EMBED_PARAMS, loss,
                                  {"val_ppl": math.exp(loss), "piqa": 0.49 + 0.02 * math.log10(n),
                                   "arc_easy": 0.29 + 0.03 * math.log10(n)},
                                  tokens=20 * n, train_seconds=12.5, tokens_per_second=3.2e4, mfu=0.41))
    return entries


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("A, alpha, eps, lo, hi", [(400.0, 0.3, 1.7, 1e6, 1e9), (25.0, 0.55, 0.4, 1e3, 1e5),
                                                   (3e3, 0.12, 2.9, 1e7, 1e11)])
def test_fit_recovers_exact_law(A, alpha, eps, lo, hi):
    n = np.geomspace(lo, hi, 7)
    fit = fit_power_law(n, law(n, A, alpha, eps))
    assert fit.ok and fit.reason == ""
    assert fit.A == pytest.approx(A, rel=1e-5)
    assert fit.alpha == pytest.approx(alpha, rel=1e-6)
    assert fit.eps == pytest.approx(eps, rel=1e-6)
    assert fit.rmse < 1e-8 and fit.n_points == 7
    assert fit.predict(2 * hi) == pytest.approx(law(2 * hi, A, alpha, eps), rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_law_from_noisy_points(seed):
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e6, 1e9, 12)
    truth = law(n, 400.0, 0.3, 1.7)
    fit = fit_power_law(n, truth * (1 + 0.002 * rng.standard_normal(n.size)))
    assert fit.ok
    assert fit.alpha == pytest.approx(0.3, rel=0.03)
    assert fit.eps == pytest.approx(1.7, rel=0.03)
    assert fit.A == pytest.approx(400.0, rel=0.2)  # A and α trade off; the curve is what matters
    np.testing.assert_allclose(fit.predict(n), truth, rtol=0.005)
    assert 0.001 < fit.rmse / truth.mean() < 0.004  # the noise, not more, not fitted away


def test_fit_with_three_points_is_exact_and_says_so():
    n = [1e6, 4e6, 16e6]
    fit = fit_power_law(n, law(np.array(n)))
    assert fit.ok and "3 points" in fit.reason
    np.testing.assert_allclose(fit.predict(n), law(np.array(n)), rtol=1e-9)


def test_fit_refuses_too_few_or_degenerate_points():
    two = fit_power_law([1e6, 2e6], [3.0, 2.9])
    assert not two.ok and "not enough points" in two.reason and math.isnan(two.alpha)
    repeated = fit_power_law([1e6, 1e6, 2e6, 2e6], [3.0, 3.1, 2.9, 2.8])
    assert not repeated.ok and "distinct" in repeated.reason
    flat = fit_power_law([1e6, 2e6, 4e6, 8e6], [3.0, 3.0, 3.0, 3.0])
    assert not flat.ok and "does not fall" in flat.reason
    rising = fit_power_law([1e6, 2e6, 4e6, 8e6], [2.0, 2.5, 3.0, 3.5])
    assert not rising.ok
    with pytest.raises(ValueError, match="no fitted law"):
        rising.predict(1e6)


@pytest.mark.parametrize("n, loss, match", [
    ([1e6, 2e6, float("nan")], [3.0, 2.9, 2.8], "NaN"),
    ([1e6, 2e6, 4e6], [3.0, float("inf"), 2.8], "NaN or infinite"),
    ([0.0, 2e6, 4e6], [3.0, 2.9, 2.8], "positive N"),
    ([-1e6, 2e6, 4e6], [3.0, 2.9, 2.8], "positive N"),
    ([1e6, 2e6, 4e6], [3.0, 2.9], "one loss per N"),
])
def test_fit_rejects_bad_input(n, loss, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(n, loss)


def test_fit_families_fits_each_family_on_each_axis():
    entries = make_suite(0.5)
    fits = fit_families(entries, axis="params")
    assert set(fits) == {"FloatLM", "TriLM"}
    assert fits["FloatLM"].alpha == pytest.approx(0.3, rel=1e-5)
    assert fits["FloatLM"].eps == pytest.approx(2.0, rel=1e-5)
    # TriLM ≡ FloatLM at half the parameters: same α and ε, A scaled by 0.5^-α
    assert fits["TriLM"].A == pytest.approx(300 * 0.5 ** -0.3, rel=1e-4)
    assert all(f.ok for f in fit_families(entries, axis="bits").values())


# --------------------------------------------------------------------------- comparisons


def test_spectra_pattern_holds_on_a_suite_built_to_show_it():
    entries = make_suite(tri_efficiency=0.5)  # half as good per parameter, 10× smaller per parameter
    result = spectra_pattern(entries)
    assert result.verdict == "holds", result.reason
    assert result.by_params.verdict == "worse" and result.by_bits.verdict == "better"
    # at equal parameters every TriLM size meets a FloatLM of the very same size: exact differences
    for p in result.by_params.points:
        n = SIZES[p.size]
        assert p.method == "interpolation" and not p.extrapolated
        assert p.difference == pytest.approx(law(0.5 * n) - law(n), rel=1e-9)
        assert p.ratio > 1 and p.better is False
    # at equal bits the smallest TriLMs are smaller than any FloatLM: shown but not counted
    counted = [p for p in result.by_bits.points if not p.extrapolated]
    assert [p.size for p in counted] == ["s16", "s64"]
    assert all(p.better and p.ratio < 1 for p in counted)
    assert "2 of 2" in result.by_bits.reason and "not counted" in result.by_bits.reason


def test_spectra_pattern_does_not_hold_when_trilm_loses_at_equal_bits():
    entries = make_suite(tri_efficiency=0.02)
    result = spectra_pattern(entries)
    assert result.verdict == "does not hold"
    assert result.by_params.verdict == "worse" and result.by_bits.verdict == "worse"
    assert "equal bits" in result.reason and "expected: better" in result.reason


def test_spectra_pattern_does_not_hold_when_trilm_wins_at_equal_params():
    result = spectra_pattern(make_suite(tri_efficiency=2.0))
    assert result.verdict == "does not hold"
    assert result.by_params.verdict == "better"


def test_spectra_pattern_is_inconclusive_without_overlap():
    small = {"s1": SIZES["s1"], "s4": SIZES["s4"]}  # TriLM this small is under every FloatLM's bits
    result = spectra_pattern(make_suite(0.5, sizes=small))
    assert result.verdict == "inconclusive"
    assert result.by_params.verdict == "worse"
    assert result.by_bits.verdict == "inconclusive" and "too few points" in result.by_bits.reason
    # the law still extrapolates, flagged as such
    assert all(p.extrapolated and p.method == "fit" for p in result.by_bits.points)


def test_compare_at_equal_for_accuracy_counts_higher_as_better():
    entries = make_suite(0.5)
    result = compare_at_equal(entries, axis="params", metric="piqa")
    assert result.verdict == "worse"  # TriLM piqa is 0.01 below FloatLM at each size
    assert all(p.difference == pytest.approx(-0.01) for p in result.points)


def test_compare_at_equal_rejects_unknown_family_and_axis():
    entries = make_suite(0.5)
    with pytest.raises(ValueError, match="'BitNet' is not in the suite"):
        compare_at_equal(entries, family="BitNet")
    with pytest.raises(ValueError, match="axis must be one of"):
        compare_at_equal(entries, axis="flops")


# --------------------------------------------------------------------------- records


def test_suite_entry_json_round_trip():
    entries = make_suite(0.5)
    text = json.dumps([e.to_dict() for e in entries])
    back = [SuiteEntry.from_dict(d) for d in json.loads(text)]
    assert back == entries
    assert back[-1].mfu == 0.41 and back[0].train_seconds is None


def test_suite_entry_rejects_bad_values():
    good = dict(family="TriLM", size="s1", params=10, linear_params=8, bits=100.0, val_loss=3.0)
    SuiteEntry(**good)
    for change, match in [({"params": 0}, "params"), ({"linear_params": 2.5}, "linear_params"),
                          ({"bits": -1.0}, "bits"), ({"val_loss": float("nan")}, "val_loss"),
                          ({"family": ""}, "family"), ({"metrics": {"piqa": float("nan")}}, "metrics")]:
        with pytest.raises(ValueError, match=match):
            SuiteEntry(**(good | change))
    with pytest.raises(ValueError, match="unknown fields"):
        SuiteEntry.from_dict(good | {"loss": 3.0})
    with pytest.raises(ValueError, match="missing"):
        SuiteEntry.from_dict({k: v for k, v in good.items() if k != "bits"})


def test_power_law_fit_dict_round_trip_keeps_failures_json_safe():
    failed = fit_power_law([1.0, 2.0], [2.0, 1.0])
    data = json.loads(json.dumps(failed.to_dict(), allow_nan=False))
    back = PowerLawFit.from_dict(data)
    assert not back.ok and math.isnan(back.alpha) and back.reason == failed.reason


# --------------------------------------------------------------------------- plots and report


def test_plot_suite_writes_png_and_svg(tmp_path):
    entries = make_suite(0.5)
    paths = plot_suite(entries, tmp_path, extra_metrics=["val_ppl"])
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{m}_vs_{a}.{ext}" for m in ("val_loss", "val_ppl")
                           for a in ("params", "bits") for ext in ("png", "svg"))
    for p in paths:
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        else:
            assert b"<svg" in data[:2000] and b"</svg>" in data
    svg = (tmp_path / "val_loss_vs_params.svg").read_text()
    assert "TriLM" in svg and "FloatLM" in svg and "fit" in svg  # legend with both families and the laws
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_plot_suite_default_metrics_include_zero_shot(tmp_path):
    paths = plot_suite(make_suite(0.5), tmp_path)
    stems = {p.stem for p in paths}
    assert {"piqa_vs_params", "arc_easy_vs_bits", "zero_shot_avg_vs_params", "val_ppl_vs_bits"} <= stems


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


def test_load_suite_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no suite file"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="no 'entries' list"):
        load_suite(tmp_path)


def test_zero_shot_average_needs_every_task_of_the_suite():
    entries = make_suite(0.5)
    partial = entries[0]
    partial.metrics.pop("arc_easy")
    assert partial.value("zero_shot_avg") == pytest.approx(partial.metrics["piqa"])  # alone: its own tasks
    assert partial.value("zero_shot_avg", ["piqa", "arc_easy"]) is None  # in the suite: not comparable
    fits = fit_families(entries, "zero_shot_avg")
    assert fits["FloatLM"].n_points == 3 and fits["TriLM"].n_points == 4


def test_suite_entry_stores_plain_python_numbers():
    entry = SuiteEntry("TriLM", "s1", np.int64(10), np.int32(8), np.float32(100.0), np.float64(3.0),
                       {"piqa": np.float32(0.5)}, tokens=np.int64(1000), mfu=np.float32(0.25))
    data = json.loads(json.dumps(entry.to_dict()))  # numpy scalars would not serialize
    assert data["tokens"] == 1000 and data["params"] == 10 and data["mfu"] == 0.25
    with pytest.raises(ValueError, match="tokens"):
        SuiteEntry("TriLM", "s1", 10, 8, 100.0, 3.0, tokens=-5)


def test_entry_from_size_report_of_a_ternary_model():
    from tritium.eval.size import size_report
    from tritium.models import decoder_layout, tiny_model
    from tritium.quant.grids import TernaryGrid

    model = tiny_model("llama", seed=0)
    names = list(decoder_layout(model).quantizable_linears())
    report = size_report(model, TernaryGrid("absmean", group="tensor"), names)
    entry = SuiteEntry.from_size_report("TriLM", "tiny", report, 5.5, tokens=1000)
    assert entry.params == sum(p.numel() for p in model.parameters())
    assert entry.linear_params == report.linear_params and entry.bits == report.total_bits
    assert entry.bits < 16 * entry.params  # ternary linears are far below 16 bits each
