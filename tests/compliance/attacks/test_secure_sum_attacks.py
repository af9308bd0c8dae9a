"""Attacks on the secure sum by a lying coordinator, colluding clients and a malicious member.

Each test plays one named adversary with the project's own classes plus one adversarial subclass
or message, and asserts on what the adversary ends up holding: the recovered vector is far from
the target's (relative error >= 0.5), or the step was refused with a logged reason. Where it makes
sense a positive control runs the same attack against the old behaviour, to show the test can fail.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from secure_fcit.config import Config, PrivacyConfig, ScenarioConfig
from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.fcit.dko import DKOConfig, DKOOrganizer
from secure_fcit.protocols import Coordinator, RoundStart, StageStart, Worker, layout, run_federation
from secure_fcit.protocols.aggregation import AggregationRound
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.factory import build_aggregation
from secure_fcit.protocols.secagg import (
    MaskingAggregator,
    MaskingClient,
    MaskingParams,
    UnmaskRequest,
    make_identities,
    neighbour_graph,
)
from tests.unit.protocols._support import DIM, FED, SLOT, FakeLearner, ListSchedule, client, delta_value

TARGET = client(2)


def _rel_error(recovered: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(recovered - target) / np.linalg.norm(target))


class RecordingOrganizer(DKOOrganizer):
    """Test instrument (not an adversary): keeps every aggregate the coordinator hands over."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list = []

    def plan(self, stage, aggregate, **kw):
        self.seen.append(aggregate)
        return super().plan(stage, aggregate, **kw)

    def apply(self, stage, round, aggregate, **kw):
        self.seen.append(aggregate)
        return super().apply(stage, round, aggregate, **kw)


class DifferencingCoordinator(Coordinator):
    """Malicious coordinator: completes attempt 0 of a phase, keeps its sum, declares the attempt
    aborted and re-runs the phase without the target, to subtract the two sums."""

    def __init__(self, *args, target: str, phase: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target, self.phase, self.sums = target, phase, []

    def _grab(self, aggregate) -> list | None:
        self.sums.append(aggregate.vector.copy())
        if len(self.sums) == 1:  # pretend the sum failed: retry without the target
            self._without_target = True
            return self._abort_phase("pretended dropout")
        return None

    def _planned(self, aggregate):
        if self.phase == "token":
            out = self._grab(aggregate)
            if out is not None:
                return out
        return super()._planned(aggregate)

    def _applied(self, aggregate):
        if self.phase == "update":
            out = self._grab(aggregate)
            if out is not None:
                return out
        return super()._applied(aggregate)


class _DropTarget:
    """The coordinator's schedule after it decided to leave the target out."""

    def __init__(self, inner, coordinator) -> None:
        self.inner, self.coordinator = inner, coordinator
        self.n_stages = inner.n_stages

    def members(self, stage):
        members = tuple(self.inner.members(stage))
        if getattr(self.coordinator, "_without_target", False):
            return tuple(m for m in members if m != self.coordinator.target)
        return members

    def cohort(self, stage, round, rng):
        members = self.members(stage)
        return tuple(sorted(members))


class ForgetfulWorker(Worker):
    """The old worker, for the positive control: it keeps no release marks."""

    def _on_release(self, round_id: AggregationRound) -> None:
        return None


def _federation(n: int, *, phase: str, aggregation: str = "masking", worker_cls=Worker, min_cohort: int = 2,
                coordinator_cls=DifferencingCoordinator, **coordinator_kw):
    ids = [client(i) for i in range(n)]
    learners = {c: FakeLearner(c, {0: 0}, samples=10 + i) for i, c in enumerate(ids)}
    organizer = RecordingOrganizer(DIM, SLOT, DKOConfig(n_buckets=16))
    built = build_aggregation(PrivacyConfig(aggregation=aggregation), ids, min_contributors=2)
    schedule = ListSchedule([ids], n)
    if coordinator_cls is DifferencingCoordinator:
        coordinator_kw = {"target": TARGET, "phase": phase} | coordinator_kw
    coordinator = coordinator_cls(FED, schedule, built.factory, organizer, SLOT, 1, np.random.default_rng(0),
                                  **coordinator_kw)
    if coordinator_cls is DifferencingCoordinator:
        coordinator.schedule = _DropTarget(schedule, coordinator)
    workers = [worker_cls(FED, c, learners[c], built.clients[c], min_cohort=min_cohort) for c in ids]
    return coordinator, workers, learners, organizer


def _collapse(vector: np.ndarray) -> np.ndarray:
    """A token-phase vector summed over its blocks: [sum n_k * mu_k, sum n_k, clients]."""
    return vector.reshape(-1, DIM + 2).sum(axis=0)


def _target_token_vector(learner: FakeLearner) -> np.ndarray:
    token = learner.identity_token(0)
    block = layout.token_block(token, np.zeros((0, DIM)), 0.9,
                               layout.simhash_planes(layout.public_hash_seed(FED, 0, 0), 16, DIM))
    return layout.token_vector(token, learner.num_samples(0), block, 16)


@pytest.mark.parametrize("aggregation", ["masking", "plaintext"])
def test_a_coordinator_rerunning_a_completed_token_phase_without_the_target_learns_nothing(aggregation):
    """Malicious coordinator, no colluders: it completes the token phase, declares it aborted and
    re-runs it without the target. Every honest client marked its token released before its unmask
    shares (plaintext: before its upload) and refuses to send it into a second sum, so no second
    sum exists to subtract; the refusals are logged with the reason."""
    coordinator, workers, learners, _ = _federation(6, phase="token", aggregation=aggregation)
    history = run_federation(coordinator, workers)
    assert len(coordinator.sums) == 1, "a second token sum over released tokens completed"
    refusals = [e["reason"] for e in history.events if e["event"] == "refusal" and e["attempt"] == 1]
    # (with plaintext the retry aborts once 4 of 5 refused; the 5th refusal then arrives late)
    assert len(refusals) >= 4 and all("never released twice" in r for r in refusals)
    assert any(e["event"] == "aborted" and e["attempt"] == 1 for e in history.events)


def test_positive_control_without_release_marks_the_differencing_recovers_the_token():
    """The same attack against workers that keep no release marks (the behaviour this closes)
    recovers the target's token vector exactly: the test above can fail."""
    coordinator, workers, learners, _ = _federation(6, phase="token", worker_cls=ForgetfulWorker)
    run_federation(coordinator, workers)
    assert len(coordinator.sums) == 2
    # The SimHash seed changes with the attempt, so tokens move between buckets; the sum over all
    # blocks does not: it is the target's n_k * mu_k and n_k.
    recovered = _collapse(coordinator.sums[0]) - _collapse(coordinator.sums[1])
    assert _rel_error(recovered, _collapse(_target_token_vector(learners[TARGET]))) < 1e-4


def test_a_coordinator_rerunning_a_completed_round_gets_no_second_sum_of_the_same_updates():
    """Malicious coordinator: the same differencing on a training round. Without fresh DP noise a
    released update is never sent again, so the retry has no inputs to subtract."""
    coordinator, workers, learners, _ = _federation(6, phase="update")
    history = run_federation(coordinator, workers)
    assert len(coordinator.sums) == 1
    refusals = [e["reason"] for e in history.events if e["event"] == "refusal" and e["round"] == 0]
    assert refusals and all("was released in attempt 0" in r for r in refusals)


class NoisyLearner(FakeLearner):
    """Stands for a DP learner: every ``train`` adds fresh Gaussian noise (std ``sigma`` per
    coordinate, keyed by ``os.urandom``) and counts as a new charge to the ledger."""

    sigma: float = 1.0
    charges: int = 0

    def train(self, stage, round, slot, weights):
        self.charges += 1
        delta = super().train(stage, round, slot, weights)
        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        return (delta + self.sigma * rng.standard_normal(delta.shape)).astype(np.float32)


def test_a_rerun_round_gets_fresh_dp_updates_that_hide_the_target_and_are_charged_again():
    """Malicious coordinator against DP clients: it may re-run a completed round without the
    target, but each client that released its update retrains with fresh noise and pays for it
    again, so the difference of the two sums is the target's update buried in the others' noise
    (relative error >= 0.5), and every retrained update was charged twice."""
    coordinator, workers, _, _ = _federation(6, phase="update")
    learners = {w.client_id: NoisyLearner(w.client_id, {0: 0}, samples=10 + i) for i, w in enumerate(workers)}
    for worker in workers:
        worker.learner = learners[worker.client_id]
        worker.learner.fresh_randomness = True
    run_federation(coordinator, workers)
    assert len(coordinator.sums) == 2
    n_target = learners[TARGET].num_samples(0)
    target = np.full(SLOT, n_target * delta_value(TARGET, 0, 0))
    recovered = (coordinator.sums[0] - coordinator.sums[1])[:SLOT]
    assert _rel_error(recovered, target) >= 0.5
    assert all(learners[c].charges == 2 for c in learners if c != TARGET)


class LayoutBreaker(MaskingClient):
    """Malicious member: in attempt 0 of the token phase it writes a client count of 0.5, so the
    organizer refuses an aggregate the coordinator already holds; later it behaves."""

    def begin(self, round_id, cohort, vector, upload):
        if round_id.phase == "token" and round_id.stage == 0 and round_id.attempt == 0:
            vector = np.array(vector, copy=True)
            vector[DIM + 1 :: DIM + 2] += 0.5 / vector[DIM + 1 :: DIM + 2].size
        return super().begin(round_id, cohort, vector, upload)


def test_one_malicious_client_cannot_make_the_honest_coordinator_hold_two_token_sums():
    """A malicious member against the honest Coordinator: it spoils attempt 0's count layout so the
    organizer refuses an aggregate that already exists. The phase is then skipped, not retried, so
    the organizer never holds two sums that differ by one client's token."""
    ids = [client(i) for i in range(6)]
    learners = {c: FakeLearner(c, {0: 0, 1: 0}, samples=10 + i) for i, c in enumerate(ids)}
    organizer = RecordingOrganizer(DIM, SLOT, DKOConfig(n_buckets=16))
    built = build_aggregation(PrivacyConfig(), ids, min_contributors=2)
    bad = client(5)
    built.clients[bad].__class__ = LayoutBreaker
    coordinator = Coordinator(FED, ListSchedule([ids, ids], 6), built.factory, organizer, SLOT, 1,
                              np.random.default_rng(0))
    workers = [Worker(FED, c, learners[c], built.clients[c]) for c in ids]
    history = run_federation(coordinator, workers)
    token_sums = [a for a in organizer.seen if a.round_id.phase == "token" and a.round_id.stage == 0]
    assert len(token_sums) == 1
    aborted = [e for e in history.events if e["event"] == "aborted" and e["stage"] == 0]
    assert aborted and "organizer refused the aggregate" in aborted[0]["reason"]
    assert [e["stage"] for e in history.events if e["event"] == "stage-skipped"] == [0]
    assert not any(e["event"] == "retry" and e["stage"] == 0 for e in history.events)


def test_attempt_numbers_beyond_the_workers_bound_are_refused():
    """Malicious coordinator: re-running a phase under ever higher attempt numbers (to draw new
    randomness each time) is refused past the worker's own ``max_attempt``."""
    learner = FakeLearner(client(0), {0: 0})
    built = build_aggregation(PrivacyConfig(aggregation="plaintext"), [client(0), client(1)])
    worker = Worker(FED, client(0), learner, built.clients[client(0)], max_attempt=4)
    start = StageStart(federation_id=FED, stage=0, round=-1, attempt=133, sender="coordinator",
                       tokens=np.zeros((0, DIM), np.float32), hash_seed=layout.public_hash_seed(FED, 0, 133),
                       n_buckets=16, tau=0.9, cohort=(client(0), client(1)), aggregation="plaintext")
    with pytest.raises(RemoteProtocolError, match="exceeds this worker's max_attempt 4"):
        worker.receive(start)


# --------------------------------------------------------------------------- attack 2: tiny cohorts
def test_a_cohort_of_the_target_and_one_colluder_is_refused_by_the_clients_own_floor():
    """Malicious coordinator with one colluding client: a round cohort of {target, colluder} would
    give the target's exact update (sum minus the colluder's). The target enforces its own
    ``privacy.min_cohort`` and refuses; no sum is released."""
    coordinator, workers, learners, organizer = _federation(
        6, phase="update", min_cohort=5, coordinator_cls=Coordinator)
    coordinator.schedule = ListSchedule([[client(i) for i in range(6)]], 2)  # the coordinator picks pairs
    history = run_federation(coordinator, workers)
    assert not [a for a in organizer.seen if a.round_id.phase == "update"]
    reasons = [e["reason"] for e in history.events if e["event"] == "refusal" and e["round"] == 0]
    assert reasons and all("below this client's floor of 5" in r for r in reasons)


def test_positive_control_a_pair_cohort_gives_the_target_update_when_the_floor_is_two():
    """The same pair cohort with a floor of 2 (the old behaviour) completes, and the colluder
    subtracts its own update: the test above can fail."""
    coordinator, workers, learners, organizer = _federation(
        6, phase="update", min_cohort=2, coordinator_cls=Coordinator)
    coordinator.schedule = ListSchedule([[client(i) for i in range(6)]], 2)
    run_federation(coordinator, workers)
    (update,) = [a for a in organizer.seen if a.round_id.phase == "update"]
    assert len(update.contributors) == 2


def test_shipped_defaults_need_cohorts_of_five_and_configs_below_the_floor_are_refused():
    """The floor is the client's own configuration: 5 by default; a stream whose rounds are smaller
    is refused at load, naming both numbers."""
    assert PrivacyConfig().min_cohort == 5
    with pytest.raises(ConfigError, match=r"privacy.min_cohort \(5\) exceeds scenario.clients_per_round \(3\)"):
        Config(scenario=ScenarioConfig(clients_per_round=3))


# --------------------------------------------------------------------------- attack 3: parameters
@pytest.mark.parametrize(
    ("change", "named"),
    [({"n_buckets": 1 << 20}, "n_buckets 1048576"), ({"tau": 0.2}, "tau 0.2"),
     ({"hash_seed": bytes(32)}, "SimHash seed")],
)
def test_stage_start_parameters_that_differ_from_the_workers_configuration_are_refused(change, named):
    """Malicious coordinator: 2^20 buckets, a low tau or a chosen SimHash seed would put a client
    alone in its token block, i.e. in the clear in the sum. The worker compares each with its own
    configuration and refuses, naming the parameter."""
    learner = FakeLearner(client(0), {0: 0})
    built = build_aggregation(PrivacyConfig(aggregation="plaintext"), [client(0), client(1)])
    worker = Worker(FED, client(0), learner, built.clients[client(0)], n_buckets=16, tau=0.9)
    fields = dict(federation_id=FED, stage=0, round=-1, attempt=0, sender="coordinator",
                  tokens=np.zeros((0, DIM), np.float32), hash_seed=layout.public_hash_seed(FED, 0, 0),
                  n_buckets=16, tau=0.9, cohort=(client(0), client(1)), aggregation="plaintext")
    with pytest.raises(RemoteProtocolError, match=named):
        worker.receive(StageStart(**(fields | change)))


def test_every_sum_counts_the_clients_alone_in_a_block():
    """What the coordinator sees of a client alone in its block is that client's own vector. Every
    sum records how many such blocks it had (``singleton_blocks`` in the events); here counted
    again by hand from the per-task tokens."""
    ids = [client(i) for i in range(6)]
    tasks = {c: (0 if i < 4 else 10 + i) for i, c in enumerate(ids)}  # two clients alone in a task
    learners = {c: FakeLearner(c, {0: tasks[c]}) for c in ids}
    organizer = RecordingOrganizer(DIM, SLOT, DKOConfig(n_buckets=16, policy="allow"))
    built = build_aggregation(PrivacyConfig(), ids, min_contributors=2)
    coordinator = Coordinator(FED, ListSchedule([ids], 6), built.factory, organizer, SLOT, 1,
                              np.random.default_rng(0))
    workers = [Worker(FED, c, learners[c], built.clients[c]) for c in ids]
    history = run_federation(coordinator, workers)
    (planned,) = [e for e in history.events if e["event"] == "planned"]
    planes = layout.simhash_planes(layout.public_hash_seed(FED, 0, 0), 16, DIM)
    blocks = [layout.token_block(learners[c].identity_token(0), np.zeros((0, DIM)), 0.9, planes) for c in ids]
    by_hand = sum(1 for b in set(blocks) if blocks.count(b) == 1)
    assert planned["singleton_blocks"] == by_hand >= 1
    assert all("singleton_blocks" in e for e in history.events if e["event"] == "applied")


# --------------------------------------------------------------------------- attack 4: split view
def test_a_threshold_a_split_view_could_beat_is_refused_at_load_and_by_the_clients():
    """Malicious coordinator with one colluder: with threshold 0.5 and 9 clients, t = 5 and a view
    split between the target's holders needs only 2t - |N| = 1 colluder. Refused at load and by
    every client's own parameters."""
    with pytest.raises(ConfigError, match=r"t = 5, and 1 colluder\(s\) need t > \(\|N\| \+ c\)/2 = 5"):
        Config(privacy=PrivacyConfig(threshold=0.5, min_cohort=9),
               scenario=ScenarioConfig(clients_per_round=9, n_clients=50))
    identities, directory = make_identities([client(i) for i in range(9)])
    masking = MaskingClient(identities[client(0)], directory, MaskingParams(threshold=0.5))
    rid = AggregationRound(FED, 0, 0, 0, "update")
    with pytest.raises(LocalProtocolError, match="refusing this secure sum"):
        masking.begin(rid, sorted(directory), np.zeros(4), lambda payload, encoding: None)


def test_a_degree_too_small_for_the_colluder_bound_is_refused():
    """Malicious coordinator with 3 colluders among a degree-4 neighbourhood: refused at load
    (the rule assumes the colluders sit wherever suits the coordinator)."""
    with pytest.raises(ConfigError, match="privacy.degree 4 is too small"):
        MaskingParams(degree=4, colluders=3)
    MaskingParams(degree=4, colluders=1)  # 4 > (5 + 1)/2


def test_the_graph_does_not_change_with_the_attempt_number():
    """Malicious coordinator grinding attempt numbers for a favourable neighbour graph: the graph's
    seed leaves the attempt out, so every attempt of a phase draws the same graph."""
    from secure_fcit.protocols.secagg import _Round

    ids = [f"c{i:03d}" for i in range(100)]
    params = MaskingParams(degree=8)
    graphs = {a: _Round(AggregationRound(FED, 0, 0, a, "update"), ids, params).graph for a in (0, 1, 133)}
    assert graphs[0] == graphs[1] == graphs[133]
    assert graphs[0] != neighbour_graph(ids, b"another round", 8)


class NonNeighbourSignatures(MaskingAggregator):
    """Malicious coordinator: forwards only signatures from outside each client's neighbourhood,
    which say nothing about what that client's share holders were told."""

    def _after_consistency(self, answered):
        out = super()._after_consistency(answered)
        rnd = self._rnd
        forged = []
        for recipient, message in out:
            if not isinstance(message, UnmaskRequest):
                forged.append((recipient, message))
                continue
            keep = [i for i, s in enumerate(message.signers) if s not in rnd.closed(recipient)]
            forged.append((recipient, UnmaskRequest(
                federation_id=message.federation_id, stage=message.stage, round=message.round,
                attempt=message.attempt, sender=message.sender, survivors=message.survivors,
                signers=tuple(message.signers[i] for i in keep), signatures=message.signatures[keep])))
        return forged


def test_signatures_from_outside_the_neighbourhood_do_not_count():
    """Malicious coordinator: with a degree-4 graph over 12 clients, each client's unmask request
    carries only non-neighbours' signatures (7 of them, more than t = 4). Every client refuses to
    reveal a share, so nothing is unmasked."""
    ids = [client(i) for i in range(12)]
    identities, directory = make_identities(ids)
    params = MaskingParams(degree=4)
    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
    vectors = {c: np.full(8, float(i + 1)) for i, c in enumerate(ids)}
    rid = AggregationRound(FED, 0, 0, 0, "update")
    result = run_secure_sum(NonNeighbourSignatures(directory, params), clients, vectors, rid)
    assert result.aggregate is None
    assert any("neighbours signed the survivor list" in str(e) for e in result.client_errors.values())


# --------------------------------------------------------------------------- attack 7: inconsistency
class InconsistentCoordinator(Coordinator):
    """Malicious coordinator (Pasquini et al. 2022): sends the target a crafted global state (other
    slot weights) in its RoundStart, and the true one to everyone else."""

    def _start_round(self):
        out = super()._start_round()
        crafted = []
        for recipient, message in out:
            if recipient == TARGET and isinstance(message, RoundStart):
                message = dataclasses.replace(message, weights=np.full_like(message.weights, 7.0))
            crafted.append((recipient, message))
        return crafted


def test_a_client_sent_a_crafted_global_state_cannot_complete_a_sum_with_the_others():
    """Malicious coordinator: the target trains on a crafted state. Its sum is bound to the digest
    of the state it received, so its signed keys do not verify for the others' sum: it is dropped
    and its crafted-state update is in no aggregate."""
    coordinator, workers, learners, organizer = _federation(6, phase="update", coordinator_cls=InconsistentCoordinator)
    history = run_federation(coordinator, workers)
    updates = [a for a in organizer.seen if a.round_id.phase == "update"]
    assert updates and all(TARGET not in a.contributors for a in updates)
    drops = [e for e in history.events if e["event"] == "drop" and e["peer"] == TARGET]
    assert drops and "signature" in drops[0]["reason"]
