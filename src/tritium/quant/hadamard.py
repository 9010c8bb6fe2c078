"""Orthogonal matrices for incoherence processing (QuaRot / SpinQuant).

A Hadamard matrix H of order n has entries ±1 and H·Hᵀ = n·I, so H/√n is orthogonal
and spreads every coordinate evenly over all others: outlier channels stop dominating a
quantization group. Orders covered here are the Kronecker products of Sylvester's 2^k
with at most two Paley orders (q + 1 for a prime q ≡ 3 mod 4, 2(q + 1) for a prime
q ≡ 1 mod 4), e.g. 576 = 16·36 and 1536 = 128·12. Widths with no such construction get
a seeded random orthogonal matrix from :func:`orthogonal_matrix` instead.

Online rotations (QuaRot's R3/R4) multiply activations by H/√n at run time, so they need a
fast product, never the n×n matrix: :func:`fwht` is the O(n log n) Walsh–Hadamard transform
for powers of two, and :class:`HadamardTransform` applies H_2^k ⊗ H_m1 [⊗ H_m2] as an FWHT
over one axis of the reshaped input and small m×m matmuls over the others. A width with no
construction has no online rotation (:class:`HadamardOrderError`): a random orthogonal matrix
would cost a full matmul per token.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ..utils.errors import TritiumError

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


@lru_cache(maxsize=4096)
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
    with torch.inference_mode(False):  # cached: see _normalized_factor
        return _build_hadamard(n)


def _build_hadamard(n: int) -> Tensor:
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


class HadamardOrderError(TritiumError, ValueError):
    """A width with no Hadamard construction, where only a Hadamard matrix will do (online rotations)."""


def nearest_hadamard_orders(n: int) -> tuple[int | None, int | None]:
    """The nearest orders below and above ``n`` that have a construction (``None`` below 1)."""
    below = next((m for m in range(n - 1, 0, -1) if has_hadamard(m)), None)
    above = next(m for m in range(max(n + 1, 1), 2 * n + 2) if has_hadamard(m))  # 2^k ≤ 2n+1 always qualifies
    return below, above


def _check_online_order(n: int, what: str) -> tuple[int, ...]:
    factors = hadamard_factors(n) if isinstance(n, int) and not isinstance(n, bool) else None
    if factors is None:
        below, above = nearest_hadamard_orders(n) if isinstance(n, int) and n > 0 else (None, 1)
        nearest = f"{below} or {above}" if below else f"{above}"
        raise HadamardOrderError(
            f"{what} is {n!r}, which has no Hadamard construction here (orders 2^k, or 2^k times one or two Paley "
            f"orders q + 1 or 2(q + 1) for a prime q, e.g. 12, 20, 28, 36; nearest: {nearest}). An online rotation "
            "must be a Hadamard matrix: a random orthogonal one would cost a full width × width matmul per token. "
            "Leave this online rotation off for this model")
    return factors


def fwht(x: Tensor, normalize: bool = True) -> Tensor:
    """The Walsh–Hadamard transform of ``x`` over its last axis, x·H (Sylvester order), in O(n log n).

    The last axis must be a power of two; leading axes are a batch. ``normalize`` divides by √n,
    making the transform orthogonal. Half-precision inputs are transformed in float32 and
    returned in their own dtype.
    """
    n = x.shape[-1]
    if not _is_power_of_two(n):
        raise HadamardOrderError(f"the fast Walsh–Hadamard transform needs a power-of-two width, not {n}; "
                                 "use HadamardTransform for other widths")
    return _fwht_axis(x.reshape(-1, n, 1), normalize).reshape(x.shape)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _fwht_axis(x: Tensor, normalize: bool) -> Tensor:
    """x·H over axis 1 of a ``[batch, n, trailing]`` tensor; the trailing axis rides along."""
    out_dtype = x.dtype
    x = x.to(_work_dtype(x.dtype))
    batch, n, trailing = x.shape
    h = 1
    while h < n:
        # Sylvester H_2h = H_2 ⊗ H_h: entries h apart within each block of 2h are a butterfly pair
        pairs = x.reshape(batch, n // (2 * h), 2, h, trailing)
        x = torch.stack((pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]), dim=2)
        h *= 2
    x = x.reshape(batch, n, trailing)
    if normalize and n > 1:
        x = x * n**-0.5
    return x.to(out_dtype)


@lru_cache(maxsize=64)
def _normalized_factor(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Cached across calls, so never an inference tensor: one made on a first call under torch.inference_mode
    # (an evaluation) would break every later call that trains through it (TesseraQ, QAT).
    with torch.inference_mode(False):
        return (_paley(m) / m**0.5).to(dtype=dtype, device=device)


class HadamardTransform:
    """x ↦ x·H/√n over the last axis, with H = :func:`hadamard_matrix` (n), without building H.

    ``H = H_2^k ⊗ H_m1 [⊗ H_m2]``: the input's last axis is viewed as ``[2^k, m1(, m2)]`` and each
    factor multiplies its own axis (an FWHT for 2^k, an m×m matmul for a Paley order). Orthogonal,
    so the inverse is :meth:`inverse` (x·Hᵀ/√n).
    """

    def __init__(self, n: int, what: str = "the width"):
        self.n = n
        self.factors = _check_online_order(n, what)

    def __repr__(self) -> str:
        return f"HadamardTransform({self.n} = {' · '.join(map(str, self.factors))})"

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense orthogonal matrix H/√n (for folding into weights and for tests)."""
        return (hadamard_matrix(self.n) / self.n**0.5).to(dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return self._apply(x, transpose=False)

    def inverse(self, x: Tensor) -> Tensor:
        return self._apply(x, transpose=True)

    def _apply(self, x: Tensor, transpose: bool) -> Tensor:
        if x.shape[-1] != self.n:
            raise HadamardOrderError(f"{self!r} got an input of width {x.shape[-1]}")
        out_dtype, work = x.dtype, _work_dtype(x.dtype)
        power, paley = self.factors[0], self.factors[1:]
        # Sylvester matrices are symmetric, so only the Paley factors differ under transposition.
        y = _fwht_axis(x.reshape(-1, power, self.n // power).to(work), normalize=True)
        if paley:
            y = y.reshape(-1, power, *paley)
            for axis, m in enumerate(paley, start=2):
                factor = _normalized_factor(m, work, y.device)
                factor = factor.T if transpose else factor
                y = torch.movedim(torch.movedim(y, axis, -1) @ factor, -1, axis)
        return y.reshape(x.shape).to(out_dtype)


def hadamard_transform(x: Tensor) -> Tensor:
    """x·H/√n over the last axis (H = :func:`hadamard_matrix` of the last axis' width)."""
    return HadamardTransform(x.shape[-1])(x)
