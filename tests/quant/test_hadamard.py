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
