"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1, threshold t of n.

Coefficients come from ``secrets``. Share x-coordinates are 1..n (x = 0 would be the secret).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from ..errors import CryptoError

__all__ = ["PRIME", "split", "combine"]

PRIME = (1 << 521) - 1
SECRET_BYTES = 32


def split(secret: bytes, n: int, t: int) -> dict[int, int]:
    """``n`` shares {x: y} of ``secret``, any ``t`` of which recover it."""
    if len(secret) != SECRET_BYTES:
        raise CryptoError(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= n:
        raise CryptoError(f"threshold t must satisfy 1 <= t <= n, got t={t}, n={n}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = {}
    for x in range(1, n + 1):
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
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise CryptoError("the shares do not reconstruct a 32-byte secret (wrong or tampered shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
