"""The layouts of the vectors workers feed into secure sums, shared by workers and the organizer.

Token phase (length ``(n_known + n_buckets) * (d + 2)``, ``n_known`` the global tokens the stage
started with): worker k writes ``[n_k * mu_k (d values), n_k, 1]`` into one block, zeros in every
other. The block is ``j < n_known`` when its token has cosine >= tau with known token j (the best
such j): the DISCO match of a client to an existing slot, made on the client against the tokens
the coordinator broadcast. Under DP, mu_k and n_k are the token mechanism's noisy direction and
count (`dp.client.noisy_token`), and the block is computed from them. Otherwise it is ``n_known + b``, b its SimHash bucket: only tokens of
tasks the federation does not know yet are hashed, so a new task cannot collide with a returning
one. The sum gives, per block, the sample-weighted token sum, the sample count and the client count.

Update round (length ``n_active * (p + 2)``), with j the position of the worker's slot in the
round's active slots: ``[w_k * delta_k in block j of n_active blocks of p | w_k at j of n_active |
1 at j of n_active]``, w_k the sample count n_k (1 under local DP, which does not release n_k).
The sum gives, per active slot, sum(w_k * delta_k), sum(w_k) and the number of clients.

Distributed-DP update round (``dp.mode = "distributed"``, length ``n_active * (P + 1)``, P the
encoding's padded length): ``[z in block j of n_active blocks of P, a noise share in every block |
1 at j of n_active]``, where z is the integer encoding of the worker's per-sample clipped gradient
sum and noisy count (`dp.distributed`), sent divided by 2^scale_bits. The sum gives, per active
slot, the cohort's noisy encoded sum and the number of clients; the rotation of block j is drawn
from the public `rotation_seed` of the round.

SimHash hyperplanes come from a public 32-byte seed (they are not secret, so numpy's generator is
fine here); both sides run this code, so they draw the same planes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from secure_fcit.errors import LocalProtocolError

__all__ = [
    "hash_bits",
    "public_hash_seed",
    "simhash_planes",
    "singleton_blocks",
    "simhash_bucket",
    "token_block",
    "token_vector_length",
    "token_vector",
    "split_token_sum",
    "update_vector_length",
    "distributed_vector_length",
    "split_distributed_sum",
    "rotation_seed",
    "update_vector",
    "split_update_sum",
    "cosine",
    "choose_slot",
]

_EPS = 1e-12


def hash_bits(n_buckets: int) -> int:
    """log2 of a power-of-two bucket count."""
    if n_buckets < 2 or n_buckets & (n_buckets - 1):
        raise LocalProtocolError(f"n_buckets must be a power of two >= 2, got {n_buckets}")
    return n_buckets.bit_length() - 1


def public_hash_seed(federation_id: str, stage: int, attempt: int) -> bytes:
    """The SimHash seed of a token phase: public and fixed by (federation, stage, attempt), so the
    coordinator cannot pick planes that isolate a client in a bucket; workers recompute it."""
    return hashlib.sha256(f"secure-fcit/simhash/v1|{federation_id}|{stage}|{attempt}".encode()).digest()


def singleton_blocks(client_counts: np.ndarray) -> int:
    """How many blocks of a summed vector hold exactly one client: each such block is that client's
    own contribution in the clear (the layouts' last column counts clients per block)."""
    counts = np.rint(np.asarray(client_counts, dtype=np.float64))
    return int(np.count_nonzero(counts == 1))


def simhash_planes(seed: bytes, n_buckets: int, dim: int) -> np.ndarray:
    """The (log2 n_buckets, dim) Gaussian hyperplanes drawn from the public ``seed``."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise LocalProtocolError("the SimHash seed must be 32 bytes")
    rng = np.random.default_rng(int.from_bytes(seed, "little"))  # public SimHash planes from a public seed
    return rng.standard_normal((hash_bits(n_buckets), dim))


def simhash_bucket(token: np.ndarray, planes: np.ndarray) -> int:
    """Bucket of ``token``: bit i is set when the token lies on the positive side of plane i."""
    bits = (planes @ token) >= 0
    return int(np.dot(bits, 1 << np.arange(bits.size)))


def token_block(token: np.ndarray, known: np.ndarray, tau: float, planes: np.ndarray) -> int:
    """The block of the token sum a worker's ``token`` goes to (see module docstring).

    ``known`` are the broadcast global tokens (n_known, d); ``planes`` the stage's SimHash planes.
    """
    token = np.asarray(token)
    known = np.asarray(known)
    if known.ndim != 2 or (len(known) and known.shape[1] != token.size):
        raise LocalProtocolError(f"known tokens of shape {known.shape} do not fit a token of {token.size} values")
    if len(known):
        scores = cosine(token, known)[0]
        best = int(np.argmax(scores))
        if scores[best] >= tau:
            return best
    return len(known) + simhash_bucket(token, planes)


def token_vector_length(n_blocks: int, dim: int) -> int:
    """Length of a token-phase vector of ``n_blocks`` blocks (known tokens + SimHash buckets)."""
    return n_blocks * (dim + 2)


def token_vector(token: np.ndarray, n_samples: float, block: int, n_blocks: int) -> np.ndarray:
    """Worker k's token-phase contribution: ``token`` in ``block`` of ``n_blocks`` (module docstring).
    ``n_samples`` is n_k, or under DP the token mechanism's noisy count (>= 1)."""
    dim = token.size
    out = np.zeros(token_vector_length(n_blocks, dim), dtype=np.float64)
    start = block * (dim + 2)
    out[start : start + dim] = n_samples * token
    out[start + dim] = n_samples
    out[start + dim + 1] = 1.0
    return out


def split_token_sum(
    vector: np.ndarray, n_blocks: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-block sum of n_k * mu_k (B, d), sample counts (B,), client counts (B,))."""
    blocks = vector.reshape(n_blocks, dim + 2)
    return blocks[:, :dim], blocks[:, dim], blocks[:, dim + 1]


def update_vector_length(n_active: int, slot_size: int) -> int:
    return n_active * (slot_size + 2)


def update_vector(delta: np.ndarray, n_samples: int, position: int, n_active: int) -> np.ndarray:
    """Worker k's update contribution for the active slot at ``position`` (see module docstring)."""
    p = delta.size
    out = np.zeros(update_vector_length(n_active, p), dtype=np.float64)
    out[position * p : (position + 1) * p] = n_samples * delta.astype(np.float64)
    out[n_active * p + position] = n_samples
    out[n_active * p + n_active + position] = 1.0
    return out


def split_update_sum(
    vector: np.ndarray, n_active: int, slot_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-slot sum of n_k * delta_k (A, p), sample counts (A,), client counts (A,))."""
    body = n_active * slot_size
    sums = vector[:body].reshape(n_active, slot_size)
    return sums, vector[body : body + n_active], vector[body + n_active : body + 2 * n_active]


def distributed_vector_length(n_active: int, padded: int) -> int:
    return n_active * (padded + 1)


def split_distributed_sum(vector: np.ndarray, n_active: int, padded: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-slot encoded sums (A, P), client counts (A,)) of a distributed-DP update sum."""
    body = n_active * padded
    return vector[:body].reshape(n_active, padded), vector[body : body + n_active]


def rotation_seed(federation_id: str, stage: int, round: int, attempt: int, position: int) -> bytes:
    """The public seed of block ``position``'s random rotation in a distributed-DP update sum: fixed
    by the round, so workers and the coordinator draw the same signs and nobody picks them."""
    return hashlib.sha256(
        f"secure-fcit/rotation/v1|{federation_id}|{stage}|{round}|{attempt}|{position}".encode()).digest()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between the rows of ``a`` (m, d) and of ``b`` (n, d): shape (m, n)."""
    a = np.atleast_2d(a).astype(np.float64)
    b = np.atleast_2d(b).astype(np.float64)
    na = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
    nb = np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
    return (a / na) @ (b / nb).T


def choose_slot(token: np.ndarray, tokens: np.ndarray, active: Sequence[int]) -> int:
    """The active slot whose global token is closest in cosine to ``token`` (ties: lowest slot)."""
    if not len(active):
        raise LocalProtocolError("no active slot to choose from")
    scores = cosine(token, tokens[list(active)])[0]
    return int(active[int(np.argmax(scores))])
