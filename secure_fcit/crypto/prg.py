"""ChaCha20 as the project's one pseudorandom generator for anything secret.

DP noise, Poisson sampling decisions and (later) secure-aggregation masks are drawn from a
ChaCha20 keystream whose 256-bit key comes from ``os.urandom`` (or, for masks, from a key
agreement). ``numpy.random``/``random``/``torch.Generator`` are never used for these.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

__all__ = ["ChaCha20PRG", "expand_mask"]

_CHUNK = 1 << 20  # keystream bytes per encryptor call


class ChaCha20PRG:
    """A ChaCha20 keystream with helpers for uniform and Gaussian draws.

    ``seed`` must be 32 bytes; the default is fresh from ``os.urandom``. The same seed gives the
    same stream (masks need that); DP noise uses a fresh seed per round and never stores it.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        seed = os.urandom(32) if seed is None else seed
        if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
            raise ValueError("a ChaCha20 seed must be exactly 32 bytes")
        # 16-byte nonce = 4-byte block counter (0) + 12 zero bytes: one key, one stream.
        self._enc = Cipher(ChaCha20(bytes(seed), b"\x00" * 16), mode=None).encryptor()

    def bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("n must be >= 0")
        out = bytearray()
        while len(out) < n:
            out += self._enc.update(b"\x00" * min(_CHUNK, n - len(out)))
        return bytes(out)

    def uint64(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * n), dtype="<u8").copy()

    def uint32(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(4 * n), dtype="<u4").copy()

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 values in the open interval (0, 1), 53 random bits each."""
        return ((self.uint64(n) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)

    def normal(self, n: int) -> np.ndarray:
        """``n`` standard normal float64 values (Box–Muller on keystream uniforms)."""
        m = (n + 1) // 2
        u1, u2 = self.uniform(m), self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        return z[:n]


def expand_mask(seed: bytes, n: int) -> np.ndarray:
    """A pairwise or self mask: ``n`` uint32 values from the ChaCha20 stream of a 256-bit seed."""
    return ChaCha20PRG(seed).uint32(n)
