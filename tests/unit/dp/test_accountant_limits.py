"""Finding 10 (issue 20): the accountants neither crash nor stall a run. A sigma they cannot handle
is refused at load, naming the bound; where the PRV accountant cannot account a history it is
reported unavailable with the reason while RDP enforces the cap; the audit's cost stays bounded."""

from __future__ import annotations

import math
import time

import pytest

from secure_fcit.config import DPConfig
from secure_fcit.dp.accounting import PRV_MAX_DOMAIN, epsilon, prv_epsilon, prv_result, rdp_epsilon
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.dp.report import audit
from secure_fcit.errors import BudgetExhausted, ConfigError

BOUND = DPConfig.MIN_NOISE_MULTIPLIER


def test_sigma_0_01_is_refused_at_load_naming_the_bound():
    with pytest.raises(ConfigError, match=rf"dp.noise_multiplier = 0.01 .*bound {BOUND:g}"):
        DPConfig(enabled=True, noise_multiplier=0.01)
    DPConfig(enabled=True, noise_multiplier=BOUND)  # the bound itself is accepted
    DPConfig(enabled=True, noise_multiplier=0.0)  # clipping only (epsilon inf) stays allowed


@pytest.mark.parametrize("q", [1.0, 0.1, 0.01])
@pytest.mark.parametrize("delta", [1e-5, 1e-10])
def test_both_accountants_handle_one_step_at_the_bound(q, delta):
    res = prv_result([(BOUND, q, 1)], delta)
    assert res.reason is None and math.isfinite(res.epsilon)
    assert math.isfinite(rdp_epsilon([(BOUND, q, 1)], delta))


def test_below_the_bound_prv_is_unavailable_with_a_reason_not_an_exception():
    res = prv_result([(0.01, 1.0, 1)], 1e-5)  # Opacus raised "Discrete mean differs significantly" here
    assert res.epsilon is None and "half-width" in res.reason
    assert math.isnan(prv_epsilon([(0.01, 1.0, 1)], 1e-5))
    assert epsilon([(0.01, 1.0, 1)], 1e-5, "prv") == rdp_epsilon([(0.01, 1.0, 1)], 1e-5)  # RDP stands in


def test_a_grid_too_large_is_refused_in_bounded_time():
    t0 = time.perf_counter()
    res = prv_result([(2.0, 0.01, 10**7)], 1e-5)  # L ~ 500, but 1e8 grid points
    assert res.epsilon is None and str(PRV_MAX_DOMAIN) in res.reason
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_sigma_0_05_run_charges_without_a_crash_and_its_audit_is_bounded(tmp_path, accountant):
    dp = DPConfig(enabled=True, noise_multiplier=0.05, epsilon=1e9, accountant=accountant, sample_rate=0.5)
    with PrivacyLedger(tmp_path, "client-000", dp) as ledger:
        for r in range(4):  # 4 rounds of 8 steps at q = 0.5: PRV's domain is far past exp's range
            plan = ledger.plan(0, r, n_samples=32, batch_size=16, local_epochs=4, planned_rounds=4)
            entry = ledger.charge(plan)
            assert entry["eps_prv"] == "unavailable" and entry["eps_rdp"] == pytest.approx(
                rdp_epsilon(ledger.history, dp.delta))
    t0 = time.perf_counter()
    rep = audit(tmp_path, progress=False)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, elapsed
    (client,) = rep["clients"]
    assert client["epsilon"]["prv"] is None and "RDP applies" in client["prv_unavailable"]
    assert client["epsilon"]["rdp"] == pytest.approx(rdp_epsilon(ledger.history, dp.delta))
    assert client["mismatches"] == [] and not client["over_budget"]


def test_prv_unavailable_the_cap_is_enforced_under_rdp(tmp_path):
    """accountant = "prv" with PRV unavailable: the cap still holds, under RDP."""
    rdp_after = rdp_epsilon([(0.05, 0.5, 8)], 1e-5)  # about 1811
    dp = DPConfig(enabled=True, noise_multiplier=0.05, epsilon=1e4, accountant="prv", sample_rate=0.5)
    with PrivacyLedger(tmp_path / "a", "client-000", dp) as ledger:
        plan = ledger.plan(0, 0, n_samples=32, batch_size=16, local_epochs=4, planned_rounds=1)
        assert plan.eps_after == pytest.approx(rdp_after)
    tight = DPConfig(enabled=True, noise_multiplier=0.05, epsilon=1000.0, accountant="prv", sample_rate=0.5)
    with PrivacyLedger(tmp_path / "b", "client-000", tight) as ledger:
        with pytest.raises(BudgetExhausted, match=f"{rdp_after:.3f}"):
            ledger.plan(0, 0, n_samples=32, batch_size=16, local_epochs=4, planned_rounds=1)
