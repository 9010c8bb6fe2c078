"""Orthogonal matrices for incoherence processing (QuaRot / SpinQuant).

A Hadamard matrix H of order n has entries ±1 and H·Hᵀ = n·I, so H/√n is orthogonal
and spreads every coordinate evenly over all others: outlier channels stop dominating a
quantization group. Orders covered here are the Kronecker products of Sylvester's 2^k
with at most two Paley orders (q + 1 for a prime q ≡ 3 mod 4, 2(q + 1) for a prime
q ≡ 1 mod 4), e.g. 576 = 16·36 and 1536 = 128·12. Widths with no such construction get
a seeded random orthogonal matrix from :func:`orthogonal_matrix` instead.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

# Paley orders are searched for primes below this bound (orders up to about 2·bound).
_PALEY_PRIME_LIMIT = 2048


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    f = 2
    while f * f <= q:
        if q % f == 0:
            return False
        f += 1
    return True


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _jacobsthal(q: int) -> Tensor:
    """Q[i, j] = χ(j − i) with χ the quadratic character of GF(q), q prime."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley_one(q: int) -> Tensor:
    """Order q + 1 for a prime q ≡ 3 (mod 4): H = I + S, S the skew conference matrix."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + s


def _paley_two(q: int) -> Tensor:
    """Order 2(q + 1) for a prime q ≡ 1 (mod 4), from the symmetric conference matrix C."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, plus) + torch.kron(torch.eye(q + 1, dtype=torch.float64), minus)


@lru_cache(maxsize=None)
def _paley_orders() -> dict[int, tuple[str, int]]:
    """Order → (construction, prime) for every Paley order that is not a power of two."""
    orders: dict[int, tuple[str, int]] = {}
    for q in range(3, _PALEY_PRIME_LIMIT):
        if not _is_prime(q):
            continue
        order, kind = (q + 1, "one") if q % 4 == 3 else (2 * (q + 1), "two")
        if not _is_power_of_two(order):
            orders.setdefault(order, (kind, q))
    return orders


def _paley(order: int) -> Tensor:
    kind, q = _paley_orders()[order]
    return _paley_one(q) if kind == "one" else _paley_two(q)


def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h, base)
    return h


def hadamard_factors(n: int) -> tuple[int, ...] | None:
    """A factorisation ``(2^k, m1[, m2])`` of ``n`` into buildable orders, or ``None``."""
    if n < 1:
        return None
    if _is_power_of_two(n):
        return (n,)
    orders = sorted(_paley_orders())
    for m in orders:
        if n % m == 0 and _is_power_of_two(n // m):
            return (n // m, m)
    for i, m1 in enumerate(orders):
        if m1 * m1 > n:
            break
        for m2 in orders[i:]:
            if n % (m1 * m2) == 0 and _is_power_of_two(n // (m1 * m2)):
                return (n // (m1 * m2), m1, m2)
    return None


def has_hadamard(n: int) -> bool:
    return hadamard_factors(n) is not None


@lru_cache(maxsize=16)
def _hadamard_cached(n: int) -> Tensor:
    factors = hadamard_factors(n)
    if factors is None:
        raise ValueError(f"no Hadamard construction is known here for order {n}")
    h = _sylvester(factors[0])
    for m in factors[1:]:
        h = torch.kron(h, _paley(m))
    # Every construction is exact in integers; a failure here is a bug, never a rounding issue.
    if not torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)):
        raise AssertionError(f"the Hadamard construction of order {n} ({factors}) is not orthogonal")
    return h


def hadamard_matrix(n: int) -> Tensor:
    """An n×n matrix of ±1 with H·Hᵀ = n·I (float64). Raises ``ValueError`` where none is built."""
    return _hadamard_cached(n).clone()


def random_signs(n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64).to(torch.float64) * 2 - 1


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed so the law is uniform)."""
    gauss = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def orthogonal_matrix(n: int, seed: int = 0, kind: str = "hadamard") -> tuple[Tensor, str]:
    """A seeded n×n orthogonal matrix in float64 and the construction used.

    ``kind="hadamard"`` gives the randomized Hadamard H·diag(s)/√n (s random signs) where
    an order-n construction exists, else a random orthogonal matrix (returned kind
    ``"random"``, so the caller can say so); ``kind="random"`` always gives the latter.
    """
    if kind not in ("hadamard", "random"):
        raise ValueError(f"rotation kind {kind!r} is unknown: use 'hadamard' or 'random'")
    generator = torch.Generator().manual_seed(seed)
    if kind == "hadamard" and has_hadamard(n):
        return hadamard_matrix(n) * random_signs(n, generator).unsqueeze(0) / n**0.5, "hadamard"
    return random_orthogonal(n, generator), "random"
