"""Quantity-skewed splitting of one task's samples over clients, as in the FCIT benchmark.

Client shares follow Dirichlet(beta * 1): small beta gives a few large clients and many tiny ones,
large beta gives near-equal shares. Every client still gets at least one sample so it can train.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from secure_fcit.errors import ConfigError

__all__ = ["dirichlet_quantity_split"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def dirichlet_quantity_split(
    n_samples: int, n_clients: int, beta: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split ``range(n_samples)`` into ``n_clients`` disjoint, non-empty, sorted index arrays.

    Each client first gets one sample; the other ``n_samples - n_clients`` are dealt by a
    multinomial draw with proportions ~ Dirichlet(beta). Which samples a client gets is a random
    permutation, so shares carry no order of the source data.
    """
    n_clients = _check_int("n_clients", n_clients, 1)
    n_samples = _check_int("n_samples", n_samples, 0)
    if n_samples < n_clients:
        raise ConfigError(
            f"cannot give each of {n_clients} clients a sample out of {n_samples}; "
            "use fewer clients or more data"
        )
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}")
    proportions = rng.dirichlet(np.full(n_clients, float(beta)))
    if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
        # Very small beta can underflow every gamma draw; the limit is one client taking everything.
        proportions = np.zeros(n_clients)
        proportions[int(rng.integers(n_clients))] = 1.0
    counts = 1 + rng.multinomial(n_samples - n_clients, proportions / proportions.sum())
    order = rng.permutation(n_samples)
    bounds = np.cumsum(counts)[:-1]
    return [np.sort(part).astype(np.int64) for part in np.split(order, bounds)]
