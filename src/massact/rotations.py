"""The one rotation builder: what quant's simulated `rotate` applies and what `massact rewrite --rotate` folds.

`rotation(size, seed)` is a randomized Hadamard matrix (random signs times a Hadamard matrix, scaled by
1 / sqrt(n)) where a Hadamard order is built here, else a seeded random orthogonal matrix. A Hadamard matrix
H (entries +-1, H H^T = n I) scaled by 1 / sqrt(n) maps a one-hot vector to one whose every entry is
1 / sqrt(n) of it: the flattest spread there is (a random orthogonal matrix leaves a largest entry of about
sqrt(2 ln n / n)). Orders are built from Sylvester's doubling, Paley's construction (q + 1 for a prime
q = 3 mod 4: 12, 20, 24, 44, 48, 60, ...) and Kronecker products (576 = 12 x 12 x 4, 768, 2,304, ...);
no order is 2 mod 4 beyond 2.
"""

from __future__ import annotations

import math
from functools import cache

import torch

HADAMARD = "randomized Hadamard"
RANDOM = "seeded random orthogonal"


def _prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _paley(n: int) -> torch.Tensor:
    """Paley's construction I, order n = q + 1 for a prime q = 3 mod 4."""
    q = n - 1
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if r in residues else -1 for r in range(1, q)], dtype=torch.float64)
    index = torch.arange(q)
    jacobsthal = chi[(index[None, :] - index[:, None]) % q]
    skew = torch.zeros(n, n, dtype=torch.float64)
    skew[0, 1:] = 1.0
    skew[1:, 0] = -1.0
    skew[1:, 1:] = jacobsthal
    return torch.eye(n, dtype=torch.float64) + skew


@cache
def hadamard(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order n (float64, entries +-1), or None when none is built here."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if n % 4 == 0 and _prime(n - 1) and (n - 1) % 4 == 3:
        return _paley(n)
    if n % 2 == 0 and (half := hadamard(n // 2)) is not None:
        return torch.cat([torch.cat([half, half], 1), torch.cat([half, -half], 1)], 0)
    for a in range(2, math.isqrt(n) + 1):
        if n % a == 0 and (left := hadamard(a)) is not None and (right := hadamard(n // a)) is not None:
            return torch.kron(left, right)
    return None


def rotation(size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(orthogonal float64 [size, size] matrix, its kind): randomized Hadamard where one is built, else a seeded
    random orthogonal matrix. The same (size, seed) gives the same matrix every time."""
    generator = torch.Generator().manual_seed(seed + size)
    matrix = hadamard(size)
    if matrix is None:
        gaussian = torch.randn(size, size, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        return q * torch.sign(torch.diagonal(r))[None, :], RANDOM
    signs = torch.randint(0, 2, (size,), generator=generator).double() * 2 - 1
    return signs[:, None] * matrix / math.sqrt(size), HADAMARD
