"""Distributed DP against a coordinator with c colluding clients, through the masking protocol.

Adversary: the coordinator plus c = ``privacy.colluders`` cohort clients, who hand it their own
inputs (their encoded vectors and noise shares). Attack: drop honest clients after the masked
inputs down to the threshold t (the fewest the honest clients let through), take the unmasked sum,
and subtract the colluders' inputs. What is left is the honest survivors' noise: it must still
have at least the accounted variance mu (chi-square at 99 %). With one drop more, no sum comes out.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from secure_fcit.dp.distributed import noise_share, share_variance
from secure_fcit.dp.skellam import SkellamSampler
from secure_fcit.protocols import AggregationRound
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import (
    MaskingAggregator,
    MaskingClient,
    MaskingParams,
    make_identities,
    threshold,
)

RID = AggregationRound("fed-dist", 0, 1, 0, "update")
P, GAMMA, MU = 2048, 2.0**8, 40_000.0


def _cohort(n: int, params: MaskingParams, key: int):
    ids = [f"c{i:03d}" for i in range(n)]
    identities, directory = make_identities(ids)
    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
    t, c = threshold(params.threshold, n), params.colluders
    share = share_variance(MU, n, t, c)
    sampler = SkellamSampler(bytes([key]) * 32)
    # zero gradient signal: each client's input is its noise share, sent in units of 2^-8
    shares = {cid: noise_share(share, P, sampler) for cid in ids}
    return ids, directory, clients, shares, t, c


def _variance_at_least(x: np.ndarray, variance: float, level: float = 0.99) -> bool:
    """One-sided chi-square: the sample's variance is not significantly below ``variance``."""
    stat = float((x.astype(np.float64) ** 2).sum() / variance)
    return stat >= stats.chi2.ppf(1 - level, x.size)


def test_colluders_who_subtract_their_shares_after_dropouts_to_t_still_face_the_accounted_noise():
    params = MaskingParams()
    n = 7
    ids, directory, clients, shares, t, c = _cohort(n, params, 1)
    assert (t, c) == (5, 1)
    colluders = ids[-c:]
    dropped = ids[: n - t]  # honest clients that never send a masked input: t contributors are left
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, {k: v / GAMMA for k, v in shares.items()}, RID,
                            drop={"UpdateUpload": dropped})
    assert result.aggregate is not None, result.failure
    assert set(result.aggregate.contributors) == set(ids) - set(dropped)
    residual = np.rint(result.aggregate.vector * GAMMA) - sum(shares[k] for k in colluders)
    honest = [k for k in result.aggregate.contributors if k not in colluders]
    assert len(honest) == t - c
    np.testing.assert_array_equal(residual, sum(shares[k] for k in honest))  # the attack read the sum right
    assert _variance_at_least(residual, MU)


def test_the_check_fails_for_a_split_sized_for_the_whole_cohort():
    """Control: shares of mu / n (no threshold, no colluders) leave the same adversary short of mu."""
    sampler = SkellamSampler(bytes([2]) * 32)
    n, t, c = 7, 5, 1
    residual = sum(noise_share(MU / n, P, sampler) for _ in range(t - c))
    assert not _variance_at_least(residual, MU)


def test_one_drop_below_t_releases_no_sum():
    params = MaskingParams()
    n = 7
    ids, directory, clients, shares, t, c = _cohort(n, params, 3)
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, {k: v / GAMMA for k, v in shares.items()}, RID,
                            drop={"UpdateUpload": ids[: n - t + 1]})
    assert result.aggregate is None and aggregator.result() is None
