"""Distributed DP with the Skellam mechanism: the noise sampler, the sensitivity, the RDP accountant.

Each client of a secure-sum cohort scales its clipped contribution, rounds it to integers and adds
integer Skellam noise before masking. A sum of independent symmetric Skellams is a symmetric Skellam
whose variance is the sum of the variances, so the unmasked cohort sum carries the total noise and
no party, the server included, ever sees a less noisy vector (Agarwal, Kairouz, Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021, arXiv 2110.04995).

Everything here is in *integer units* of the encoded vector: ``mu`` is the per-coordinate variance of
the noise (``Poisson(mu/2) - Poisson(mu/2)``), ``l2``/``l1`` the sensitivities after scaling and
rounding (`sensitivity`). A Gaussian with the same variance has noise multiplier ``sqrt(mu) / l2``.

* `skellam_rdp`: RDP of the multidimensional Skellam mechanism (Agarwal et al. 2021, Thm 3.5/Cor 3.6).
* `subsampled_rdp`: Poisson-subsampling amplification for a generic mechanism (Zhu & Wang 2019,
  Thm 6); it is looser than the Gaussian-specific analysis Opacus uses, so a Skellam release costs
  somewhat more epsilon than a Gaussian of the same variance when q < 1.
* `skellam_epsilon` / `mixed_epsilon`: a history composed at the common integer `SKELLAM_ORDERS`
  and converted as Opacus does (Balle et al. 2020).
* `derive_skellam_variance`: the smallest variance that keeps a history within a target epsilon.
* `noise_tail`: how large the noise can get (to size the secure-sum modulus).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from randomgen import ChaCha
from scipy.special import gammaln, logsumexp

from ..errors import PrivacyError

__all__ = [
    "SKELLAM_ORDERS",
    "SkellamRelease",
    "SkellamSampler",
    "derive_skellam_variance",
    "gaussian_rdp_vector",
    "mixed_epsilon",
    "noise_tail",
    "rdp_to_epsilon",
    "sensitivity",
    "skellam_epsilon",
    "skellam_rdp",
    "skellam_rdp_vector",
    "subsampled_rdp",
]

#: Integer RDP orders: the Skellam bound and the Zhu-Wang sum are stated for integer orders.
SKELLAM_ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (72, 80, 96, 128, 160, 192, 256)

_KEY_BYTES = 32
# numpy's Poisson sampler refuses larger rates (numpy.random.Generator.poisson: "lam value too large").
_POISSON_LAM_MAX = 9.2e18


# ---------------------------------------------------------------------------------------------- sampling
#
# Why numpy's Generator is acceptable for secret noise: the Generator only turns raw bits into
# Poisson variates; the bits come from randomgen's ChaCha bit generator with the full 20 rounds
# (the ChaCha20 stream cipher), keyed with 32 bytes from os.urandom unless a caller injects a key.
# Predicting the noise therefore means breaking ChaCha20. Never use numpy's default bit generator
# (PCG64, or the legacy Mersenne Twister) for anything secret: its state is recoverable from its
# output. The Poisson variates themselves are computed in floating point (numpy's PTRS rejection
# sampler), as in the paper's own implementation.


class SkellamSampler:
    """Symmetric Skellam noise from a ChaCha20 stream.

    ``key`` (32 bytes) is for reproducible tests; production leaves it out and gets
    ``os.urandom(32)``. The key goes straight into the bit generator and is not kept anywhere else.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(_KEY_BYTES)
        if not isinstance(key, bytes | bytearray) or len(key) != _KEY_BYTES:
            # Never echo the key, only what is wrong with it.
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise PrivacyError(f"SkellamSampler key must be {_KEY_BYTES} bytes, got {got}")
        words = np.frombuffer(bytes(key), dtype="<u8").astype(np.uint64)
        self._rng = np.random.Generator(ChaCha(key=words, counter=0, rounds=20))

    def __repr__(self) -> str:
        return "SkellamSampler(<ChaCha20>)"

    def sample(self, variance: float, size: int) -> np.ndarray:
        """``size`` independent draws of ``Poisson(variance/2) - Poisson(variance/2)`` (int64),
        each with mean 0 and the given ``variance``."""
        variance = _positive("variance", variance)
        if variance / 2 > _POISSON_LAM_MAX:
            raise PrivacyError(f"variance={variance} too large for the Poisson sampler (max {2 * _POISSON_LAM_MAX:g})")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise PrivacyError(f"size must be a non-negative integer, got {size!r}")
        lam = variance / 2
        plus = self._rng.poisson(lam, int(size)).astype(np.int64)
        minus = self._rng.poisson(lam, int(size)).astype(np.int64)
        return plus - minus


# ---------------------------------------------------------------------------------------------- sensitivity


def sensitivity(scale: float, clip: float, dim: int) -> tuple[float, float]:
    """The (l2, l1) sensitivity, in integer units, of adding or removing one sample.

    Each sample's vector has L2 norm <= ``clip``; the client scales its *sum* by ``scale`` and
    rounds the sum (not each sample) stochastically: ``floor(x + u)`` with ``u`` uniform on
    [0, 1)^dim. Neighbouring datasets are compared with the same ``u`` (a coupling: ``u`` is drawn
    independently of the data, so it has the same distribution under both).

    For a fixed ``u``, two scaled sums differing by ``v`` (``||v||_2 <= scale * clip``) round to
    integer vectors ``d`` apart with ``|d_i| <= |v_i| + 1`` for every coordinate (for reals a, b,
    ``|floor(a) - floor(b)| < |a - b| + 1``). Hence ``||d||_2 <= ||v||_2 + sqrt(dim)`` (triangle
    inequality with the all-ones vector) and ``||d||_1 <= ||v||_1 + dim <= sqrt(dim) ||v||_2 + dim``.

    The released mechanism is a mixture over ``u`` of Skellam mechanisms with these sensitivities.
    Rényi divergence is jointly quasi-convex (van Erven & Harremoës 2014, Thm 13), so the
    divergence between the two mixtures is at most the largest divergence of a pair with the same
    ``u``: the RDP bound for these sensitivities holds for the rounded mechanism.
    """
    scale = _positive("scale", scale)
    clip = _positive("clip", clip)
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise PrivacyError(f"dim must be a positive integer, got {dim!r}")
    root = math.sqrt(int(dim))
    return scale * clip + root, scale * clip * root + int(dim)


def noise_tail(variance: float, dim: int, log2_failure: int = 64) -> float:
    """A bound T with ``P(max_i |X_i| > T) <= 2**-log2_failure`` for ``dim`` independent symmetric
    Skellams ``X_i`` of the given ``variance`` (so in particular ``<= dim * 2**-log2_failure``).

    The bound: the Skellam's moment generating function is ``E exp(sX) = exp(variance (cosh s - 1))``
    and, term by term, ``cosh s - 1 = sum_k s^(2k)/(2k)! <= (s^2/2) / (1 - s/3)`` for 0 <= s < 3
    (since ``(2k)! >= 2 * 3^(2k-2)``). That is Bernstein's condition with increments bounded by 1,
    and Chernoff's method gives ``P(X >= t) <= exp(-t^2 / (2 (variance + t/3)))``. By symmetry and a
    union bound over the ``dim`` coordinates the failure probability is at most
    ``2 dim exp(-t^2 / (2 (variance + t/3)))``; solving ``t^2 / (2 (variance + t/3)) = L`` with
    ``L = ln(2 dim) + log2_failure ln 2`` gives ``t = L/3 + sqrt(L^2/9 + 2 L variance)``, rounded up.
    """
    variance = _positive("variance", variance)
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise PrivacyError(f"dim must be a positive integer, got {dim!r}")
    if isinstance(log2_failure, bool) or not isinstance(log2_failure, int | np.integer) or log2_failure < 1:
        raise PrivacyError(f"log2_failure must be a positive integer, got {log2_failure!r}")
    log_budget = math.log(2 * int(dim)) + int(log2_failure) * math.log(2)
    return float(math.ceil(log_budget / 3 + math.sqrt(log_budget**2 / 9 + 2 * log_budget * variance)))


# ---------------------------------------------------------------------------------------------- RDP


def skellam_rdp(alpha: int, mu: float, l2: float, l1: float) -> float:
    """RDP at integer order ``alpha`` >= 2 of the multidimensional Skellam mechanism with
    per-coordinate variance ``mu`` and sensitivities ``l2``, ``l1`` (Agarwal et al. 2021, Thm 3.5
    and Cor 3.6, rewritten for the variance ``mu`` = 2 x the paper's Poisson rate):

    ``alpha l2^2 / (2 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (4 mu^2), 3 l1 / (2 mu))``.

    The first term is the Gaussian mechanism's RDP at the same variance; the second is the price of
    integer noise, which vanishes relative to the first as ``mu`` grows.
    """
    alpha = _order(alpha)
    mu, l2, l1 = _mechanism(mu, l2, l1)
    return float(_skellam_rdp_array(np.array([alpha], dtype=float), mu, l2, l1)[0])


def _skellam_rdp_array(alphas: np.ndarray, mu: float, l2: float, l1: float) -> np.ndarray:
    gaussian = alphas * l2**2 / (2 * mu)
    correction = np.minimum(((2 * alphas - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
    return gaussian + correction


def subsampled_rdp(alpha: int, q: float, base: Callable[[int], float]) -> float:
    """RDP at integer order ``alpha`` >= 2 of a mechanism with RDP ``base`` run on a Poisson
    subsample (each record kept with probability ``q``), under add/remove-one neighbours.

    Zhu & Wang 2019 ("Poisson subsampled Rényi differential privacy", ICML), Theorem 6:
    ``1/(alpha-1) log((1-q)^(alpha-1) (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^(alpha-2) e^base(2)
    + 3 sum_{l=3}^{alpha} C(alpha,l) (1-q)^(alpha-l) q^l e^((l-1) base(l)))``, evaluated in log space,
    and never more than ``base(alpha)`` (subsampling cannot hurt). At ``q == 1`` it is ``base(alpha)``.
    """
    alpha = _order(alpha)
    q = _rate(q)
    table = np.full(alpha + 1, np.nan)
    for order in range(2, alpha + 1):
        table[order] = float(base(order))
    if np.isnan(table[2:]).any() or (table[2:] < 0).any():
        raise PrivacyError(f"base RDP must be non-negative at orders 2..{alpha}")
    return _subsampled_from_table(alpha, q, table)


def _subsampled_from_table(alpha: int, q: float, table: np.ndarray) -> float:
    """`subsampled_rdp` with ``table[l]`` = base RDP at order l (entries 0 and 1 unused)."""
    if q == 1.0:
        return float(table[alpha])
    log_q, log_1mq = math.log(q), math.log1p(-q)
    terms = [(alpha - 1) * log_1mq + math.log1p((alpha - 1) * q),
             math.log(alpha * (alpha - 1) / 2) + 2 * log_q + (alpha - 2) * log_1mq + table[2]]
    if alpha >= 3:
        ell = np.arange(3, alpha + 1, dtype=float)
        log_binom = gammaln(alpha + 1) - gammaln(ell + 1) - gammaln(alpha - ell + 1)
        higher = (math.log(3) + log_binom + (alpha - ell) * log_1mq + ell * log_q
                  + (ell - 1) * table[3:alpha + 1])
        terms.extend(higher.tolist())
    with np.errstate(over="ignore"):  # an infinite base RDP gives an infinite bound, as it should
        bound = float(logsumexp(terms)) / (alpha - 1)
    return min(bound, float(table[alpha]))


@dataclass(frozen=True)
class SkellamRelease:
    """``steps`` Poisson-subsampled (rate ``q``) releases with Skellam noise of per-coordinate
    variance ``mu`` and sensitivities ``l2``, ``l1``, all in integer units (`sensitivity`)."""

    mu: float
    l2: float
    l1: float
    q: float
    steps: int

    def __post_init__(self) -> None:
        _mechanism(self.mu, self.l2, self.l1)
        _rate(self.q)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer) or self.steps < 0:
            raise PrivacyError(f"SkellamRelease steps must be a non-negative integer, got {self.steps!r}")


def skellam_rdp_vector(release: SkellamRelease, orders: Sequence[int] = SKELLAM_ORDERS) -> np.ndarray:
    """RDP of ``release`` (all its steps) at each of ``orders``; a read-only array (cached)."""
    if not isinstance(release, SkellamRelease):
        raise PrivacyError(f"expected a SkellamRelease, got {type(release).__name__}")
    return _skellam_rdp_cached(release, _orders(orders))


@functools.lru_cache(maxsize=4096)
def _skellam_rdp_cached(release: SkellamRelease, orders: tuple[int, ...]) -> np.ndarray:
    if release.steps == 0:
        vec = np.zeros(len(orders))
    else:
        top = max(orders)
        table = np.full(top + 1, np.nan)
        table[2:] = _skellam_rdp_array(np.arange(2, top + 1, dtype=float), release.mu, release.l2, release.l1)
        per_step = np.array([_subsampled_from_table(a, release.q, table) for a in orders])
        vec = release.steps * per_step
    vec.setflags(write=False)
    return vec


def gaussian_rdp_vector(sigma: float, q: float, steps: int, orders: Sequence[int] = SKELLAM_ORDERS) -> np.ndarray:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps (Opacus' ``compute_rdp``) at the integer
    ``orders``, so that DP-SGD and Skellam releases compose at common orders. Read-only (cached)."""
    if not math.isfinite(sigma) or sigma < 0:
        raise PrivacyError(f"noise multiplier must be finite and >= 0, got sigma={sigma}")
    q = _rate(q)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise PrivacyError(f"steps must be a non-negative integer, got {steps!r}")
    return _gaussian_rdp_cached(float(sigma), q, int(steps), _orders(orders))


@functools.lru_cache(maxsize=4096)
def _gaussian_rdp_cached(sigma: float, q: float, steps: int, orders: tuple[int, ...]) -> np.ndarray:
    if steps == 0:
        vec = np.zeros(len(orders))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vec = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                         orders=[float(a) for a in orders]), dtype=float)
    vec.setflags(write=False)
    return vec


def rdp_to_epsilon(rdp: np.ndarray, orders: Sequence[int], delta: float) -> float:
    """Epsilon at ``delta`` from RDP values at ``orders``: Opacus' ``get_privacy_spent`` (Balle et
    al. 2020: ``min_alpha rdp - (log delta + log alpha)/(alpha - 1) + log((alpha - 1)/alpha)``),
    floored at 0 (an (eps < 0, delta) guarantee is a (0, delta) one)."""
    delta = _delta(delta)
    rdp = np.asarray(rdp, dtype=float)
    order_list = [float(a) for a in _orders(orders)]
    if rdp.shape != (len(order_list),):
        raise PrivacyError(f"rdp has shape {rdp.shape}, expected one value per order ({len(order_list)})")
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha"
        warnings.simplefilter("ignore")
        eps = float(get_privacy_spent(orders=order_list, rdp=rdp, delta=delta)[0])
    return max(eps, 0.0)


def skellam_epsilon(history: Sequence[SkellamRelease], delta: float) -> float:
    """Epsilon at ``delta`` of a history of Skellam releases (RDP composition); 0.0 with no steps."""
    return mixed_epsilon((), history, delta)


def mixed_epsilon(gaussian: Sequence[tuple[float, float, int]], skellam: Sequence[SkellamRelease],
                  delta: float) -> float:
    """Epsilon at ``delta`` of DP-SGD steps ``(noise_multiplier, sample_rate, steps)`` and Skellam
    releases on the same data, composed at `SKELLAM_ORDERS`; 0.0 with no steps at all."""
    delta = _delta(delta)
    rdp = _total_rdp(gaussian, skellam)
    if rdp is None:
        return 0.0
    return rdp_to_epsilon(rdp, SKELLAM_ORDERS, delta)


def _total_rdp(gaussian: Sequence[tuple[float, float, int]],
               skellam: Sequence[SkellamRelease]) -> np.ndarray | None:
    """Summed RDP at `SKELLAM_ORDERS`, or None when nothing in either history took a step."""
    total = np.zeros(len(SKELLAM_ORDERS))
    steps = 0
    for sigma, q, t in gaussian:
        total = total + gaussian_rdp_vector(sigma, q, t)
        steps += int(t)
    for release in skellam:
        total = total + skellam_rdp_vector(release)
        steps += release.steps
    return total if steps > 0 else None


def derive_skellam_variance(
    history: Sequence[SkellamRelease], *, l2: float, l1: float, q: float, steps: int,
    target_epsilon: float, delta: float, tolerance: float = 1e-3,
    gaussian: Sequence[tuple[float, float, int]] = (),
) -> float | None:
    """The smallest variance ``mu`` (to relative ``tolerance``) with which ``history`` (and any
    DP-SGD steps in ``gaussian``) plus ``SkellamRelease(mu, l2, l1, q, steps)`` stays within
    ``target_epsilon`` at ``delta``.

    Epsilon decreases with ``mu``, so a bisection on ``log mu`` finds it. None when even
    ``mu = (100 l2)^2`` (a Gaussian noise multiplier of about 100) does not fit: the budget is spent.
    """
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise PrivacyError(f"steps must be a positive integer to plan a release, got {steps!r}")
    target_epsilon = _positive("target_epsilon", target_epsilon)
    delta = _delta(delta)
    if not (math.isfinite(tolerance) and 0 < tolerance < 1):
        raise PrivacyError(f"tolerance must be in (0, 1), got {tolerance}")
    _mechanism(1.0, l2, l1)
    q = _rate(q)
    spent = _total_rdp(gaussian, history)
    base = np.zeros(len(SKELLAM_ORDERS)) if spent is None else spent

    def fits(mu: float) -> bool:
        rdp = base + skellam_rdp_vector(SkellamRelease(mu, l2, l1, q, int(steps)))
        return rdp_to_epsilon(rdp, SKELLAM_ORDERS, delta) <= target_epsilon

    hi = (100.0 * l2) ** 2
    if not fits(hi):
        return None
    lo = hi
    while fits(lo):  # epsilon grows without bound as mu -> 0, so this ends
        hi, lo = lo, lo / 16
        if lo < 1e-300:
            raise PrivacyError("no variance lower bound found (target_epsilon too large to bisect)")
    log_lo, log_hi = math.log(lo), math.log(hi)
    while log_hi - log_lo > math.log1p(tolerance):
        mid = (log_lo + log_hi) / 2
        if fits(math.exp(mid)):
            log_hi = mid
        else:
            log_lo = mid
    return math.exp(log_hi)


# ---------------------------------------------------------------------------------------------- checks


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PrivacyError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise PrivacyError(f"{name} must be finite and > 0, got {name}={value}")
    return value


def _mechanism(mu: float, l2: float, l1: float) -> tuple[float, float, float]:
    mu, l2, l1 = _positive("mu", mu), _positive("l2", l2), _positive("l1", l1)
    if l1 < l2:
        raise PrivacyError(f"l1 sensitivity must be >= l2 sensitivity (any vector's l1 norm is), got l1={l1}, l2={l2}")
    return mu, l2, l1


def _rate(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, int | float | np.integer | np.floating) or not 0 < q <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got q={q}")
    return float(q)


def _delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float | np.floating) or not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got delta={delta}")
    return float(delta)


def _order(alpha: int) -> int:
    if isinstance(alpha, bool) or not isinstance(alpha, int | np.integer) or alpha < 2:
        raise PrivacyError(f"RDP order must be an integer >= 2, got alpha={alpha!r}")
    return int(alpha)


def _orders(orders: Sequence[int]) -> tuple[int, ...]:
    result = []
    for alpha in orders:
        if isinstance(alpha, float | np.floating) and float(alpha).is_integer():
            alpha = int(alpha)
        result.append(_order(alpha))
    if not result:
        raise PrivacyError("at least one RDP order is needed")
    return tuple(result)
