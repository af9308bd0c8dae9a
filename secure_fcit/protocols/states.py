"""Everything that shapes the round state machines, as plain tables (h11 style).

Coordinator states: ``before-stage`` and ``before-round`` are the boundaries (nothing in flight;
``advance()`` starts the next phase; ``snapshot()`` is allowed), ``tokens`` and ``updates`` collect
a secure sum, ``done`` is final. Its transitions are driven by its own events (a sum completed,
a phase aborted), listed in ``COORDINATOR_TRANSITIONS``; the messages it accepts from workers per
state are in ``COORDINATOR_ACCEPTS``. Anything else from a peer drops that peer.

Worker states: ``idle`` (between stages), ``await-plan`` (token phase), ``ready`` (has the slot
plan), ``await-round-end`` (uploaded or refused), and ``error`` after the coordinator broke the
protocol. Its transitions are keyed by (state, message type) in ``WORKER_TRANSITIONS``.
Aggregation-phase messages (``AGGREGATION``) keep the state and go to the aggregator.
"""

from __future__ import annotations

from secure_fcit.protocols.messages import (
    Abort,
    Message,
    Refusal,
    RoundEnd,
    RoundStart,
    SlotPlan,
    StageEnd,
    StageStart,
    TokenUpload,
    UpdateUpload,
)

__all__ = [
    "BEFORE_STAGE",
    "TOKENS",
    "BEFORE_ROUND",
    "UPDATES",
    "DONE",
    "BOUNDARIES",
    "COLLECTING",
    "COORDINATOR_ACCEPTS",
    "COORDINATOR_TRANSITIONS",
    "IDLE",
    "AWAIT_PLAN",
    "READY",
    "AWAIT_ROUND_END",
    "ERROR",
    "AGGREGATION",
    "WORKER_TRANSITIONS",
]

# Coordinator.
BEFORE_STAGE = "before-stage"
TOKENS = "tokens"
BEFORE_ROUND = "before-round"
UPDATES = "updates"
DONE = "done"
BOUNDARIES = frozenset({BEFORE_STAGE, BEFORE_ROUND, DONE})
COLLECTING = {TOKENS: "token", UPDATES: "update"}  # state -> aggregation phase

COORDINATOR_ACCEPTS: dict[str, frozenset[type[Message]]] = {
    BEFORE_STAGE: frozenset(),
    TOKENS: frozenset({TokenUpload, Refusal}),
    BEFORE_ROUND: frozenset(),
    UPDATES: frozenset({UpdateUpload, Refusal}),
    DONE: frozenset(),
}
"""Worker messages allowed per state, besides the current aggregator's ``message_types``."""

COORDINATOR_TRANSITIONS: dict[tuple[str, str], str] = {
    (BEFORE_STAGE, "start-stage"): TOKENS,
    (BEFORE_STAGE, "finish"): DONE,
    (TOKENS, "planned"): BEFORE_ROUND,
    (TOKENS, "aborted"): BEFORE_STAGE,  # the token phase is retried once, else the stage skipped
    (BEFORE_ROUND, "start-round"): UPDATES,
    (BEFORE_ROUND, "end-stage"): BEFORE_STAGE,
    (UPDATES, "applied"): BEFORE_ROUND,
    (UPDATES, "aborted"): BEFORE_ROUND,  # the round is retried once with a fresh cohort, else skipped
}

# Worker.
IDLE = "idle"
AWAIT_PLAN = "await-plan"
READY = "ready"
AWAIT_ROUND_END = "await-round-end"
ERROR = "error"
AGGREGATION = "aggregation"  # stands for any message type of the worker's ClientAggregator

WORKER_TRANSITIONS: dict[tuple[str, type[Message] | str], str] = {
    (IDLE, StageStart): AWAIT_PLAN,
    (AWAIT_PLAN, AGGREGATION): AWAIT_PLAN,
    (AWAIT_PLAN, SlotPlan): READY,
    (AWAIT_PLAN, Abort): IDLE,
    (READY, RoundStart): AWAIT_ROUND_END,
    (READY, StageEnd): IDLE,
    (READY, Abort): IDLE,
    (AWAIT_ROUND_END, AGGREGATION): AWAIT_ROUND_END,
    (AWAIT_ROUND_END, RoundEnd): READY,
    (AWAIT_ROUND_END, Abort): IDLE,
}
