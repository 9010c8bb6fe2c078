import json
import math

import numpy as np
import pytest
from synthetic_suite import law, make_suite

from tritium.spectra.fit import PowerLawFit, fit_families, fit_power_law


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


def test_power_law_fit_dict_round_trip_keeps_failures_json_safe():
    failed = fit_power_law([1.0, 2.0], [2.0, 1.0])
    data = json.loads(json.dumps(failed.to_dict(), allow_nan=False))
    back = PowerLawFit.from_dict(data)
    assert not back.ok and math.isnan(back.alpha) and back.reason == failed.reason
