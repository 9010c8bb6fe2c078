import pytest
import torch

from tritium.quant.hadamard import hadamard_factors, hadamard_matrix, has_hadamard, orthogonal_matrix

# Powers of two, Paley orders of both kinds (12 = 11 + 1, 36 = 2·(17 + 1)), their products
# with powers of two, and SmolLM2's widths (576 = 16·36, 1536 = 128·12).
BUILDABLE = [1, 2, 4, 8, 12, 20, 24, 28, 36, 44, 48, 64, 96, 144, 576, 768, 1536, 2048]


@pytest.mark.parametrize("n", BUILDABLE)
def test_hadamard_is_plus_minus_one_and_orthogonal(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n)
    assert torch.all(h.abs() == 1)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


def test_factors_multiply_back():
    for n in BUILDABLE:
        factors = hadamard_factors(n)
        assert factors is not None and torch.tensor(factors).prod().item() == n


@pytest.mark.parametrize("n", [3, 6, 10, 23, 50, 92])
def test_orders_without_a_construction(n):
    assert not has_hadamard(n)
    with pytest.raises(ValueError, match=f"order {n}"):
        hadamard_matrix(n)
    q, kind = orthogonal_matrix(n, seed=3)
    assert kind == "random"
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("n", [64, 576])
def test_randomized_hadamard_is_orthogonal_and_seeded(n):
    q, kind = orthogonal_matrix(n, seed=1)
    assert kind == "hadamard"
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, orthogonal_matrix(n, seed=1)[0])
    assert not torch.equal(q, orthogonal_matrix(n, seed=2)[0])
    # every entry has the same magnitude: the rotation spreads each coordinate over all others
    assert torch.allclose(q.abs(), torch.full_like(q, n**-0.5))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="rotation kind"):
        orthogonal_matrix(8, kind="givens")


# ---- fast application for online rotations -------------------------------------------------

from tritium.quant.hadamard import (  # noqa: E402
    HadamardOrderError,
    HadamardTransform,
    fwht,
    hadamard_transform,
    nearest_hadamard_orders,
)
from tritium.utils.errors import TritiumError  # noqa: E402

SWEEP_LIMIT = 512  # every order up to here that has a construction (dense checks cost n³)
# the two smallest orders that need two Paley factors: 1360 = 20·68 and 1904 = 28·68
TWO_PALEY_ORDERS = [1360, 1904]


def _sweep():
    return [n for n in range(1, SWEEP_LIMIT + 1) if has_hadamard(n)] + TWO_PALEY_ORDERS


def test_the_sweep_covers_every_kind_of_construction():
    # a power of two alone (1 factor), 2^k times one Paley order, and 2^k times two of them
    assert {len(hadamard_factors(n)) for n in _sweep()} == {1, 2, 3}
    assert all(len(hadamard_factors(n)) == 3 for n in TWO_PALEY_ORDERS)
    assert not any(len(hadamard_factors(n)) == 3 for n in range(1, TWO_PALEY_ORDERS[0]) if has_hadamard(n))


@pytest.mark.parametrize("n", _sweep())
def test_every_construction_is_orthogonal_and_the_fast_transform_equals_it(n):
    transform = HadamardTransform(n)
    # the fast transform of the identity is the matrix itself, rows x = e_i giving e_i·H/√n
    fast = transform(torch.eye(n, dtype=torch.float32))
    assert torch.allclose(fast @ fast.T, torch.eye(n), atol=5e-6 * max(1, n**0.5))
    dense = transform.matrix(torch.float64)
    assert torch.allclose(fast.double(), dense, atol=1e-6)
    assert torch.allclose(dense * n**0.5, hadamard_matrix(n), atol=1e-12)


@pytest.mark.parametrize("n", [16, 48, 192, 576, 1536, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_fast_transform_on_a_batch_equals_the_dense_product(n, dtype):
    transform = HadamardTransform(n)
    x = torch.randn(2, 3, 5, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    want = x @ transform.matrix(torch.float64)
    got = transform(x.to(dtype))
    assert got.dtype == dtype and got.shape == x.shape
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    assert torch.allclose(got.double(), want, atol=tol * want.abs().amax().item()), (got.double() - want).abs().max()
    back = transform.inverse(got.to(torch.float64) if dtype == torch.float64 else want)
    assert torch.allclose(back, x, atol=1e-10)


def test_inverse_undoes_a_transform_with_non_symmetric_factors():
    transform = HadamardTransform(320)  # 16 · 20, 20 = 19 + 1 from a skew conference matrix: not symmetric
    assert transform.factors == (16, 20)
    assert not torch.allclose(transform.matrix(), transform.matrix().T)
    x = torch.randn(4, 320, dtype=torch.float64)
    assert torch.allclose(transform.inverse(transform(x)), x, atol=1e-12)
    assert not torch.allclose(transform(transform(x)), x, atol=1e-3)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024])
def test_fwht_is_sylvesters_matrix(n):
    x = torch.randn(7, n, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ hadamard_matrix(n) / n**0.5, atol=1e-12)
    assert torch.allclose(fwht(x, normalize=False), x @ hadamard_matrix(n), atol=1e-10)
    assert torch.allclose(hadamard_transform(x), fwht(x), atol=1e-12)


def test_fwht_refuses_other_widths():
    with pytest.raises(HadamardOrderError, match="power-of-two width, not 12"):
        fwht(torch.zeros(3, 12))


@pytest.mark.parametrize("n", [3, 6, 10, 50, 92, 100])
def test_widths_without_a_construction_are_refused_for_online_use(n):
    with pytest.raises(HadamardOrderError) as err:
        HadamardTransform(n, "the head size")
    message = str(err.value)
    below, above = nearest_hadamard_orders(n)
    assert isinstance(err.value, TritiumError)
    assert f"the head size is {n}" in message and "random orthogonal" in message and "full" in message
    assert f"nearest: {below} or {above}" in message
    assert has_hadamard(below) and has_hadamard(above) and below < n < above
    assert not any(has_hadamard(m) for m in range(below + 1, above))


def test_transform_refuses_a_wrong_width():
    with pytest.raises(HadamardOrderError, match="width 32"):
        HadamardTransform(48)(torch.zeros(2, 32))


def test_a_transform_first_used_under_inference_mode_still_trains():
    """The Paley factors are cached; the first call made in an evaluation (torch.inference_mode) must not cache an
    inference tensor that a later training step (TesseraQ over an online-rotated SmolLM2, width 1536 = 12 · 128)
    cannot save for backward."""
    from tritium.quant import hadamard

    hadamard._normalized_factor.cache_clear()
    hadamard._hadamard_cached.cache_clear()
    transform = hadamard.HadamardTransform(1536)
    with torch.inference_mode():
        evaluated = transform(torch.ones(2, 1536))
        hadamard.hadamard_matrix(12)
    x = torch.randn(2, 1536, requires_grad=True)
    (transform(x) * torch.arange(1536.0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and torch.isfinite(evaluated).all()
    assert not hadamard._hadamard_cached(12).is_inference()
