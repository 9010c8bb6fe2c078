import pytest
from synthetic_suite import SIZES, law, make_suite

from tritium.spectra.compare import compare_at_equal, spectra_pattern


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
