"""Dirichlet quantity splits: a partition, nobody empty, deterministic, skew grows as beta shrinks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fcit.data import dirichlet_quantity_split
from secure_fcit.errors import ConfigError

betas = st.floats(min_value=0.005, max_value=200.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(n_clients=st.integers(1, 60), extra=st.integers(0, 400), beta=betas, seed=st.integers(0, 2**63))
def test_split_is_a_partition_with_no_empty_client(
    n_clients: int, extra: int, beta: float, seed: int
) -> None:
    n = n_clients + extra
    parts = dirichlet_quantity_split(n, n_clients, beta, np.random.default_rng(seed))
    assert len(parts) == n_clients
    assert all(len(p) >= 1 and p.dtype == np.int64 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    again = dirichlet_quantity_split(n, n_clients, beta, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _mean_skew(beta: float, seeds: range) -> float:
    """Mean coefficient of variation of the client sizes (0 = equal shares)."""
    cvs = []
    for seed in seeds:
        sizes = np.array(
            [len(p) for p in dirichlet_quantity_split(1000, 20, beta, np.random.default_rng(seed))]
        )
        cvs.append(sizes.std() / sizes.mean())
    return float(np.mean(cvs))


@settings(max_examples=8, deadline=None)
@given(beta=st.floats(min_value=0.05, max_value=5.0), seed=st.integers(0, 10_000))
def test_smaller_beta_gives_more_skew_on_average(beta: float, seed: int) -> None:
    seeds = range(seed, seed + 20)
    assert _mean_skew(beta, seeds) > _mean_skew(beta * 10, seeds)


def test_different_seeds_differ_and_tiny_beta_still_works() -> None:
    a = dirichlet_quantity_split(100, 5, 1.0, np.random.default_rng(0))
    b = dirichlet_quantity_split(100, 5, 1.0, np.random.default_rng(1))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    parts = dirichlet_quantity_split(100, 10, 1e-6, np.random.default_rng(0))
    assert sum(len(p) for p in parts) == 100 and max(len(p) for p in parts) >= 90


@pytest.mark.parametrize(
    ("n_samples", "n_clients", "beta", "message"),
    [
        (4, 5, 1.0, "cannot give each of 5 clients a sample out of 4"),
        (10, 0, 1.0, "n_clients must be an integer >= 1"),
        (10, 2, 0.0, "beta must be a finite number > 0"),
        (10, 2, -1.0, "beta must be a finite number > 0"),
        (10, 2, float("nan"), "beta must be a finite number > 0"),
        (10, 2, float("inf"), "beta must be a finite number > 0"),
        (10.5, 2, 1.0, "n_samples must be an integer"),
    ],
)
def test_bad_arguments_raise_config_error(
    n_samples: object, n_clients: object, beta: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        dirichlet_quantity_split(n_samples, n_clients, beta, np.random.default_rng(0))  # type: ignore[arg-type]
