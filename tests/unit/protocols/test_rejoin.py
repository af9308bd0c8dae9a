"""What the TLS server needs from the round machines: who a phase still waits for (``pending``),
dropping exactly those on a timeout (``expire``), and bringing a (re)connected worker to where the
stream stands (``sync`` / ``StageSync``)."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fcit.errors import RemoteProtocolError
from secure_fcit.protocols import StageSync, Worker
from secure_fcit.protocols.codec import decode, encode
from secure_fcit.protocols.states import BEFORE_ROUND, READY
from tests.unit.protocols._support import FED, build_federation, client

MEMBERS = {client(i): 0 for i in range(5)}


def pump(fed, outgoing, silent=frozenset()):
    """Deliver until nothing is in flight; ``silent`` workers receive but never answer."""
    workers = {w.client_id: w for w in fed.workers}
    queue = list(outgoing)
    while queue:
        recipient, message = queue.pop(0)
        replies = workers[recipient].receive(decode(encode(message), 1 << 26))
        if recipient in silent:
            continue
        for reply in replies:
            queue += fed.coordinator.receive(recipient, decode(encode(reply), 1 << 26))


@pytest.mark.parametrize("aggregation", ["plaintext", "masking", "ckks"])
def test_a_timeout_drops_exactly_the_silent_peers_and_the_phase_completes(aggregation):
    fed = build_federation([MEMBERS, MEMBERS], cohort_size=5, rounds=1, aggregation=aggregation)
    coord = fed.coordinator
    assert coord.pending() == frozenset()  # nothing in flight at a boundary
    silent = {client(3)}
    pump(fed, coord.advance(), silent=silent)  # the token phase: client-03 never answers
    assert coord.state == "tokens" and coord.pending() == silent
    pump(fed, coord.expire("no answer within 1 s"), silent=silent)
    assert coord.state == BEFORE_ROUND and coord.pending() == frozenset()
    planned = [e for e in coord.events if e["event"] == "planned"][-1]
    assert client(3) not in planned["contributors"] and len(planned["contributors"]) == 4
    drops = [e for e in coord.events if e["event"] == "drop"]
    assert [(e["peer"], e["reason"]) for e in drops] == [(client(3), "no answer within 1 s")]


def test_expire_never_drops_a_peer_that_already_answered_its_step():
    fed = build_federation([MEMBERS], cohort_size=5, rounds=1, aggregation="masking")
    coord = fed.coordinator
    pump(fed, coord.advance(), silent={client(0), client(1)})
    assert coord.pending() == {client(0), client(1)}
    pump(fed, coord.expire("timeout"))
    dropped = {e["peer"] for e in coord.events if e["event"] == "drop"}
    assert dropped == {client(0), client(1)}


def _run_to_round(fed, stage: int, round_: int) -> None:
    coord = fed.coordinator
    while coord.position[:2] != (stage, round_) or coord.state != BEFORE_ROUND:
        assert coord.at_boundary
        pump(fed, coord.advance())


def test_a_worker_that_lost_its_state_is_synced_and_trains_the_next_round():
    fed = build_federation([MEMBERS, MEMBERS], cohort_size=5, rounds=2, aggregation="masking")
    coord = fed.coordinator
    _run_to_round(fed, 1, 1)  # stage 2 planned, its first round done
    index = next(i for i, w in enumerate(fed.workers) if w.client_id == client(2))
    old = fed.workers[index]
    fresh = Worker(FED, old.client_id, old.learner, old.aggregator)  # a restarted process
    fed.workers[index] = fresh
    out = coord.sync(client(2))
    assert len(out) == 1 and isinstance(out[0][1], StageSync) and out[0][1].planned
    pump(fed, out)
    assert fresh.state == READY
    pump(fed, coord.advance())  # round 2 of stage 2: every member trains, client-02 included
    applied = [e for e in coord.events if e["event"] == "applied"][-1]
    assert client(2) in applied["contributors"] and (applied["stage"], applied["round"]) == (1, 1)
    trained = [t for t in fed.learners[client(2)].trained if t[:2] == (1, 1)]
    assert trained and trained[0][2] == applied_slot(coord, 1)


def test_before_a_stage_a_synced_worker_waits_idle_for_its_start():
    fed = build_federation([MEMBERS, MEMBERS], cohort_size=5, rounds=1, aggregation="plaintext")
    coord = fed.coordinator
    _run_to_round(fed, 0, 1)
    pump(fed, coord.advance())  # end of stage 1: before stage 2
    assert coord.state == "before-stage"
    index = next(i for i, w in enumerate(fed.workers) if w.client_id == client(4))
    fed.workers[index] = Worker(FED, client(4), fed.workers[index].learner, fed.workers[index].aggregator)
    out = coord.sync(client(4))
    assert not out[0][1].planned and out[0][1].round == -1
    pump(fed, out)
    pump(fed, coord.advance())  # stage 2's StageStart reaches it and its token counts
    planned = [e for e in coord.events if e["event"] == "planned"][-1]
    assert client(4) in planned["contributors"]


def test_no_sync_mid_phase_or_for_strangers_and_a_worker_refuses_going_back():
    fed = build_federation([MEMBERS, MEMBERS], cohort_size=5, rounds=1, aggregation="plaintext")
    coord = fed.coordinator
    pump(fed, coord.advance(), silent=set(MEMBERS))
    assert coord.state == "tokens" and coord.sync(client(0)) == []  # mid-phase: at the next boundary
    fed2 = build_federation([MEMBERS, MEMBERS], cohort_size=5, rounds=1, aggregation="plaintext")
    _run_to_round(fed2, 1, 0)
    assert fed2.coordinator.sync("client-99") == []
    worker = next(w for w in fed2.workers if w.client_id == client(0))
    back = StageSync(federation_id=FED, stage=0, round=-1, attempt=0, sender="coordinator",
                     tokens=np.zeros((1, 16), np.float32), active=(), planned=False)
    with pytest.raises(RemoteProtocolError, match="goes back"):
        worker.receive(back)


def applied_slot(coord, stage: int) -> int:
    """The one slot stage ``stage`` trains (every member shares its task here)."""
    plan = [e for e in coord.events if e["event"] == "planned" and e["stage"] == stage][-1]
    assert len(plan["active"]) == 1
    return plan["active"][0]


def test_a_rewound_worker_never_begins_the_same_secure_sum_twice():
    fed = build_federation([MEMBERS], cohort_size=5, rounds=2, aggregation="masking")
    coord = fed.coordinator
    _run_to_round(fed, 0, 0)  # stage planned; every worker ready
    worker = next(w for w in fed.workers if w.client_id == client(1))
    boundary = worker.snapshot()
    out = coord.advance()  # RoundStart (0, 0, 0)
    start = next(m for r, m in out if r == client(1))
    worker.receive(start)
    assert worker.started == (0, 0, 0)
    rewound = Worker(FED, client(1), worker.learner, worker.aggregator)
    rewound.restore(boundary)  # a process that lost its connection goes back to its boundary
    rewound.mark_started(worker.started)  # ... and reads its started mark from disk
    with pytest.raises(RemoteProtocolError, match="would begin a secure sum again"):
        rewound.receive(start)


def test_a_restored_coordinator_runs_its_next_phase_as_a_new_sum():
    fed = build_federation([MEMBERS], cohort_size=5, rounds=2, aggregation="plaintext")
    _run_to_round(fed, 0, 1)
    snap = fed.coordinator.snapshot()
    again = build_federation([MEMBERS], cohort_size=5, rounds=2, aggregation="plaintext")
    again.coordinator.restore(snap)
    assert again.coordinator.position == (0, 1, 1)


def test_a_worker_outside_the_current_stage_is_set_idle_and_joins_its_next_stage():
    first = {client(i): 0 for i in range(4)}  # client-04 has no data in stage 1
    fed = build_federation([first, MEMBERS], cohort_size=4, rounds=1, aggregation="plaintext")
    coord = fed.coordinator
    _run_to_round(fed, 0, 0)
    index = next(i for i, w in enumerate(fed.workers) if w.client_id == client(4))
    fed.workers[index] = Worker(FED, client(4), fed.workers[index].learner, fed.workers[index].aggregator)
    out = coord.sync(client(4))
    assert len(out) == 1 and not out[0][1].planned
    pump(fed, out)
    while coord.position[0] < 1 or coord.state != BEFORE_ROUND:
        pump(fed, coord.advance())
    planned = [e for e in coord.events if e["event"] == "planned"][-1]
    assert client(4) in planned["contributors"]
