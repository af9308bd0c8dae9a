"""Distributed DP over the masked secure sum: the integer encoding each client sends.

A client of a distributed-DP round (``dp.mode = "distributed"``) does not add the whole DP noise
itself. It encodes the sum of its per-sample clipped gradients as integers and adds a Skellam share
of variance ``mu / (t - c)`` (`share_variance`); the pairwise masks hide every individual vector,
and the unmasked sum of at least ``t`` survivors carries at least ``t * mu / (t - c) >= mu`` of
noise even when ``c`` of them collude and subtract their own shares. The coordinator decodes the
noisy sum (`decode_sum`) and takes a step; that is post-processing.

The encoding of one round, for a slot vector of ``dim`` trained coordinates (everything public):

1. each sample's gradient ``g`` is clipped to ``||g|| <= clip`` and extended by a count coordinate
   ``a = count_scale`` and zero padding to ``padded`` (a power of two >= dim + 1), so the vector's
   norm is at most ``sample_norm = sqrt(clip^2 + a^2)``; the noisy count comes with the same noise;
2. the extended vector is rotated by ``H D`` (``H`` the orthonormal Walsh-Hadamard matrix, ``D`` a
   diagonal of public random signs drawn from the round's `layout.rotation_seed`): the rotation
   keeps the L2 norm and spreads a vector's mass over all coordinates, so no coordinate comes near
   the modulus (`wrap_check`) -- the flattening step of Kairouz, Liu, Steinke, "The Distributed
   Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation" (ICML 2021);
3. the client's sum of rotated vectors is scaled by ``gamma = 2^scale_bits`` and rounded once,
   stochastically and unbiasedly (``floor(x + u)``, ``u`` uniform); the (l2, l1) sensitivity of that
   rounded sum is `skellam.sensitivity` (``gamma * sample_norm + sqrt(padded)``, ...).

The client sends ``(z + share) / gamma``; with ``scale_bits`` at most the masking fixed point's
fractional bits that is exact, so the secure sum is an integer sum in disguise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..crypto.prg import ChaCha20PRG
from ..errors import ConfigError, PrivacyError
from . import skellam
from .skellam import SkellamSampler

__all__ = [
    "DistributedEncoding",
    "padded_length",
    "rotation_signs",
    "fwht",
    "rotate",
    "unrotate",
    "encode_samples",
    "decode_sum",
    "share_variance",
    "noise_share",
    "client_budget",
    "wrap_check",
    "check_encoding",
]

#: A clipped sample may exceed ``clip`` by this relative float error and still be accepted.
_CLIP_SLACK = 1e-5


def padded_length(dim: int) -> int:
    """The smallest power of two >= dim + 1 (the gradient plus the count coordinate)."""
    return 1 << int(dim).bit_length()


@dataclass(frozen=True)
class DistributedEncoding:
    """The public parameters of a round's integer encoding (see module docstring)."""

    dim: int
    clip: float
    count_scale: float
    scale_bits: int

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int | np.integer) or self.dim < 1:
            raise ConfigError(f"distributed DP: dim must be a positive integer, got {self.dim!r}")
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"distributed DP: dp.max_grad_norm must be positive and finite, got {self.clip!r}")
        if not (isinstance(self.count_scale, int | float) and math.isfinite(self.count_scale)
                and self.count_scale > 0):
            raise ConfigError(f"distributed DP: dp.count_scale must be positive and finite, got {self.count_scale!r}")
        if isinstance(self.scale_bits, bool) or not isinstance(self.scale_bits, int) or not 0 <= self.scale_bits <= 30:
            raise ConfigError(f"distributed DP: scale_bits must be an integer in 0..30, got {self.scale_bits!r}")

    @property
    def padded(self) -> int:
        return padded_length(self.dim)

    @property
    def gamma(self) -> float:
        return float(1 << self.scale_bits)

    @property
    def sample_norm(self) -> float:
        """The L2 bound of one extended sample (clipped gradient and count coordinate)."""
        return math.hypot(self.clip, self.count_scale)

    def sensitivity(self) -> tuple[float, float]:
        """(l2, l1) in integer units of adding or removing one sample (`skellam.sensitivity`)."""
        return skellam.sensitivity(self.gamma, self.sample_norm, self.padded)


def rotation_signs(seed: bytes, padded: int) -> torch.Tensor:
    """The public diagonal D: ``padded`` signs +-1 (float64) from a ChaCha20 stream keyed by ``seed``."""
    if padded < 1 or padded & (padded - 1):
        raise ConfigError(f"distributed DP: the rotation length must be a power of two, got {padded}")
    bits = np.unpackbits(np.frombuffer(ChaCha20PRG(seed).bytes((padded + 7) // 8), dtype=np.uint8))[:padded]
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float64))


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform along the last axis (length a power of two); it is
    its own inverse. Batched: any leading shape."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ConfigError(f"distributed DP: the Hadamard transform needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x.reshape(-1, n).clone()
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return y.reshape(*lead, n) / math.sqrt(n)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x``: norm-preserving, with every coordinate a +-1/sqrt(P) combination of all of x."""
    return fwht(x * signs.to(x.dtype))


def unrotate(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``D H y``, the inverse of `rotate` (H and D are symmetric involutions)."""
    return fwht(y) * signs.to(y.dtype)


def encode_samples(enc: DistributedEncoding, grads: torch.Tensor | np.ndarray, signs: torch.Tensor,
                   prg: ChaCha20PRG) -> np.ndarray:
    """The client's integer encoding (int64, length ``padded``) of its clipped per-sample gradients
    ``grads`` (B, dim): each row extended by the count coordinate, rotated, summed, scaled by gamma
    and rounded once with uniforms from ``prg``. A row over the clip is refused (`PrivacyError`):
    the sensitivity would not hold. B = 0 (no sample drawn) encodes the zero vector, rounded."""
    g = torch.as_tensor(grads, dtype=torch.float64)
    if g.ndim != 2 or g.shape[1] != enc.dim:
        raise PrivacyError(f"distributed DP: per-sample gradients of shape {tuple(g.shape)}, expected (B, {enc.dim})")
    if not torch.isfinite(g).all():
        raise PrivacyError("distributed DP: a per-sample gradient is not finite")
    norms = g.norm(dim=1) if g.shape[0] else torch.zeros(0, dtype=torch.float64)
    if g.shape[0] and float(norms.max()) > enc.clip * (1 + _CLIP_SLACK):
        raise PrivacyError(f"distributed DP: a per-sample gradient has norm {float(norms.max()):.6g} over the "
                           f"clip {enc.clip}: the sensitivity would not hold")
    total = torch.zeros(enc.padded, dtype=torch.float64)
    total[: enc.dim] = g.sum(dim=0)
    total[enc.dim] = enc.count_scale * g.shape[0]
    scaled = rotate(total, signs).numpy() * enc.gamma  # linear: the sum of rotations is the rotated sum
    return np.floor(scaled + prg.uniform(enc.padded)).astype(np.int64)


def decode_sum(block: np.ndarray, signs: torch.Tensor, dim: int, count_scale: float) -> tuple[np.ndarray, float]:
    """(noisy gradient sum (dim,), noisy sample count) of a cohort's unmasked block, given in the
    units the clients sent (integers / gamma)."""
    y = unrotate(torch.from_numpy(np.array(block, dtype=np.float64)), signs).numpy()
    return y[:dim], float(y[dim]) / count_scale


def share_variance(total: float, cohort_size: int, t: int, colluders: int) -> float:
    """Each client's share of the noise variance ``total``: ``total / (t - c)``. Any ``t`` survivors
    (fewer are never unmasked) carry ``t * total / (t - c)``; ``c`` colluders who subtract their
    own shares leave at least ``total``. ``t - c < 1`` cannot carry the noise: `PrivacyError`."""
    if not (math.isfinite(total) and total > 0):
        raise PrivacyError(f"distributed DP: the noise variance must be positive, got {total!r}")
    if not 1 <= t <= cohort_size:
        raise PrivacyError(f"distributed DP: threshold t={t} outside 1..{cohort_size} for a cohort of {cohort_size}")
    if t - colluders < 1:
        raise PrivacyError(f"distributed DP: t={t} survivors with c={colluders} colluders leave "
                           f"{t - colluders} honest shares; at least 1 is needed to carry the noise")
    return float(total) / (t - colluders)


def noise_share(variance: float, padded: int, sampler: SkellamSampler) -> np.ndarray:
    """One client's Skellam share: ``padded`` int64 draws of the given variance."""
    return sampler.sample(variance, int(padded))


def client_budget(bound: float, bits: int) -> int:
    """The largest absolute integer a client may send per coordinate: the masking fixed point's
    per-contributor ``bound`` in units of 2^-bits."""
    return int(math.floor(float(bound) * (1 << int(bits))))


def wrap_check(enc: DistributedEncoding, max_samples: int, share_var: float, budget: int,
               log2_failure: int = 40) -> float:
    """Refuse (`ConfigError`, with the numbers) an encoding whose coordinates could leave the
    per-client ``budget`` (integer units) and wrap the secure sum; return the bound that held.

    For a fixed vector s and uniform signs D, each coordinate of H D s is a Rademacher sum with
    coefficients of size |s_k| / sqrt(P): by Hoeffding it exceeds ``||s|| sqrt(2 ln(2P/b) / P)``
    with probability at most b / P, so all P coordinates stay below it but with probability b. The
    client's rotated sum has ``||s|| <= max_samples * sample_norm``; rounding adds at most 1 and the
    share at most `skellam.noise_tail`. b = 2^-log2_failure for each of the two tails.

    Also refused: gamma * clip < 4 sqrt(P), where the rounding term of the sensitivity would
    dominate the signal (the noise would have to grow to cover rounding, not gradients)."""
    p = enc.padded
    if enc.gamma * enc.clip < 4 * math.sqrt(p):
        raise ConfigError(f"scale 2^{enc.scale_bits} * clip {enc.clip} = {enc.gamma * enc.clip:g} is below "
                          f"4 sqrt(P) = {4 * math.sqrt(p):g} for P = {p}: rounding would dominate the "
                          "sensitivity; raise dp.scale_bits (or the fixed point's fractional bits) or dp.max_grad_norm")
    beta = 2.0 ** -log2_failure
    spread = math.sqrt(2 * math.log(2 * p / beta) / p)
    signal = enc.gamma * max(int(max_samples), 0) * enc.sample_norm * spread
    noise = skellam.noise_tail(share_var, p, log2_failure)
    need = signal + 1 + noise
    if need > budget:
        raise ConfigError(f"a coordinate could reach {need:.4g} (rotated signal {signal:.4g} of up to {max_samples} "
                          f"samples + rounding 1 + noise tail {noise:.4g}) over the per-client budget {budget} "
                          f"(privacy.bound in units of 2^-{enc.scale_bits}): the sum could wrap; raise privacy.bound, "
                          "lower dp.max_grad_norm or dp.scale_bits")
    return need


def check_encoding(config, dim: int, max_samples: int) -> float:
    """Load-time refusal (`ConfigError`, with the numbers) of a distributed-DP config whose
    encoding could wrap the secure sum or whose cohorts cannot carry the noise: the public variance
    of ``config`` for a slot vector of ``dim`` trained coordinates, the smallest honest share count
    of any cohort size a round can have, and a client holding ``max_samples`` in a stage. Returns
    the largest per-coordinate bound it checked (integer units)."""
    from ..protocols.secagg import threshold
    from .client import planned_rounds
    from .ledger import _public_variance

    dp, pv, sc = config.dp, config.privacy, config.scenario
    masking = pv.masking()
    worst = 0.0
    for n in range(max(pv.min_cohort, 1), sc.clients_per_round + 1):
        fp = masking.check_cohort(n)
        bits = dp.scale_bits or fp.frac_bits
        enc = DistributedEncoding(dim=int(dim), clip=dp.max_grad_norm, count_scale=dp.count_scale, scale_bits=bits)
        l2, l1 = enc.sensitivity()
        rounds = planned_rounds(config, 1)
        mu = (dp.noise_multiplier * l2) ** 2 if dp.noise_multiplier is not None else \
            _public_variance(l2, l1, dp.sample_rate, int(rounds), dp.epsilon, dp.delta)
        if mu is None:
            raise ConfigError(f"dp.mode = 'distributed': no Skellam variance fits epsilon {dp.epsilon:g} over "
                              f"{rounds} releases at q = {dp.sample_rate:g}")
        size = n if masking.degree == 0 else min(n, masking.degree + 1)
        t, c = threshold(masking.threshold, size), min(masking.colluders, size - 1)
        try:
            share = share_variance(mu, n, t, c)
            worst = max(worst, wrap_check(enc, max_samples, share, client_budget(fp.bound, bits)))
        except (PrivacyError, ConfigError) as exc:
            raise ConfigError(f"dp.mode = 'distributed', cohort of {n} (t = {t}, c = {c}, {dim} coordinates, "
                              f"up to {max_samples} samples per client and stage): {exc}") from None
    return worst
