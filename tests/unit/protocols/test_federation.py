"""End-to-end runs of Coordinator + Workers + DKO over the in-memory transport."""

from __future__ import annotations

import functools

import numpy as np

from secure_fcit.data.schedule import TASK_ORDER, build_scenario
from secure_fcit.fcit.dko import DKOConfig
from secure_fcit.protocols import (
    Aggregate,
    Coordinator,
    PlaintextAggregator,
    PlaintextClient,
    ScenarioSchedule,
    Worker,
    run_federation,
)
from secure_fcit.protocols.states import BEFORE_ROUND
from tests.unit.protocols._support import (
    FED,
    SLOT,
    FakeLearner,
    build_federation,
    client,
    delta_value,
    task_token,
)


class RecordingOrganizer:
    """Passes everything to the real organizer and records what it was handed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.inputs: list[object] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def plan(self, stage, aggregate, **kwargs):
        self.inputs.append(aggregate)
        return self.inner.plan(stage, aggregate, **kwargs)

    def apply(self, stage, round, aggregate, **kwargs):
        self.inputs.append(aggregate)
        return self.inner.apply(stage, round, aggregate, **kwargs)


def test_hom_scenario_with_eight_tasks_opens_eight_slots():
    scenario = build_scenario("hom", "task", {t: 60 for t in TASK_ORDER}, n_clients=5, clients_per_round=5)
    schedule = ScenarioSchedule(scenario, client_id=client)
    learners = {
        client(c): FakeLearner(
            client(c),
            {s.index: TASK_ORDER.index(s.tasks[0]) for s in scenario.stages},
            samples={s.index: len(s.client_data[c][0][1]) for s in scenario.stages},
        )
        for c in range(5)
    }
    fed = build_federation([{}])  # only for its organizer; the coordinator below uses the scenario
    aggregators = functools.partial(PlaintextAggregator, min_contributors=2)
    coordinator = Coordinator(FED, schedule, aggregators, fed.organizer, SLOT, 2, np.random.default_rng(0))
    workers = [Worker(FED, cid, learner, PlaintextClient()) for cid, learner in learners.items()]
    history = run_federation(coordinator, workers)
    assert fed.organizer.n_slots == 8
    assert [e["active"] for e in history.of("planned")] == [[t] for t in range(8)]
    assert len(history.of("applied")) == 16 and not history.of("drop") and not history.worker_errors
    for w in workers:  # same-task clients choose the same slot: the stage's own
        assert w.slots == {(s, r): s for s in range(8) for r in range(2)}
    # A bare Scenario plugs in too, its clients named client-000, client-001, ...
    bare = Coordinator(
        FED, scenario, aggregators, build_federation([{}]).organizer, SLOT, 1, np.random.default_rng(0)
    )
    assert bare.schedule.members(0) == tuple(f"client-{c:03d}" for c in range(5))


def test_returning_tasks_reuse_their_slot_and_mixed_stages_route_by_task():
    stages = [
        {**{client(i): 0 for i in range(5)}, **{client(i): 1 for i in range(5, 10)}},
        {client(i): 2 for i in range(5)},
        {**{client(i): 0 for i in range(5)}, **{client(i): 2 for i in range(5, 10)}},
    ]
    fed = build_federation(stages, cohort_size=6, config=DKOConfig(n_buckets=256))
    history = run_federation(fed.coordinator, fed.workers)
    assert fed.organizer.n_slots == 3
    # Each task's slot is the one whose global token is closest to the task's vector.
    slot = {t: int(np.argmax(fed.organizer.tokens @ task_token(t))) for t in range(3)}
    assert sorted(slot.values()) == [0, 1, 2]
    planned = history.of("planned")
    assert [e["active"] for e in planned] == [
        sorted([slot[0], slot[1]]),
        [slot[2]],
        sorted([slot[0], slot[2]]),
    ]
    assert planned[2]["opened"] == []  # returning tasks reuse their slots
    for w in fed.workers:
        for (stage, _), chosen in w.slots.items():
            assert chosen == slot[stages[stage][w.client_id]]


def test_every_object_the_organizer_received_was_an_aggregate():
    stages = [{client(i): i % 2 for i in range(6)}, {client(i): 2 for i in range(6)}]
    fed = build_federation(stages, cohort_size=4, config=DKOConfig(n_buckets=256))
    recording = RecordingOrganizer(fed.organizer)
    fed.coordinator.organizer = recording
    history = run_federation(fed.coordinator, fed.workers)
    assert len(recording.inputs) == len(history.of("planned")) + len(history.of("applied")) == 2 + 4
    for seen in recording.inputs:
        assert type(seen) is Aggregate and seen.kind == "plaintext" and seen.n_contributors >= 1


def test_global_weights_are_the_sample_weighted_mean_delta():
    samples = {client(i): 3 + 2 * i for i in range(4)}
    fed = build_federation([{c: 0 for c in samples}], cohort_size=4, rounds=1, samples=samples.__getitem__)
    run_federation(fed.coordinator, fed.workers)
    by_hand = sum(n * delta_value(c, 0, 0) for c, n in samples.items()) / sum(samples.values())
    np.testing.assert_allclose(fed.organizer.global_weights([0])[0], np.full(SLOT, by_hand), rtol=1e-6)
    for learner in fed.learners.values():  # every worker trained slot 0 from the initial weights
        assert [(s, r, slot) for s, r, slot, _ in learner.trained] == [(0, 0, 0)]


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str | int | tuple) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | np.ndarray)


def test_snapshot_and_restore_give_identical_subsequent_results():
    stages = [{client(i): i % 2 for i in range(6)}, {client(i): 2 for i in range(6)}]
    make = lambda: build_federation(stages, cohort_size=4, rounds=2, config=DKOConfig(n_buckets=256))  # noqa: E731
    reference = make()
    run_federation(reference.coordinator, reference.workers)

    first = make()
    at_stage_1 = lambda c: c.state == BEFORE_ROUND and c.position == (1, 0, 0)  # noqa: E731
    run_federation(first.coordinator, first.workers, until=at_stage_1)
    snapshot = first.coordinator.snapshot()
    worker_snapshots = {w.client_id: w.snapshot() for w in first.workers}
    assert _plain(snapshot) and all(_plain(s) for s in worker_snapshots.values())

    resumed = make()
    resumed.coordinator.restore(snapshot)
    for w in resumed.workers:
        w.restore(worker_snapshots[w.client_id])
    run_federation(resumed.coordinator, resumed.workers)

    # the resumed phase runs under the next attempt number (a new sum); all else is identical
    resumed_round = [e for e in resumed.coordinator.events if e["event"] == "round-start"][2]
    assert (resumed_round["stage"], resumed_round["round"], resumed_round["attempt"]) == (1, 0, 1)
    strip = lambda events: [{k: v for k, v in e.items() if k != "attempt"} for e in events]  # noqa: E731
    assert strip(resumed.coordinator.events) == strip(reference.coordinator.events)
    ref, res = reference.organizer.snapshot(), resumed.organizer.snapshot()
    for key in ("tokens", "counts", "weights"):
        np.testing.assert_array_equal(res[key], ref[key])
    assert res["releases"] == ref["releases"]
