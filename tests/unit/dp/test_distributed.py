"""Distributed DP encoding: the rotation, the one-shot rounding, the noise shares and their sum,
dropouts to the threshold, and the refusals (shares that cannot carry the noise, wrap-around)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.distributed import (
    DistributedEncoding,
    client_budget,
    decode_sum,
    encode_samples,
    fwht,
    noise_share,
    rotate,
    rotation_signs,
    share_variance,
    unrotate,
    wrap_check,
)
from secure_fcit.dp.skellam import SkellamSampler
from secure_fcit.errors import ConfigError, PrivacyError

SEED = bytes(range(32))


def _chi2_variance_ok(x: np.ndarray, variance: float, level: float = 0.99) -> bool:
    """Two-sided chi-square test that the mean-zero sample ``x`` has the given variance."""
    n = x.size
    stat = float((x.astype(np.float64) ** 2).sum() / variance)
    lo, hi = stats.chi2.ppf((1 - level) / 2, n), stats.chi2.ppf(1 - (1 - level) / 2, n)
    return lo <= stat <= hi


def test_hadamard_rotation_is_orthonormal_and_inverted_by_unrotate():
    x = torch.randn(3, 64, dtype=torch.float64)
    signs = rotation_signs(SEED, 64)
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    y = rotate(x, signs)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), atol=1e-12)
    assert torch.allclose(unrotate(y, signs), x, atol=1e-12)
    h = fwht(torch.eye(8, dtype=torch.float64))  # the matrix itself: +-1/sqrt(8) everywhere
    assert torch.allclose(h.abs(), torch.full((8, 8), 1 / math.sqrt(8), dtype=torch.float64))


def test_rotation_signs_are_fixed_by_the_public_seed():
    assert torch.equal(rotation_signs(SEED, 128), rotation_signs(SEED, 128))
    assert not torch.equal(rotation_signs(SEED, 128), rotation_signs(bytes(32), 128))
    with pytest.raises(ConfigError, match="power of two"):
        rotation_signs(SEED, 100)


def test_rotation_flattens_a_spike():
    """One coordinate holding all the mass comes out at 1/sqrt(P) everywhere: no coordinate nears the modulus."""
    p = 1024
    x = torch.zeros(p, dtype=torch.float64)
    x[3] = 1.0
    assert float(rotate(x, rotation_signs(SEED, p)).abs().max()) == pytest.approx(1 / math.sqrt(p))


def test_encoding_is_unbiased_and_decodes_the_clipped_sum_and_count():
    enc = DistributedEncoding(dim=20, clip=1.0, count_scale=0.5, scale_bits=10)
    assert enc.padded == 32
    g = torch.randn(7, 20, dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True).clamp(min=1.0)
    signs = rotation_signs(SEED, enc.padded)
    prg = ChaCha20PRG(bytes(32))
    decoded = [decode_sum(encode_samples(enc, g, signs, prg) / enc.gamma, signs, enc.dim, enc.count_scale) for _ in range(400)]
    grad = np.mean([d[0] for d in decoded], axis=0)
    count = np.mean([d[1] for d in decoded])
    np.testing.assert_allclose(grad, g.sum(0).numpy(), atol=5e-4)
    assert count == pytest.approx(7.0, abs=5e-3)
    # One draw is within the rounding error (at most 1 integer unit per coordinate) of the truth.
    one, n = decode_sum(encode_samples(enc, g, signs, prg) / enc.gamma, signs, enc.dim, enc.count_scale)
    assert np.abs(one - g.sum(0).numpy()).max() <= math.sqrt(enc.padded) / enc.gamma


def test_encoding_refuses_a_gradient_over_the_clip():
    enc = DistributedEncoding(dim=4, clip=1.0, count_scale=1.0, scale_bits=8)
    g = torch.tensor([[2.0, 0, 0, 0]], dtype=torch.float64)
    with pytest.raises(PrivacyError, match="over the clip"):
        encode_samples(enc, g, rotation_signs(SEED, enc.padded), ChaCha20PRG())


def test_one_share_is_at_most_total_over_t_and_shares_of_t_survivors_carry_the_total():
    """c = 0: one client's share has variance total / t; the sum of any t shares has the accounted
    variance (chi-square at 99 %). With c colluders each share is total / (t - c), so the t - c
    honest shares that are left after the colluders subtract theirs still carry the total."""
    total, n, t = 400.0, 7, 4
    share = share_variance(total, n, t, 0)
    assert share <= total / t
    sampler = SkellamSampler(bytes(range(32)))
    p = 4096
    shares = np.stack([noise_share(share, p, sampler) for _ in range(n)])
    assert _chi2_variance_ok(shares[0], total / t)
    assert _chi2_variance_ok(shares[:t].sum(0), total)  # dropouts down to t: still the total
    assert _chi2_variance_ok(shares.sum(0), total * n / t)  # all n: more, never less
    c = 2
    share_c = share_variance(total, n, t, c)
    honest = np.stack([noise_share(share_c, p, sampler) for _ in range(t - c)]).sum(0)
    assert _chi2_variance_ok(honest, total)


def test_the_check_would_catch_a_short_share():
    """The test above can fail: t shares sized total / n (n > t: the naive split) fall short at 99 %."""
    total, n, t = 400.0, 10, 4
    sampler = SkellamSampler(bytes(range(1, 33)))
    short = np.stack([noise_share(total / n, 4096, sampler) for _ in range(t)]).sum(0)
    assert not _chi2_variance_ok(short, total)


def test_shares_that_cannot_carry_the_noise_are_refused_with_the_numbers():
    with pytest.raises(PrivacyError, match=r"t=3 survivors with c=3 colluders leave 0 honest"):
        share_variance(100.0, 5, 3, 3)
    with pytest.raises(PrivacyError, match="outside 1..5"):
        share_variance(100.0, 5, 6, 0)


def test_wrap_check_refuses_an_encoding_that_could_wrap_and_passes_a_roomy_one():
    enc = DistributedEncoding(dim=1000, clip=1.0, count_scale=0.25, scale_bits=13)
    budget = client_budget(32768.0, 13)
    assert budget == 2**28
    held = wrap_check(enc, 64, 1e6, budget)
    assert 0 < held < budget
    with pytest.raises(ConfigError, match=r"over the per-client budget 8192 "):
        wrap_check(enc, 64, 1e6, client_budget(1.0, 13))
    with pytest.raises(ConfigError, match="rounding would dominate"):
        wrap_check(DistributedEncoding(dim=1000, clip=1.0, count_scale=0.25, scale_bits=4), 1, 1.0, budget)


def test_wrap_bound_holds_for_the_worst_aligned_samples():
    """All samples equal (their sum has the largest norm) and rotated: no coordinate over the bound."""
    enc = DistributedEncoding(dim=255, clip=1.0, count_scale=1.0, scale_bits=8)
    g = torch.zeros(50, 255, dtype=torch.float64)
    g[:, 0] = 1.0
    budget = 10**9
    bound = wrap_check(enc, 50, 100.0, budget)
    for k in range(20):
        z = encode_samples(enc, g, rotation_signs(bytes([k]) * 32, enc.padded), ChaCha20PRG())
        assert np.abs(z).max() <= bound
