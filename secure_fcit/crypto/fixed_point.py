"""Fixed-point encoding of clipped float vectors into Z_{2^32} (uint32 on the wire).

A value x with |x| <= ``bound`` becomes round(x * 2^frac_bits) mod 2^32 (two's complement). Sums
of encodings mod 2^32 decode to the sum of the values as long as the true sum's magnitude stays
below 2^31 / 2^frac_bits. `FixedPoint.check_cohort` proves that for ``n`` contributors *before*
a round starts, so a configuration that could wrap is refused instead of producing a wrong sum.
Rounding costs at most 2^-(frac_bits+1) per value and contributor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["FixedPoint", "MODULUS"]

MODULUS = 1 << 32


@dataclass(frozen=True)
class FixedPoint:
    #: The largest |value| a contributor may send; larger values are clipped to it.
    bound: float
    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not self.bound > 0 or not np.isfinite(self.bound):
            raise ConfigError(f"fixed-point bound must be finite and > 0, got {self.bound}")
        if not 0 <= self.frac_bits <= 30:
            raise ConfigError(f"fixed-point frac_bits must be in 0..30, got {self.frac_bits}")
        self.check_cohort(1)

    @property
    def scale(self) -> float:
        return float(1 << self.frac_bits)

    def max_contributors(self) -> int:
        """The largest cohort whose sum provably cannot wrap around 2^32."""
        per = int(np.ceil(self.bound * self.scale)) + 1  # |round(x * scale)| <= bound*scale + 0.5
        return ((1 << 31) - 1) // per

    def check_cohort(self, n: int) -> None:
        if n < 1 or n > self.max_contributors():
            raise ConfigError(
                f"fixed point cannot sum {n} contributors without wrapping: bound {self.bound:g} at "
                f"{self.frac_bits} fractional bits allows at most {self.max_contributors()} "
                "(lower frac_bits or the bound)")

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Clip to [-bound, bound] and encode; returns uint32."""
        x = np.asarray(values, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot encode non-finite values")
        q = np.rint(np.clip(x, -self.bound, self.bound) * self.scale).astype(np.int64)
        return (q % MODULUS).astype(np.uint32)

    def decode_sum(self, total: np.ndarray, n: int) -> np.ndarray:
        """Decode a mod-2^32 sum of ``n`` encodings to float64."""
        self.check_cohort(n)
        t = np.asarray(total, dtype=np.uint32).astype(np.int64)
        signed = np.where(t >= (1 << 31), t - MODULUS, t)
        return signed.astype(np.float64) / self.scale

    def error_bound(self, n: int) -> float:
        """Largest absolute error of a decoded sum of ``n`` values that were inside the bound."""
        return n * 0.5 / self.scale
