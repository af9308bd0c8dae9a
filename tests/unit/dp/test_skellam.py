"""The Skellam mechanism: the sampler's moments, the sum property, the RDP formulas, the accountant
against Google's dp_accounting, the variance search, the noise tail and the rounding sensitivity."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fcit.dp.skellam import (
    SKELLAM_ORDERS,
    SkellamRelease,
    SkellamSampler,
    derive_skellam_variance,
    mixed_epsilon,
    noise_tail,
    rdp_to_epsilon,
    sensitivity,
    skellam_epsilon,
    skellam_rdp,
    skellam_rdp_vector,
    subsampled_rdp,
)
from secure_fcit.errors import PrivacyError

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
DELTA = 1e-5
# A realistic release: unit clip scaled to 1000 integer units, 1000 coordinates.
L2, L1 = sensitivity(1000.0, 1.0, 1000)


def _dp_accounting_gaussian(noise_multiplier: float, q: float, steps: int, delta: float = DELTA) -> float:
    """Google's RDP accountant on the same integer orders (Mironov et al.'s sampled-Gaussian analysis)."""
    acc = dp_accounting.rdp.RdpAccountant([float(a) for a in SKELLAM_ORDERS])
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def _skellam_like(noise_multiplier: float, q: float, steps: int) -> float:
    """The Skellam release with the variance of a Gaussian of that noise multiplier."""
    return skellam_epsilon([SkellamRelease((noise_multiplier * L2) ** 2, L2, L1, q, steps)], DELTA)


# ---------------------------------------------------------------------------------------------- sampler


def test_the_sampler_has_the_requested_moments_and_integer_dtype():
    n, variance = 200_000, 1e4
    x = SkellamSampler(KEY_A).sample(variance, n)
    assert x.dtype == np.int64 and x.shape == (n,)
    assert abs(x.var() / variance - 1) < 0.01
    assert abs(x.mean()) < 4 * math.sqrt(variance / n)


def test_the_same_key_gives_the_same_noise_and_fresh_keys_differ():
    assert np.array_equal(SkellamSampler(KEY_A).sample(100.0, 1000), SkellamSampler(KEY_A).sample(100.0, 1000))
    assert not np.array_equal(SkellamSampler(KEY_A).sample(100.0, 1000), SkellamSampler(KEY_B).sample(100.0, 1000))
    assert not np.array_equal(SkellamSampler().sample(100.0, 1000), SkellamSampler().sample(100.0, 1000))
    assert "00010203" not in repr(SkellamSampler(KEY_A))


@pytest.mark.parametrize("variance", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_variance_is_refused_by_name(variance):
    with pytest.raises(PrivacyError, match="variance"):
        SkellamSampler(KEY_A).sample(variance, 10)


@pytest.mark.parametrize("key", [b"short", bytes(33), "x" * 32])
def test_a_bad_key_is_refused_without_echoing_it(key):
    with pytest.raises(PrivacyError, match="32 bytes") as err:
        SkellamSampler(key)
    assert "short" not in str(err.value)


def test_the_sum_of_shares_carries_the_total_variance():
    n, variance, shares = 200_000, 4e3, 8
    sampler = SkellamSampler(KEY_B)
    total = sum(sampler.sample(variance / shares, n) for _ in range(shares))
    assert abs(total.var() / variance - 1) < 0.015


# ---------------------------------------------------------------------------------------------- RDP formulas


@pytest.mark.parametrize("alpha", [2, 3, 10, 64, 256])
def test_skellam_rdp_is_the_gaussian_rdp_plus_the_integer_correction(alpha):
    for mu, l2, l1 in [(1e2, 3.0, 20.0), (1e4, 30.0, 100.0), (1e6, L2, L1)]:
        gaussian = alpha * l2**2 / (2 * mu)
        correction = min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
        assert skellam_rdp(alpha, mu, l2, l1) == pytest.approx(gaussian + correction, rel=1e-12)
    # With the noise multiplier sqrt(mu)/l2 held fixed, the correction vanishes relative to the
    # Gaussian term as mu grows.
    excess = []
    for mu in [1e2, 1e4, 1e6, 1e8]:
        l2 = math.sqrt(mu)
        gaussian = alpha * l2**2 / (2 * mu)
        excess.append(skellam_rdp(alpha, mu, l2, 10 * l2) / gaussian - 1)
    assert all(e > 0 for e in excess)
    assert all(b < a for a, b in zip(excess, excess[1:], strict=False))
    assert excess[-1] < 1e-3


def test_subsampling_is_the_base_at_q_one_monotone_in_q_and_never_worse():
    def base(a: int) -> float:
        return skellam_rdp(a, 1e6, L2, L1)

    for alpha in [2, 3, 8, 32, 128]:
        assert subsampled_rdp(alpha, 1.0, base) == base(alpha)
        values = [subsampled_rdp(alpha, q, base) for q in np.linspace(0.001, 1.0, 60)]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
        assert all(v <= base(alpha) for v in values)
        if alpha <= 8:  # at high orders e^((l-1) eps(l)) is huge and q = 0.001 is not small enough
            assert values[0] < 0.01 * base(alpha)  # a small sample amplifies a lot


def test_subsampling_refuses_a_bad_rate():
    for q in [0.0, -0.1, 1.5, math.nan]:
        with pytest.raises(PrivacyError, match="sample rate"):
            subsampled_rdp(4, q, lambda a: 1.0)


def test_a_release_validates_its_fields():
    SkellamRelease(1e4, 3.0, 3.0, 1.0, 0)
    for bad in [(0.0, 3.0, 9.0, 0.1, 1), (1e4, 0.0, 9.0, 0.1, 1), (1e4, 3.0, 2.0, 0.1, 1),
                (1e4, 3.0, 9.0, 0.0, 1), (1e4, 3.0, 9.0, 1.1, 1), (1e4, 3.0, 9.0, 0.1, -1)]:
        with pytest.raises(PrivacyError):
            SkellamRelease(*bad)


def test_the_rdp_vector_is_cached_read_only_and_zero_without_steps():
    release = SkellamRelease(1e6, L2, L1, 0.05, 10)
    vec = skellam_rdp_vector(release)
    assert vec is skellam_rdp_vector(SkellamRelease(1e6, L2, L1, 0.05, 10))
    assert not vec.flags.writeable and vec.shape == (len(SKELLAM_ORDERS),)
    assert not skellam_rdp_vector(SkellamRelease(1e6, L2, L1, 0.05, 0)).any()
    assert skellam_epsilon([], DELTA) == 0.0
    assert skellam_epsilon([SkellamRelease(1e6, L2, L1, 0.05, 0)], DELTA) == 0.0


# ---------------------------------------------------------------------------------------------- dp_accounting


@pytest.mark.parametrize("noise_multiplier", [0.8, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("steps", [1, 10, 100])
def test_without_subsampling_skellam_is_just_above_the_gaussian_of_dp_accounting(noise_multiplier, steps):
    gaussian = _dp_accounting_gaussian(noise_multiplier, 1.0, steps)
    skellam = _skellam_like(noise_multiplier, 1.0, steps)
    assert gaussian <= skellam <= 1.02 * gaussian


@pytest.mark.parametrize("q", [0.05, 0.2])
@pytest.mark.parametrize("steps", [10, 100])
def test_with_subsampling_the_generic_zhu_wang_bound_costs_a_bounded_factor(q, steps):
    """Zhu-Wang's bound holds for any mechanism, so it is looser than dp_accounting's sampled-Gaussian
    analysis; at noise multiplier 1 the measured ratio is about 1.0 to 1.22 (-s shows it)."""
    gaussian = _dp_accounting_gaussian(1.0, q, steps)
    skellam = _skellam_like(1.0, q, steps)
    ratio = skellam / gaussian
    print(f"q={q} steps={steps}: Skellam eps {skellam:.4f}, Gaussian eps {gaussian:.4f}, ratio {ratio:.4f}")
    assert ratio >= 1 - 1e-9
    assert ratio <= 1.5


def test_gaussian_and_skellam_histories_compose_at_common_orders():
    gaussian = [(1.0, 0.05, 100)]
    skellam = [SkellamRelease(1e6, L2, L1, 0.05, 10)]
    mixed = mixed_epsilon(gaussian, skellam, DELTA)
    assert mixed > max(mixed_epsilon(gaussian, [], DELTA), skellam_epsilon(skellam, DELTA))
    assert mixed_epsilon(gaussian, [], DELTA) == pytest.approx(_dp_accounting_gaussian(1.0, 0.05, 100), rel=1e-9)
    with pytest.raises(PrivacyError, match="delta"):
        rdp_to_epsilon(np.zeros(len(SKELLAM_ORDERS)), SKELLAM_ORDERS, 0.0)


# ---------------------------------------------------------------------------------------------- variance search


def test_the_derived_variance_is_the_smallest_that_fits():
    history = [SkellamRelease(2e6, L2, L1, 0.05, 50)]
    target, tol = 4.0, 1e-3
    mu = derive_skellam_variance(history, l2=L2, l1=L1, q=0.05, steps=100, target_epsilon=target,
                                 delta=DELTA, tolerance=tol)
    assert mu is not None
    eps = skellam_epsilon([*history, SkellamRelease(mu, L2, L1, 0.05, 100)], DELTA)
    assert target * (1 - 2 * tol) <= eps <= target
    assert skellam_epsilon([*history, SkellamRelease(mu / (1 + tol), L2, L1, 0.05, 100)], DELTA) > target
    # DP-SGD steps on the same data count too.
    sgd = [(2.0, 0.05, 100)]
    with_sgd = derive_skellam_variance(history, l2=L2, l1=L1, q=0.05, steps=100, target_epsilon=target,
                                       delta=DELTA, gaussian=sgd)
    assert with_sgd is not None and with_sgd > mu
    assert mixed_epsilon(sgd, [*history, SkellamRelease(with_sgd, L2, L1, 0.05, 100)], DELTA) <= target


def test_no_variance_fits_a_spent_budget():
    spent = [SkellamRelease(L2**2 / 4, L2, L1, 1.0, 10)]  # noise multiplier 0.5, no subsampling
    assert skellam_epsilon(spent, DELTA) > 4.0
    assert derive_skellam_variance(spent, l2=L2, l1=L1, q=0.05, steps=10, target_epsilon=4.0, delta=DELTA) is None


# ---------------------------------------------------------------------------------------------- tail, sensitivity


def test_the_noise_tail_bounds_a_million_draws():
    n, variance = 1_000_000, 1e4
    bound = noise_tail(variance, n, log2_failure=30)  # fails with probability <= 2**-30
    worst = int(np.abs(SkellamSampler(KEY_A).sample(variance, n)).max())
    assert worst <= bound < 3 * worst  # sound, and not absurdly loose
    assert noise_tail(variance, n, 64) > bound and noise_tail(4 * variance, n, 30) > bound


_coords = st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(x=_coords, data=st.data(), scale=st.floats(0.5, 1e3), clip=st.floats(0.1, 10.0), r=st.floats(0.0, 1.0))
def test_coupled_stochastic_rounding_stays_within_the_stated_sensitivity(x, data, scale, clip, r):
    dim = len(x)
    direction = np.array(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=dim, max_size=dim)))
    u = np.array(data.draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=dim, max_size=dim)))
    norm = float(np.linalg.norm(direction))
    v = np.zeros(dim) if norm == 0 else direction / norm * r * scale * clip  # ||v|| <= scale * clip
    xs = np.array(x)
    d = np.floor(xs + v + u) - np.floor(xs + u)
    l2, l1 = sensitivity(scale, clip, dim)
    assert float(np.linalg.norm(d)) <= l2 + 1e-9
    assert float(np.abs(d).sum()) <= l1 + 1e-9
