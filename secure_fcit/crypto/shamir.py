"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1, threshold t of n.

Coefficients come from ``secrets``. Share x-coordinates are 1..n (x = 0 would be the secret).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from functools import lru_cache

from ..errors import CryptoError

__all__ = ["PRIME", "SHARE_BYTES", "split", "combine", "share_to_bytes", "share_from_bytes"]

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # a share value y < 2^521, big-endian


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise CryptoError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise CryptoError("share value outside the field")
    return y


def split(secret: bytes, n: int, t: int, xs: Iterable[int] | None = None) -> dict[int, int]:
    """``n`` shares {x: y} of ``secret``, any ``t`` of which recover it.

    The x-coordinates are 1..n, or ``xs`` (n distinct values in 1..p-1) when given.
    """
    if len(secret) != SECRET_BYTES:
        raise CryptoError(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= n:
        raise CryptoError(f"threshold t must satisfy 1 <= t <= n, got t={t}, n={n}")
    points = list(range(1, n + 1)) if xs is None else list(xs)
    if len(points) != n or len(set(points)) != n or any(not 0 < x < PRIME for x in points):
        raise CryptoError(f"need {n} distinct non-zero x-coordinates")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def combine(shares: Mapping[int, int], t: int) -> bytes:
    """The secret from at least ``t`` shares (exactly the first ``t`` by x are used)."""
    if len(shares) < t:
        raise CryptoError(f"need {t} shares to reconstruct, got {len(shares)}")
    points = sorted(shares.items())[:t]
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise CryptoError("share x-coordinates must be distinct and non-zero")
    secret = 0
    for (_, yj), lj in zip(points, _lagrange_at_zero(tuple(xs)), strict=True):
        secret = (secret + yj * lj) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise CryptoError("the shares do not reconstruct a 32-byte secret (wrong or tampered shares)")
    return secret.to_bytes(SECRET_BYTES, "big")


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values at 0 for the points ``xs`` (cached: one survivor set, many secrets)."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)
