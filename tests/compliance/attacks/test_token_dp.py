"""Token-phase DP (threat_model.md §1): the identity token, its count, its block and every slot
choice come from one accounted Gaussian mechanism on (S, n).

Adversary: a malicious coordinator that puts the target alone in its token block (the target's
task differs from everyone else's), and reads the block off the plaintext token sum, its strongest
view: without token DP that block is the target's exact count n_k and exact token (the positive
control); with it, the count and direction carry the mechanism's noise, charged to the target's
journal before the noise was drawn.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from secure_fcit.config import DPConfig, PrivacyConfig
from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.accounting import rdp_epsilon
from secure_fcit.dp.client import ClientPrivacy, noisy_sum
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.dp.report import audit
from secure_fcit.errors import BudgetExhausted, ConfigError
from secure_fcit.fcit.dko import DKOConfig
from secure_fcit.fcit.learner import SlotLearner
from secure_fcit.model.encoder import mean_token
from secure_fcit.protocols import Coordinator, Worker, layout, run_federation
from secure_fcit.protocols.factory import build_aggregation
from tests.compliance.attacks.test_secure_sum_attacks import RecordingOrganizer
from tests.unit.protocols._support import DIM, FED, SLOT, ListSchedule, client, task_token

DP = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, sample_rate=0.5)
# chi-square bounds (two-sided) for the degrees of freedom used below: 99.9 % where the noise is
# the production path's fresh os.urandom key, 99 % where the test fixes the ChaCha20 key
_CHI2 = {
    60: (30.34, 102.69),
    16 * 400: (6112.3, 6695.2),
    400: (330.9, 476.6),
}


class FakeEncoder:
    """Unit embeddings: each instruction "task:i" is the task's vector plus per-sample jitter."""

    dim = DIM

    def encode(self, texts):
        rows = []
        for text in texts:
            task, i = text.split(":")
            v = task_token(int(task)) + 0.6 * np.random.default_rng(int(i) + 7919 * int(task)).standard_normal(DIM) / 4
            rows.append(v / np.linalg.norm(v))
        return np.array(rows, dtype=np.float32)


class TokenLearner(SlotLearner):
    """The real SlotLearner token path (identity_token, token_weight, refuse_reason); its rounds
    return a zero update so that no model is needed."""

    def __init__(self, client_id: str, task: int, n: int, privacy: ClientPrivacy | None) -> None:
        super().__init__(client_id, None, FakeEncoder(), {0: [object()] * n},
                         {0: [f"{task}:{i}" for i in range(n)]}, None, 0, 0, privacy=privacy)

    def train(self, stage, round, slot, weights):
        return np.zeros_like(np.asarray(weights, dtype=np.float32))


def _isolating_run(tmp_path, dp: bool, n_target: int = 30) -> tuple[float, np.ndarray] | None:
    """One federation: the target (task 5) and 3 others of task 0. Returns the count and the
    token the coordinator reads in the target's block when the target sits alone in it (None
    when its noisy token shared a block: the coordinator then holds a mixture, which gives it less)."""
    ids = [client(i) for i in range(4)]
    tasks, sizes = {ids[0]: 5}, {ids[0]: n_target}
    privacies = {c: (ClientPrivacy(tmp_path / "privacy", c, DP, batch_size=4, local_epochs=1.0, lr=0.1,
                                   planned_rounds=1) if dp else None) for c in ids}
    learners = {c: TokenLearner(c, tasks.get(c, 0), sizes.get(c, 40), privacies[c]) for c in ids}
    organizer = RecordingOrganizer(DIM, SLOT, DKOConfig(n_buckets=16, policy="allow"))
    built = build_aggregation(PrivacyConfig(aggregation="plaintext"), ids, min_contributors=2)
    coordinator = Coordinator(FED, ListSchedule([ids], 4), built.factory, organizer, SLOT, 1,
                              np.random.default_rng(0))
    run_federation(coordinator, [Worker(FED, c, learners[c], built.clients[c], min_cohort=2) for c in ids])
    for p in privacies.values():
        if p is not None:
            p.close()
    (token_sum,) = [a for a in organizer.seen if a.round_id.phase == "token"]
    sums, samples, counts = layout.split_token_sum(token_sum.vector, 16, DIM)
    mine = learners[ids[0]].token_weight(0)
    alone = [b for b in np.flatnonzero(counts == 1) if abs(samples[b] - mine) < 1e-9]
    if not alone:
        return None
    (b,) = alone
    return float(samples[b]), sums[b] / samples[b]


def test_positive_control_without_token_dp_the_coordinator_reads_the_exact_count_and_token(tmp_path):
    count, token = _isolating_run(tmp_path, dp=False)
    exact = mean_token(FakeEncoder(), [f"5:{i}" for i in range(30)])
    assert count == 30.0
    assert np.allclose(token, exact, atol=1e-6)


def test_a_coordinator_isolating_a_client_reads_only_the_noisy_count_and_token(tmp_path):
    """60 runs where the target sat alone: the count in its block is n + N(0, token_count_sigma^2)
    (chi-square at 99.9 %), never the exact n; the direction is never the exact token. Every run
    journaled the target's token mechanism, once, before the upload."""
    exact = mean_token(FakeEncoder(), [f"5:{i}" for i in range(30)])
    counts, cosines, attempts = [], [], 0
    while len(counts) < 60 and attempts < 120:
        run = tmp_path / str(attempts)
        attempts += 1
        seen = _isolating_run(run, dp=True)
        kinds = [json.loads(x)["kind"] for x in (run / "privacy" / client(0) / "journal.jsonl").read_text().splitlines()]
        assert kinds[0] == "token" and kinds.count("token") == 1
        if seen is not None:
            counts.append(seen[0])
            cosines.append(float(seen[1] @ exact / np.linalg.norm(seen[1])))
    assert len(counts) == 60, f"the target sat alone in only {len(counts)} of {attempts} runs"
    z = (np.array(counts) - 30.0) / DP.token_count_sigma
    lo, hi = _CHI2[60]
    assert lo <= float(z @ z) <= hi
    assert not any(c == 30.0 for c in counts)
    assert max(cosines) < 0.99999 and np.mean(cosines) > 0.5  # noisy, yet still the task's direction


def test_the_token_noise_has_the_accounted_variance():
    """(S + N(0, sigma_S^2 I), n + N(0, sigma_n^2)) with rows clipped to norm 1 (chi-square at 99 %,
    fixed keys);
    the two stds give the accounted noise multiplier, whose one release spends the configured share."""
    emb = np.vstack([np.eye(DIM)[:8] * 3.0, FakeEncoder().encode([f"1:{i}" for i in range(12)])])
    s_exact = (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1.0)).sum(axis=0)
    sigma, count_sigma = DP.token_sigma, DP.token_count_sigma
    assert abs(1 / (1 / sigma**2 + 1 / count_sigma**2) ** 0.5 - DP.token_noise_multiplier) < 1e-12
    one = rdp_epsilon([(DP.token_noise_multiplier, 1.0, 1)], DP.delta)
    assert 0.99 * DP.token_epsilon_share * DP.epsilon <= one <= DP.token_epsilon_share * DP.epsilon
    draws = [noisy_sum(emb, sigma, count_sigma, ChaCha20PRG(bytes([k % 256, k // 256]) * 16)) for k in range(400)]
    zs = np.array([(s - s_exact) / sigma for s, _ in draws]).ravel()
    zn = np.array([(n - 20.0) / count_sigma for _, n in draws])
    assert _CHI2[16 * 400][0] <= float(zs @ zs) <= _CHI2[16 * 400][1]
    assert _CHI2[400][0] <= float(zn @ zn) <= _CHI2[400][1]


def test_the_noise_is_drawn_after_the_charge_is_journaled(tmp_path):
    seen = []

    def prg(stage, round):
        seen.append([json.loads(x)["kind"] for x in
                     (tmp_path / "client-000" / "journal.jsonl").read_text().splitlines()])
        return ChaCha20PRG()

    privacy = ClientPrivacy(tmp_path, "client-000", DP, batch_size=4, local_epochs=1.0, lr=0.1, planned_rounds=2,
                            noise_prg=prg)
    token, count = privacy.noisy_token(0, FakeEncoder().encode([f"2:{i}" for i in range(25)]))
    assert seen == [["token"]] and abs(float(np.linalg.norm(token)) - 1.0) < 1e-9 and count >= 1.0
    privacy.close()


def test_sigma_is_derived_with_the_token_releases_in_the_schedule_and_the_audit_recomputes(tmp_path, caplog):
    """One token release plus the planned rounds spend at most the target; sigma is larger than
    without the token; the audit recomputes every entry (mismatch 0) and agrees with the journal
    to 1e-6; dp-accounting's RDP and PLD accountants agree within 2 %."""
    dp_accounting = pytest.importorskip("dp_accounting")
    caplog.set_level(logging.ERROR)
    with PrivacyLedger(tmp_path, "client-000", DP) as ledger:
        without = ledger.plan(0, 0, 40, 16, 1.0, 3, token_stages=0).sigma
        ledger.charge_token(0, 40)
        plans = [ledger.plan(0, r, 40, 16, 1.0, 3, token_stages=1) for r in range(3)]
        for plan in plans:
            ledger.charge(plan)
        spent = ledger.spent()
    sigma = plans[0].sigma
    assert sigma > without
    assert 7.5 < spent["rdp"] <= DP.epsilon
    rep = audit(tmp_path, progress=False)
    (c,) = rep["clients"]
    assert c["status"] == "verified" and c["mismatches"] == []
    assert abs(c["epsilon"]["rdp"] - spent["rdp"]) < 1e-6
    assert c["stages"][0]["rounds"] == 3  # the token release is not counted as a training round
    assert [r["mechanism"] for r in c["rounds"]] == ["gaussian-token"] + ["gaussian"] * 3
    history = [(DP.token_noise_multiplier, 1.0, 1)] + [(sigma, DP.sample_rate, 2)] * 3
    assert abs(rdp_epsilon(history, DP.delta) - spent["rdp"]) < 1e-9
    from dp_accounting import pld, rdp
    from opacus.accountants import RDPAccountant

    event = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(DP.token_noise_multiplier)]
        + [dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            DP.sample_rate, dp_accounting.GaussianDpEvent(sigma)), 2)] * 3)
    ref = rdp.RdpAccountant(orders=[float(a) for a in RDPAccountant.DEFAULT_ALPHAS])
    ref.compose(event)
    assert abs(spent["rdp"] / ref.get_epsilon(DP.delta) - 1) < 0.02
    ref_pld = pld.PLDAccountant(value_discretization_interval=1e-3)
    ref_pld.compose(event)
    assert abs(spent["prv"] / ref_pld.get_epsilon(DP.delta) - 1) < 0.02


def test_a_token_release_over_the_cap_is_refused_with_the_numbers(tmp_path):
    """Each release alone spends 0.9 of epsilon: the second one of the task is refused."""
    tight = DPConfig(enabled=True, epsilon=0.5, delta=1e-5, token_epsilon_share=0.9)
    with PrivacyLedger(tmp_path, "client-000", tight) as ledger:
        ledger.charge_token(0, 40)
        with pytest.raises(BudgetExhausted, match=r"identity token .* epsilon to [0-9.]+ of 0.5"):
            ledger.charge_token(1, 40)
        assert len(ledger.journal) == 1  # the refused release journaled nothing (and is never drawn)


@pytest.mark.parametrize("key, value", [("token_epsilon_share", 0.0), ("token_count_ratio", float("nan")),
                                        ("token_epsilon_share", 1.5)])
def test_token_noise_that_is_off_or_unusable_is_refused_at_load(key, value):
    with pytest.raises(ConfigError, match=f"dp.{key}"):
        DPConfig(enabled=True, **{key: value})


def test_a_token_share_no_noise_can_meet_is_refused_at_load():
    with pytest.raises(ConfigError, match="no token noise multiplier up to 100"):
        DPConfig(enabled=True, epsilon=0.05, token_epsilon_share=0.01)


def test_one_account_over_the_stream_plans_a_token_per_stage(tmp_path):
    """per_task = False: sigma is sized for a token in each stage the client holds data in."""
    privacy = ClientPrivacy(tmp_path, "client-000", DP, batch_size=4, local_epochs=1.0, lr=0.1, planned_rounds=6,
                            token_stages=3)
    assert privacy.token_stages == 3
    privacy.close()
    per_task = ClientPrivacy(tmp_path / "b", "client-000", DP, batch_size=4, local_epochs=1.0, lr=0.1,
                             planned_rounds={"a": 2, "b": 4}, tasks={0: ("a",), 1: ("b",), 2: ("b",)})
    assert per_task.token_stages == {"a": 1, "b": 2}
    per_task.close()


def test_the_audit_flags_token_noise_that_is_not_the_noise_accounted(tmp_path):
    """A token entry whose journaled stds give another noise multiplier than the one it accounts
    (a derivation that drifted) is a mismatch in the audit."""
    with PrivacyLedger(tmp_path, "client-000", DP) as ledger:
        ledger.charge_token(0, 40)
        entry = dict(ledger.journal.entries[-1])
        fields = {k: v for k, v in entry.items() if k not in ("v", "seq", "client", "prev", "hash", "sig")}
        ledger._append(fields | {"stage": 1, "token_sigma": entry["token_sigma"] / 2})
    (c,) = audit(tmp_path, progress=False)["clients"]
    assert c["status"] == "verified"
    assert any("token noise" in m for m in c["mismatches"]) and len(c["mismatches"]) >= 1
