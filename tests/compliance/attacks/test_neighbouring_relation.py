"""The neighbouring relation of the printed epsilon: add/remove one sample (threat_model.md §1).

Adversary: a curious coordinator that reads a client's sample count off what it receives, to tell
a dataset from its neighbour with one sample more. Under local DP-SGD the mechanism's parameters
(q, steps, divisor) are public constants and the update carries weight 1, so neighbours run the
same mechanism and send the same non-noised fields. The positive control runs the same coordinator
against a worker that weights its update by n_k (the non-private FedAvg weight), and reads n_k.
"""

from __future__ import annotations

import numpy as np

from secure_fcit.config import DPConfig, PrivacyConfig
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.fcit.dko import DKOConfig
from secure_fcit.fcit.learner import SlotLearner
from secure_fcit.protocols import Coordinator, Worker, layout, run_federation
from secure_fcit.protocols.factory import build_aggregation
from tests.compliance.attacks.test_secure_sum_attacks import RecordingOrganizer
from tests.unit.protocols._support import DIM, FED, SLOT, FakeLearner, ListSchedule, client

DP = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, sample_rate=0.25)


def test_neighbouring_datasets_run_the_same_local_dp_mechanism(tmp_path):
    """n and n + 1 samples: the same (sigma, q, steps, divisor) and the same journaled epsilon."""
    plans = []
    for n in (40, 41):
        with PrivacyLedger(tmp_path / str(n), "client-000", DP) as ledger:
            plans.append(ledger.plan(0, 0, n, 16, 2.0, 6))
    a, b = plans
    assert (a.sigma, a.q, a.steps, a.batch_size, a.eps_after) == (b.sigma, b.q, b.steps, b.batch_size, b.eps_after)
    assert a.q == DP.sample_rate and a.steps == 8  # round(local_epochs / q), from public values only


class DPFakeLearner(FakeLearner):
    """A DP learner's release rule: the FedAvg weight is 1, never n_k (`SlotLearner.update_weight`)."""

    def update_weight(self, stage: int) -> int:
        return 1


def _update_tails(learner_cls, samples: list[int]) -> list[np.ndarray]:
    ids = [client(i) for i in range(len(samples))]
    learners = {c: learner_cls(c, {0: 0}, samples=n) for c, n in zip(ids, samples, strict=True)}
    organizer = RecordingOrganizer(DIM, SLOT, DKOConfig(n_buckets=16))
    built = build_aggregation(PrivacyConfig(aggregation="plaintext"), ids, min_contributors=2)
    coordinator = Coordinator(FED, ListSchedule([ids], len(ids)), built.factory, organizer, SLOT, 1,
                              np.random.default_rng(0))
    workers = [Worker(FED, c, learners[c], built.clients[c], min_cohort=2) for c in ids]
    run_federation(coordinator, workers)
    updates = [a for a in organizer.seen if a.round_id.phase == "update"]
    assert updates, "no update sum completed"
    return [layout.split_update_sum(a.vector, 1, SLOT)[1] for a in updates]


def test_a_coordinator_cannot_read_a_dp_clients_sample_count_from_the_update_sum():
    """Curious coordinator on the plaintext sum (the strongest view: it sees the sum in the clear):
    with DP learners the per-slot weight column is the client count whatever n_k is; with the
    n_k-weighted worker (positive control) it is sum(n_k), so one sample more is visible."""
    for samples in ([10, 11], [10, 12]):
        assert all(np.allclose(t, [2.0]) for t in _update_tails(DPFakeLearner, samples))
    control = _update_tails(FakeLearner, [10, 11]), _update_tails(FakeLearner, [10, 12])
    assert np.allclose(control[0][0], [21.0]) and np.allclose(control[1][0], [22.0])


def test_the_slot_learner_weighs_a_private_update_by_one():
    learner = SlotLearner.__new__(SlotLearner)
    learner.samples, learner.privacy = {0: [object()] * 7}, None
    assert learner.update_weight(0) == 7
    learner.privacy = object()  # any ClientPrivacy: DP on
    assert learner.update_weight(0) == 1
