"""The spend journal and the ledger: hash chain, tamper detection, the anchor, the hard cap, bad input."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from secure_fcit.config import DPConfig, config_from_dict
from secure_fcit.dp.accounting import derive_noise_multiplier, prv_epsilon, rdp_epsilon
from secure_fcit.dp.journal import SpendJournal, read_journal
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.errors import BudgetExhausted, ConfigError, JournalError, PrivacyError

DP = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, max_grad_norm=1.0, sample_rate=0.4)  # q = 16/40


def _ledger(tmp_path, client="client-000", dp=DP):
    return PrivacyLedger(tmp_path, client, dp)


def _spend(ledger, rounds=3, n=40, planned=6):
    for r in range(rounds):
        ledger.charge(ledger.plan(0, r, n, 16, 2.0, planned))


def test_the_journal_chains_and_reads_back(tmp_path):
    led = _ledger(tmp_path)
    _spend(led)
    led.record_release(1, -1, "identity-token", n_samples=40)
    entries = read_journal(tmp_path / "client-000" / "journal.jsonl", "client-000")
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert [e["kind"] for e in entries] == ["dp-sgd"] * 3 + ["release"]
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    led.close()  # the folder is locked while a ledger is open (one ledger per folder)
    again = _ledger(tmp_path)  # a restart continues the same ledger
    assert again.history == led.history and again.rounds_charged == 3


@pytest.mark.parametrize("tamper, match", [
    (lambda lines: [lines[0].replace('"steps":', '"steps":1,"x":'), *lines[1:]], "edited|hash"),
    (lambda lines: [lines[0], lines[2]], "removed|sequence"),
    (lambda lines: [lines[1], lines[0], lines[2]], "sequence"),
    (lambda lines: [lines[0], lines[1][:-20], lines[2]], "not JSON"),
])
def test_an_edited_removed_or_reordered_line_is_detected(tmp_path, tamper, match):
    _spend(_ledger(tmp_path))
    path = tmp_path / "client-000" / "journal.jsonl"
    path.write_text("\n".join(tamper(path.read_text().splitlines())) + "\n")
    with pytest.raises(JournalError, match=match):
        _ledger(tmp_path)


def test_a_journal_cut_short_is_caught_by_the_anchor(tmp_path):
    _spend(_ledger(tmp_path))
    path = tmp_path / "client-000" / "journal.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")  # still a valid chain
    read_journal(path)
    with pytest.raises(JournalError, match="removed from its end"):
        _ledger(tmp_path)


def test_another_clients_journal_is_refused(tmp_path):
    _spend(_ledger(tmp_path, "client-001"))
    (tmp_path / "client-000").mkdir()
    for f in ("journal.jsonl", "accountant.json"):
        (tmp_path / "client-000" / f).write_bytes((tmp_path / "client-001" / f).read_bytes())
    with pytest.raises(JournalError, match="client-001"):
        _ledger(tmp_path, "client-000")


def test_a_crash_after_the_journal_write_over_counts(tmp_path):
    led = _ledger(tmp_path)
    plan = led.plan(0, 0, 40, 16, 2.0, 6)
    led.charge(plan)
    # the process dies here, before any step ran and before anything else was saved
    led.close()
    (tmp_path / "client-000" / "accountant.json").unlink()
    again = _ledger(tmp_path)
    assert again.history == [(plan.sigma, plan.q, plan.steps)]


def test_an_incomplete_last_line_is_not_silently_dropped(tmp_path):
    _spend(_ledger(tmp_path), rounds=1)
    path = tmp_path / "client-000" / "journal.jsonl"
    with open(path, "a") as f:
        f.write('{"v": 1, "seq": 1')
    with pytest.raises(JournalError, match="incomplete"):
        _ledger(tmp_path)


def test_sigma_is_derived_so_the_planned_rounds_spend_the_budget(tmp_path):
    led = _ledger(tmp_path)
    _spend(led, rounds=4, planned=4)
    eps = rdp_epsilon(led.history, DP.delta)
    assert 7.5 < eps <= 8.0
    sigmas = [s for s, _, _ in led.history]
    assert len(set(sigmas)) == 1  # a schedule fixed in advance: every participation runs the same mechanism
    # past the plan the same mechanism would cross the cap: refused (no filter re-derives sigma from the slack)
    with pytest.raises(BudgetExhausted, match="would bring epsilon to"):
        led.plan(0, 4, 40, 16, 2.0, 4)


def test_sigma_does_not_adapt_to_what_was_spent(tmp_path):
    """Finding: sigma chosen from the remaining budget makes an adaptive filter, and the minimum
    over RDP orders after the fact is not covered by Feldman-Zrnic's fixed-order filter. Two ledgers,
    one with a fixed-sigma round spent first: the next derived round has the same sigma in both."""
    fresh = _ledger(tmp_path / "fresh")
    spent = _ledger(tmp_path / "spent")
    spent.charge(spent.plan(0, 0, 40, 16, 2.0, 6))
    spent.charge(spent.plan(0, 1, 40, 16, 2.0, 6))
    assert spent.plan(0, 2, 40, 16, 2.0, 6).sigma == fresh.plan(0, 0, 40, 16, 2.0, 6).sigma


def test_a_fixed_sigma_round_over_the_cap_is_refused_and_not_journaled(tmp_path):
    led = _ledger(tmp_path, dp=DPConfig(enabled=True, epsilon=6.0, noise_multiplier=1.0, sample_rate=0.4))
    led.charge(led.plan(0, 0, 40, 16, 1.0, 1))  # 4.86 of 6
    n = len(led.journal)
    with pytest.raises(BudgetExhausted, match=r"spent 4.86\d of 6 .* would bring epsilon to"):
        led.plan(0, 1, 40, 16, 1.0, 1)
    assert len(led.journal) == n and rdp_epsilon(led.history, 1e-5) <= 6.0


def test_journaled_epsilon_equals_fresh_opacus_accountants(tmp_path):
    led = _ledger(tmp_path)
    _spend(led, rounds=2, n=40)
    _spend(led, rounds=2, n=100)
    entries = [e for e in read_journal(tmp_path / "client-000" / "journal.jsonl") if e["kind"] == "dp-sgd"]
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history = [(e["sigma"], e["q"], e["steps"]) for e in entries]
    prv.history = list(rdp.history)
    assert entries[-1]["eps_rdp"] == pytest.approx(rdp.get_epsilon(1e-5), abs=1e-6)
    assert entries[-1]["eps_prv"] == pytest.approx(prv.get_epsilon(1e-5, eps_error=0.05), abs=1e-6)
    assert prv_epsilon(rdp.history, 1e-5) <= rdp_epsilon(rdp.history, 1e-5)


def test_delta_must_be_below_one_over_the_dataset_size(tmp_path):
    with pytest.raises(PrivacyError, match=r"not < 1/\|D_k\| for this client") as info:
        _ledger(tmp_path, dp=DPConfig(enabled=True, delta=0.2)).plan(0, 0, 10, 16, 1.0, 4)
    assert "10" not in str(info.value)  # the refusal reaches the coordinator: it must not name n_k


@pytest.mark.parametrize("dp, match", [
    ({"epsilon": 0.0}, "dp.epsilon"), ({"epsilon": -1.0}, "dp.epsilon"), ({"delta": 1.0}, "dp.delta"),
    ({"noise_multiplier": -0.5}, "dp.noise_multiplier"), ({"max_grad_norm": 0.0}, "dp.max_grad_norm"),
    ({"accountant": "gdp"}, "dp.accountant"),
])
def test_bad_dp_settings_are_refused_by_name(dp, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"dp": {"enabled": True, **dp}})


def test_derivation_gives_up_when_the_budget_is_spent():
    assert derive_noise_multiplier([(0.5, 1.0, 500)], (0.0, 1.0, 10), 8.0, 1e-5) is None


def test_a_client_id_cannot_escape_the_ledger_folder(tmp_path):
    with pytest.raises(PrivacyError, match="cannot name"):
        _ledger(tmp_path, "../evil")


def test_the_anchor_is_written_atomically_and_names_the_head(tmp_path):
    led = _ledger(tmp_path)
    _spend(led, rounds=1)
    state = json.loads((tmp_path / "client-000" / "accountant.json").read_text())
    assert state["head"] == led.journal.head and state["entries"] == 1
    assert not list((tmp_path / "client-000").glob("*.tmp"))
    assert isinstance(SpendJournal(tmp_path / "client-000" / "journal.jsonl", "client-000").head, str)


def test_sigma_zero_is_no_privacy_and_the_cap_refuses_it(tmp_path):
    led = _ledger(tmp_path, dp=DPConfig(enabled=True, noise_multiplier=0.0))
    with pytest.raises(BudgetExhausted, match="inf"):
        led.plan(0, 0, 40, 16, 1.0, 1)


def test_per_task_accounting_charges_only_the_rounds_task_and_caps_the_largest(tmp_path):
    # A sample belongs to one task and enters only that task's rounds: a task's sigma is planned
    # from its own history, a round charges its tasks only, and the client's epsilon is the max.
    led = _ledger(tmp_path)
    for r in range(3):
        led.charge(led.plan(0, r, 40, 16, 2.0, {"a": 3, "b": 3}, ("a",)))
    eps_a = rdp_epsilon(led.task_histories()["a"], DP.delta)
    assert 7.5 < eps_a <= 8.0 and "b" not in led.task_histories()
    fresh = led.plan(1, 0, 40, 16, 2.0, {"a": 3, "b": 3}, ("b",))  # task b starts with its whole budget
    assert fresh.sigma == pytest.approx(led.history[0][0], rel=0.02)
    # task a returns past its plan: the same mechanism would cross the cap, so the round is refused
    with pytest.raises(BudgetExhausted, match="would bring epsilon to"):
        led.plan(2, 0, 40, 16, 2.0, {"a": 3, "b": 3}, ("a",))
    led.charge(fresh)
    entries = [e for e in read_journal(tmp_path / "client-000" / "journal.jsonl") if e["kind"] == "dp-sgd"]
    assert entries[-1]["tasks"] == ["b"] and entries[-1]["eps_rdp"] == pytest.approx(eps_a, abs=1e-9)
    assert led.spent()["rdp"] == pytest.approx(max(eps_a, rdp_epsilon(led.task_histories()["b"], DP.delta)))
    # a round on both tasks' samples charges both, with the sigma the longer-planned one needs
    other = _ledger(tmp_path / "both")
    both = other.plan(0, 0, 40, 16, 2.0, {"a": 3, "b": 9}, ("a", "b"))
    assert both.tasks == ("a", "b") and both.sigma == other.plan(0, 0, 40, 16, 2.0, 9).sigma
    other.charge(both)
    assert set(other.task_histories()) == {"a", "b"}
