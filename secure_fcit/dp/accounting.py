"""Privacy accounting on Opacus' accountants: epsilon of a (sigma, q, steps) history, and sigma for a target.

A history is the list of Poisson-subsampled Gaussian mechanisms that touched one client's data:
``(noise_multiplier, sample_rate, steps)``, exactly Opacus' accountant history. RDP is additive
over the history, so `rdp_epsilon` is what a fresh ``opacus.accountants.RDPAccountant`` with that
history returns; `prv_epsilon` runs Opacus' PRV analysis (``PRVAccountant._get_dprv``'s steps) on
a domain it sizes and checks first.

The PRV accountant cannot account every history: its discretisation domain [-L, L] is sized from
an RDP bound, and where L passes float64's ``exp`` range (about 709.8) Opacus either raises
("Discrete mean differs significantly from continuous mean") or returns a meaningless value, and
the grid (2L/mesh points) grows with L and sqrt(steps) into gigabytes. `prv_result` therefore
returns the reason instead of an epsilon when L > `PRV_MAX_L` or the grid would exceed
`PRV_MAX_DOMAIN` points, or when Opacus fails anyway; RDP, which handles every sigma > 0, then
enforces the cap (`epsilon`). ``DPConfig`` refuses a sigma below ``DPConfig.MIN_NOISE_MULTIPLIER``,
under which even one step at q = 1 is past that range.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from ..config import DPConfig
from ..errors import PrivacyError

__all__ = ["Mechanism", "PRVResult", "rdp_epsilon", "prv_epsilon", "prv_result", "epsilon",
           "derive_noise_multiplier", "PRV_EPS_ERROR", "PRV_MAX_L", "PRV_MAX_DOMAIN", "STREAM_PARTITION",
           "entry_tasks", "task_histories", "task_releases", "SKELLAM_KIND", "skellam_release",
           "task_epsilon", "TOKEN_KIND", "GAUSSIAN_KINDS"]

Mechanism = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)

#: The partition of a journal entry that names no task (older journals; a deployment whose stage
#: folders carry no task label): one partition for the whole stream, so everything composes.
STREAM_PARTITION = "stream"


def entry_tasks(entry: dict) -> tuple[str, ...]:
    """The tasks (partitions of the client's data) a journal entry's mechanism touched."""
    tasks = entry.get("tasks")
    return tuple(tasks) if tasks else (STREAM_PARTITION,)


#: The journal kind of a token-phase release (`dp.client.noisy_token`): one Gaussian mechanism
#: on (token sum, count), recorded as the Mechanism (noise multiplier, q = 1, steps = 1).
TOKEN_KIND = "token"
#: Journal kinds that are Gaussian mechanisms in a task's history.
GAUSSIAN_KINDS = ("dp-sgd", TOKEN_KIND)


def task_histories(entries: Sequence[dict]) -> dict[str, list[Mechanism]]:
    """Per-task accounting (parallel composition): each task's history holds the Gaussian mechanisms
    (DP-SGD rounds and token releases) that touched its samples, in journal order. A sample belongs
    to one task, a public label fixed before training, and enters only the rounds on its task's data;
    a task that returns composes all its stages. The client's guarantee is the maximum over its
    tasks' epsilons."""
    out: dict[str, list[Mechanism]] = {}
    for e in entries:
        if e.get("kind") in GAUSSIAN_KINDS:
            for task in entry_tasks(e):
                out.setdefault(task, []).append((e["sigma"], e["q"], e["steps"]))
    return out

#: The journal kind of a distributed-DP release (`dp.distributed`): one Skellam mechanism inside
#: the secure sum, accounted by `dp.skellam` (RDP only; PRV has no Skellam analysis here).
SKELLAM_KIND = "skellam"


def skellam_release(entry: dict):
    """The `skellam.SkellamRelease` a journal entry of `SKELLAM_KIND` records."""
    from .skellam import SkellamRelease

    return SkellamRelease(float(entry["mu"]), float(entry["l2"]), float(entry["l1"]), float(entry["q"]),
                          int(entry["steps"]))


def task_releases(entries: Sequence[dict]) -> dict[str, list]:
    """Per task, the distributed-DP (Skellam) releases that touched its samples, in journal order."""
    out: dict[str, list] = {}
    for e in entries:
        if e.get("kind") == SKELLAM_KIND:
            for task in entry_tasks(e):
                out.setdefault(task, []).append(skellam_release(e))
    return out


def task_epsilon(gaussian: Sequence[Mechanism], skellam: Sequence, delta: float) -> float:
    """RDP epsilon of one task's history: `rdp_epsilon` (Opacus' orders) for DP-SGD alone; with any
    Skellam release, both composed at `skellam.SKELLAM_ORDERS` (`skellam.mixed_epsilon`)."""
    if not skellam:
        return rdp_epsilon(gaussian, delta)
    from .skellam import mixed_epsilon

    return mixed_epsilon(list(gaussian), list(skellam), delta)


#: The PRV accountant's epsilon error (Opacus' ``eps_error``); it returns the upper bound.
PRV_EPS_ERROR = 0.05
#: Largest PRV domain half-width L: exp(L) must stay finite in float64 (exp(709.8) overflows), with margin.
PRV_MAX_L = 700.0
#: Largest PRV grid (points). Measured on 1 CPU thread: 7.4e6 points took 6.6 s and 1.5 GB,
#: 2.6e7 points 38 s and 4.6 GB; 2**22 points stay near 3 s and 1 GB per history.
PRV_MAX_DOMAIN = 1 << 22
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


class PRVResult(NamedTuple):
    """The PRV epsilon upper bound, or None with the reason it is unavailable."""

    epsilon: float | None
    reason: str | None = None


def _prv_domain(hist: list[Mechanism], eps_error: float, delta_error: float) -> tuple[float, float]:
    """Opacus' ``compute_safe_domain_size`` (the half-width L) and mesh size, from the cached RDP
    vectors: the same numbers, without re-running an RDP accountant per mechanism."""
    total = sum(t for _, _, t in hist)
    whole = _spent(sum(_rdp_vector(s, q, t, False) for s, q, t in hist), delta_error / 4, False)
    single = max(_spent(_rdp_vector(s, q, 1, False), delta_error / (8 * total), False) for s, q, _ in hist)
    half_width = max(whole, single, eps_error) + 3
    mesh = eps_error / math.sqrt(total * math.log(12 / delta_error) / 2)
    return half_width, mesh


@functools.lru_cache(maxsize=1024)
def _prv_cached(hist: tuple[Mechanism, ...], delta: float, eps_error: float) -> PRVResult:
    """`prv_result` of a prepared history (cached: the ledger re-asks its whole history each round)."""
    delta_error = delta / 1000  # Opacus' default
    half_width, mesh = _prv_domain(list(hist), eps_error, delta_error)
    if not half_width <= PRV_MAX_L:
        return PRVResult(None, f"PRV domain half-width {half_width:.4g} > {PRV_MAX_L:g} (float64 exp overflows): "
                               "noise too small for the PRV accountant; RDP applies")
    points = 2 * half_width / mesh
    if points > PRV_MAX_DOMAIN:
        return PRVResult(None, f"PRV grid of {points:.3g} points > {PRV_MAX_DOMAIN} (time and memory bound); "
                               "RDP applies")
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            warnings.simplefilter("ignore")  # log(0) at q = 1, and the RDP order warnings
            # PRVAccountant._get_dprv, on the domain checked above.
            domain = Domain.create_aligned(-half_width, half_width, mesh)
            prvs = [PoissonSubsampledGaussianPRV(q, s) for s, q, _ in hist]
            dprvs = [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in prvs]
            composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=[t for _, _, t in hist])
            eps = float(composed.compute_epsilon(delta, delta_error, eps_error)[2])
    except (RuntimeError, ValueError, FloatingPointError, MemoryError) as exc:
        return PRVResult(None, f"the PRV accountant failed ({type(exc).__name__}: {exc}); RDP applies")
    if not math.isfinite(eps):
        return PRVResult(None, f"the PRV accountant returned {eps} (numerical breakdown); RDP applies")
    return PRVResult(eps)


def prv_result(history: Sequence[Mechanism], delta: float, eps_error: float = PRV_EPS_ERROR) -> PRVResult:
    """Epsilon upper bound of ``history`` at ``delta`` under the PRV accountant (Gopi et al. 2021),
    or the reason it is unavailable. Never raises for a valid history, and its cost is bounded."""
    hist, trivial = _prepared(history)
    if trivial is not None:
        return PRVResult(trivial)
    return _prv_cached(tuple(hist), float(delta), float(eps_error))


def prv_epsilon(history: Sequence[Mechanism], delta: float, eps_error: float = PRV_EPS_ERROR) -> float:
    """`prv_result`'s epsilon; NaN when the PRV accountant cannot account ``history``
    (`prv_result` says why)."""
    res = prv_result(history, delta, eps_error)
    return math.nan if res.epsilon is None else res.epsilon


def epsilon(history: Sequence[Mechanism], delta: float, accountant: str) -> float:
    """Epsilon under ``accountant``; "prv" falls back to RDP where PRV is unavailable."""
    if accountant == "rdp":
        return rdp_epsilon(history, delta)
    if accountant == "prv":
        res = prv_result(history, delta)
        return rdp_epsilon(history, delta) if res.epsilon is None else res.epsilon
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
    lo, hi = DPConfig.MIN_NOISE_MULTIPLIER, sigma_max  # below it neither config nor PRV accepts sigma
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
