"""Peers that drop, refuse, replay, lie or intrude: the round goes on for the rest, or aborts cleanly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_fcit.errors import LocalProtocolError
from secure_fcit.protocols import Fault, Injection, RoundStart, TokenUpload, UpdateUpload, run_federation
from tests.unit.protocols._support import FED, SLOT, build_federation, client, delta_value
from tests.unit.protocols.test_codec import messages

COHORT = [client(i) for i in range(5)]
VICTIM = client(2)


def one_round(**kwargs):
    return build_federation([{c: 0 for c in COHORT}], cohort_size=5, rounds=1, **kwargs)


def is_update(who: str):
    return lambda sender, message: sender == who and isinstance(message, UpdateUpload)


def after_round_start(recipient, message):
    return isinstance(message, RoundStart) and recipient == COHORT[0]


def forged_update(sender: str, **changes):
    def make(start: RoundStart):
        fields = dict(
            federation_id=FED,
            stage=start.stage,
            round=start.round,
            attempt=start.attempt,
            sender=sender,
            payload=np.zeros((SLOT + 2) * len(start.active)),
            encoding="plaintext-f64",
        )
        fields.update(changes)
        return UpdateUpload(**fields)  # fmt: skip

    return make


def expected_weight(contributors) -> float:
    return sum(delta_value(c, 0, 0) for c in contributors) / len(contributors)  # equal n_k = 10


SCENARIOS = {
    "drop mid-round": dict(faults=[Fault(is_update(VICTIM), "lose")], reason="connection lost"),
    "wrong round": dict(
        faults=[
            Fault(is_update(VICTIM), "rewrite", rewrite=lambda m: dataclasses.replace(m, round=m.round + 1))
        ],
        reason="is for stage 0 round 1",
    ),
    "replay": dict(faults=[Fault(is_update(VICTIM), "replay")], reason="duplicate or replayed"),
    "garbage bytes": dict(
        faults=[Fault(is_update(VICTIM), "rewrite", rewrite=lambda m: b"\x00junk")], reason="[codec]"
    ),  # fmt: skip
    "wrong length": dict(
        injections=[Injection(after_round_start, VICTIM, forged_update(VICTIM, payload=np.zeros(3)))],
        faults=[Fault(is_update(VICTIM), "lose")],  # its honest upload never arrives
        reason="sent 3 values",
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_offending_member_is_dropped_and_the_round_completes_for_the_rest(name):
    scenario = dict(SCENARIOS[name])
    reason = scenario.pop("reason")
    fed = one_round()
    history = run_federation(fed.coordinator, fed.workers, **scenario)
    drops = history.of("drop")
    assert [d["peer"] for d in drops if d["in_phase"]] == [VICTIM]
    assert reason in drops[0]["reason"]
    (applied,) = history.of("applied")
    rest = [c for c in COHORT if c != VICTIM]
    assert applied["contributors"] == rest and VICTIM in applied["dropped"]
    np.testing.assert_allclose(fed.organizer.global_weights([0])[0], expected_weight(rest), rtol=1e-6)
    assert not history.worker_errors and all(w.state == "idle" for w in fed.workers)


def test_refusal_leaves_the_round_without_that_worker():
    fed = one_round()
    fed.learners[VICTIM].refuse = {(0, 0)}
    history = run_federation(fed.coordinator, fed.workers)
    assert history.of("refusal")[0]["peer"] == VICTIM
    assert history.of("refusal")[0]["reason"] == "privacy budget exhausted"
    assert history.of("applied")[0]["contributors"] == [c for c in COHORT if c != VICTIM]
    assert not history.of("drop")


@pytest.mark.parametrize(
    ("peer", "make", "reason"),
    [
        ("mallory", forged_update("mallory"), "not in this phase's cohort"),
        ("mallory", forged_update(VICTIM), "claims sender"),  # spoofing a member's id
        ("mallory", lambda m: b"\xff" * 40, "[codec]"),
    ],
)
def test_non_members_are_recorded_and_change_nothing(peer, make, reason):
    fed = one_round()
    history = run_federation(
        fed.coordinator, fed.workers, injections=[Injection(after_round_start, peer, make)]
    )
    (drop,) = history.of("drop")
    assert drop["peer"] == peer and reason in drop["reason"] and not drop["in_phase"]
    assert history.of("applied")[0]["contributors"] == COHORT
    np.testing.assert_allclose(fed.organizer.global_weights([0])[0], expected_weight(COHORT), rtol=1e-6)


def test_below_min_contributors_the_round_aborts_cleanly_then_is_skipped():
    stages = [{c: 0 for c in COHORT[:3]}]
    fed = build_federation(stages, cohort_size=3, rounds=2, min_contributors=3)
    fed.learners[VICTIM].refuse = {(0, 0)}  # refuses round 0 in every attempt
    history = run_federation(fed.coordinator, fed.workers)
    # A refusal still in flight when the phase ended is logged as a drop outside the phase.
    names = [e["event"] for e in history.events
             if e["event"] not in ("refusal", "round-start") and not (e["event"] == "drop" and not e["in_phase"])]
    assert names == ["stage-start", "planned", "aborted", "retry", "aborted", "round-skipped", "applied",
                     "stage-end", "finished"]  # fmt: skip
    assert "only 2 of 3 cohort members can still contribute" in history.of("aborted")[0]["reason"]
    # The plaintext upload of attempt 0 released the others' round-0 updates: without fresh DP
    # noise they refuse to send them into the retry's sum.
    assert any("was released in attempt 0" in e["reason"] for e in history.of("refusal"))
    # Nothing of round 0 was applied: the weights hold round 1's mean delta alone.
    by_hand = np.mean([delta_value(c, 0, 1) for c in COHORT[:3]])
    np.testing.assert_allclose(fed.organizer.global_weights([0])[0], by_hand, rtol=1e-6)
    assert not history.worker_errors and all(w.state == "idle" for w in fed.workers)


def test_an_aborted_round_is_retried_with_a_fresh_cohort():
    stages = [{c: 0 for c in COHORT}]
    fed = build_federation(stages, cohort_size=3, rounds=1, min_contributors=3)
    for learner in fed.learners.values():  # DP learners: a member of both cohorts retrains afresh
        learner.fresh_randomness = True
    lose_first = Fault(lambda s, m: isinstance(m, UpdateUpload) and m.attempt == 0, "lose")
    history = run_federation(fed.coordinator, fed.workers, faults=[lose_first])
    assert [e["attempt"] for e in history.of("round-start")] == [0, 1]
    (applied,) = history.of("applied")
    assert applied["attempt"] == 1 and len(applied["contributors"]) == 3
    by_hand = np.mean([delta_value(c, 0, 0) for c in applied["contributors"]])
    np.testing.assert_allclose(fed.organizer.global_weights([0])[0], by_hand, rtol=1e-6)


def test_a_failed_token_phase_is_retried_then_the_stage_skipped():
    stages = [{c: 0 for c in COHORT[:2]}, {c: 1 for c in COHORT[:2]}]
    fed = build_federation(stages, cohort_size=2, rounds=1, min_contributors=2)
    lose = Fault(lambda s, m: s == COHORT[0] and isinstance(m, TokenUpload) and m.stage == 0, "lose", times=2)
    history = run_federation(fed.coordinator, fed.workers, faults=[lose])
    assert [(e["stage"], e["attempt"]) for e in history.of("aborted")] == [(0, 0), (0, 1)]
    assert [e["stage"] for e in history.of("stage-skipped")] == [0]
    assert [e["stage"] for e in history.of("planned")] == [1]
    assert fed.organizer.n_slots == 1 and not history.worker_errors


def test_late_message_after_the_round_is_recorded_not_fatal():
    fed = build_federation([{c: 0 for c in COHORT}], cohort_size=5, rounds=2)
    late = Injection(
        lambda r, m: isinstance(m, RoundStart) and m.round == 1 and r == COHORT[0],
        VICTIM,
        lambda m: dataclasses.replace(forged_update(VICTIM)(m), round=0),
    )
    history = run_federation(fed.coordinator, fed.workers, injections=[late])
    assert any("round 0" in d["reason"] for d in history.of("drop"))
    assert len(history.of("applied")) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([*COHORT, "mallory"]), messages), max_size=6), st.booleans())
def test_the_coordinator_survives_any_sequence_of_peer_messages(intrusions, reorder):
    fed = build_federation([{c: 0 for c in COHORT}], cohort_size=5, rounds=1)
    injections = [
        Injection(lambda r, m, i=i: r == COHORT[i % 5], peer, lambda _m, msg=msg: msg)
        for i, (peer, msg) in enumerate(intrusions)
    ]
    history = run_federation(fed.coordinator, fed.workers, injections=injections, reorder=reorder,
                             rng=np.random.default_rng(1))  # fmt: skip
    assert fed.coordinator.done and history.of("finished")


def test_coordinator_misuse_is_a_local_error():
    fed = one_round()
    fed.coordinator.advance()
    with pytest.raises(LocalProtocolError, match="boundary"):
        fed.coordinator.advance()
    with pytest.raises(LocalProtocolError, match="boundary"):
        fed.coordinator.snapshot()
