"""The one-run canary audit (Steinke, Nasr, Jagielski 2023): its bound is a valid lower bound, it
sees leakage where there is some, and DP-SGD as shipped stays under its accounted epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secure_fcit.compliance.empirical import (
    canary_audit,
    epsilon_lower_bound,
    guess_bound,
    k_grid,
    p_value,
    settings,
)
from secure_fcit.dp import sgd
from secure_fcit.errors import ConfigError


# --- the bound, a pure function -------------------------------------------------------------------
def test_no_guess_or_no_correct_guess_bounds_nothing():
    assert epsilon_lower_bound(100, 0, 0) == 0.0
    assert epsilon_lower_bound(100, 10, 0, delta=1e-5) == 0.0
    assert p_value(100, 0, 0, 3.0, 1e-5) == 1.0


def test_perfect_guessing_matches_the_closed_form():
    # delta = 0 and v = r: P[Binomial(r, q) >= r] = q^r <= 0.05 gives q = 0.05^(1/r), eps = logit(q).
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0, 0.95) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert epsilon_lower_bound(1000, 1000, 1000, 1e-5) > 5.5


def test_random_guessing_bounds_about_nothing_and_delta_costs():
    assert epsilon_lower_bound(1000, 1000, 500, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 1000, 530, 1e-5) < 0.1
    assert epsilon_lower_bound(1000, 1000, 900, 1e-3) < epsilon_lower_bound(1000, 1000, 900, 0.0)
    assert epsilon_lower_bound(1000, 200, 190, 1e-5) < epsilon_lower_bound(1000, 200, 200, 1e-5)


def test_the_bound_is_valid_on_a_mechanism_that_is_exactly_eps_dp():
    """Randomised response at eps0 (each guess right with probability e^eps0/(1+e^eps0)) is
    eps0-DP: at 95% confidence the bound may exceed eps0 in about 5% of runs, no more."""
    rng = np.random.default_rng(0)
    eps0, r, runs = 1.0, 400, 200
    right = rng.binomial(r, 1 / (1 + math.exp(-eps0)), size=runs)
    bounds = np.array([epsilon_lower_bound(r, r, int(v), 0.0) for v in right])
    assert np.mean(bounds > eps0) <= 0.09 and np.median(bounds) > 0.3


def test_the_k_sweep_is_corrected_and_perfect_scores_reach_the_cap():
    rng = np.random.default_rng(1)
    included = rng.uniform(size=400) < 0.5
    perfect = guess_bound(included + 0.01 * rng.uniform(size=400), included, delta=1e-5)
    assert perfect["epsilon_lower"] == pytest.approx(perfect["epsilon_cap"], rel=0.2)
    assert perfect["epsilon_lower"] <= perfect["epsilon_lower_uncorrected"]
    noise = guess_bound(rng.uniform(size=400), included, delta=1e-5)
    assert noise["epsilon_lower"] < 0.5 and k_grid(400) == [3, 6, 12, 25, 50, 100, 200]


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ConfigError, match="correct <= guesses"):
        p_value(10, 5, 6, 1.0, 0.0)
    with pytest.raises(ConfigError, match="unknown audit knob"):
        settings(sigma=3)


# --- the audit on the micro model -----------------------------------------------------------------
def test_without_dp_the_audit_finds_a_large_lower_bound(micro_model_dir):
    """Positive control: sigma = 0 (clipping only). The coordinator holding the plaintext update
    and the global state tells the 500 canaries apart; the bound is near its cap (4.57 at m = 500)."""
    res = canary_audit(epsilon=None, model_dir=micro_model_dir, fast=True)
    assert res["epsilon_accounted"] == math.inf and res["sigma"] == 0.0
    assert res["auc"] > 0.95 and res["epsilon_lower"] > 3.0, res


def test_under_dp_the_audit_stays_below_the_accounted_epsilon(micro_model_dir):
    """Shipping DP-SGD at epsilon 1 (sigma from the ledger): the bound stays below the journaled
    epsilon. It can fail: without the noise the same audit gives about 3.9 (test above)."""
    res = canary_audit(epsilon=1.0, model_dir=micro_model_dir, fast=True)
    assert 0.9 < res["epsilon_accounted"] <= 1.0 and res["sigma"] > 3
    assert res["epsilon_lower"] <= res["epsilon_accounted"], res
    assert {"m", "guesses", "correct", "confidence", "steps", "seconds", "what_the_auditor_sees"} <= set(res)


def test_a_dp_sgd_whose_noise_is_too_small_is_caught(micro_model_dir, monkeypatch):
    """Broken mechanism, honest journal: the optimizer adds 1/100 of the noise the ledger planned
    for epsilon 1. The audit's lower bound then exceeds the journaled epsilon."""
    real = sgd.ChaChaDPOptimizer.add_noise

    def weak_noise(self):
        self.noise_multiplier /= 100
        try:
            return real(self)
        finally:
            self.noise_multiplier *= 100

    monkeypatch.setattr(sgd.ChaChaDPOptimizer, "add_noise", weak_noise)
    res = canary_audit(epsilon=1.0, model_dir=micro_model_dir, fast=True)
    assert res["epsilon_lower"] > res["epsilon_accounted"] + 1, res
