"""Privacy accounting on Opacus' accountants: epsilon of a (sigma, q, steps) history, and sigma for a target.

A history is the list of Poisson-subsampled Gaussian mechanisms that touched one client's data:
``(noise_multiplier, sample_rate, steps)``, exactly Opacus' accountant history. RDP is additive
over the history, so `rdp_epsilon` is what a fresh ``opacus.accountants.RDPAccountant`` with that
history returns; `prv_epsilon` runs a fresh ``PRVAccountant``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from ..errors import PrivacyError

__all__ = ["Mechanism", "rdp_epsilon", "prv_epsilon", "epsilon", "derive_noise_multiplier", "PRV_EPS_ERROR"]

Mechanism = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)

#: The PRV accountant's epsilon error (Opacus' ``eps_error``); it returns the upper bound.
PRV_EPS_ERROR = 0.05
_ORDERS = RDPAccountant.DEFAULT_ALPHAS
# Integer orders only: the closed form is fast. Used to derive sigma, never to report epsilon; with
# fewer orders the epsilon is a little larger, so the derived sigma errs on the safe side.
_FAST_ORDERS = [float(a) for a in range(2, 65)] + [80.0, 96.0, 128.0, 192.0, 256.0]


@functools.lru_cache(maxsize=4096)
def _rdp_vector(sigma: float, q: float, steps: int, fast: bool) -> np.ndarray:
    """RDP of one mechanism at every order (cached: a history is re-summed every round)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=_FAST_ORDERS if fast else _ORDERS)
    vec = np.asarray(vec, dtype=float)
    vec.setflags(write=False)
    return vec


def _spent(rdp: np.ndarray, delta: float, fast: bool) -> float:
    with warnings.catch_warnings():  # "optimal order is the largest alpha" at extreme sigmas
        warnings.simplefilter("ignore")
        return float(get_privacy_spent(orders=_FAST_ORDERS if fast else _ORDERS, rdp=rdp, delta=delta)[0])


def _check(history: Sequence[Mechanism]) -> None:
    for sigma, q, steps in history:
        if sigma < 0 or not 0 < q <= 1 or steps < 0:
            raise PrivacyError(f"invalid mechanism in history: sigma={sigma}, q={q}, steps={steps}")


def _covered(history: Sequence[Mechanism]) -> list[Mechanism]:
    return [(float(s), float(q), int(t)) for s, q, t in history if t > 0]


def _prepared(history: Sequence[Mechanism]) -> tuple[list[Mechanism], float | None]:
    """The steps that count, and epsilon when it needs no accountant (0 with no steps, inf with
    a noiseless one)."""
    _check(history)
    hist = _covered(history)
    if not hist:
        return hist, 0.0
    if any(s == 0 for s, _, _ in hist):
        return hist, math.inf
    return hist, None


def rdp_epsilon(history: Sequence[Mechanism], delta: float) -> float:
    """Epsilon of ``history`` at ``delta`` under RDP (Opacus' analysis at its default orders)."""
    hist, trivial = _prepared(history)
    if trivial is not None:
        return trivial
    return _spent(sum(_rdp_vector(s, q, t, False) for s, q, t in hist), delta, False)


def prv_epsilon(history: Sequence[Mechanism], delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """Epsilon upper bound of ``history`` at ``delta`` under the PRV accountant (Gopi et al. 2021)."""
    hist, trivial = _prepared(history)
    if trivial is not None:
        return trivial
    acc = PRVAccountant()
    acc.history = hist
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # log(0) at q = 1, and the RDP order warnings of its domain bound
        return float(acc.get_epsilon(delta=delta, eps_error=eps_error))


def epsilon(history: Sequence[Mechanism], delta: float, accountant: str) -> float:
    if accountant == "rdp":
        return rdp_epsilon(history, delta)
    if accountant == "prv":
        return prv_epsilon(history, delta)
    raise PrivacyError(f"unknown accountant {accountant!r} (use 'rdp' or 'prv')")


def derive_noise_multiplier(
    history: Sequence[Mechanism], planned: Mechanism, target_epsilon: float, delta: float,
    tolerance: float = 1e-3, sigma_max: float = 100.0,
) -> float | None:
    """The smallest sigma (to ``tolerance``, relative) with which ``history`` plus ``planned``
    (its sigma ignored: ``(_, q, steps)``) stays within ``target_epsilon`` under RDP.

    None when even ``sigma_max`` cannot keep it in budget: the budget is spent, or what is left
    would buy only noise (at sigma 100 the noise std is 100*C/B per coordinate).
    """
    _check(history)
    _, q, steps = planned
    base = sum((_rdp_vector(s, q_, t, True) for s, q_, t in _covered(history)), np.zeros(len(_FAST_ORDERS)))

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rdp = base + compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=_FAST_ORDERS)
        return _spent(rdp, delta, True)

    if eps(sigma_max) > target_epsilon:
        return None
    lo, hi = 1e-2, sigma_max
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
