"""The coordinator's round machine: sans-IO, driven by a transport, never crashed by a peer.

A transport feeds it worker messages (``receive`` / ``receive_bytes``) and lost peers
(``peer_lost``), and sends the ``(recipient, message)`` pairs these return. At a boundary
(``before-stage``, ``before-round``) nothing is in flight; the transport calls ``advance()`` to start
the next phase, and may ``snapshot()`` first. The per-stage flow: StageStart to the stage's
members, token sum through a fresh aggregator, ``organizer.plan``, SlotPlan; then per round a
sampled cohort, RoundStart with the active slots' weights, update sum, ``organizer.apply``,
RoundEnd. The organizer only ever gets the aggregator's ``Aggregate``.

Whatever a peer does wrong (wrong stage/round/attempt, not in the cohort, a replay, a type the
state does not allow, a malformed contribution) drops that peer from the phase and is logged in
``events``; if too few contributors remain the phase aborts with nothing applied, is retried
(``max_retries``, fresh cohort for a round, fresh hash seed for a token phase) and then skipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols import states as S
from secure_fcit.protocols.aggregation import (
    Aggregate,
    AggregationRound,
    Outgoing,
    SecureAggregator,
    state_digest,
)
from secure_fcit.protocols.codec import decode
from secure_fcit.protocols.interfaces import Organizer, ScenarioSchedule, Schedule
from secure_fcit.protocols.layout import (
    public_hash_seed,
    singleton_blocks,
    split_token_sum,
    token_vector_length,
)
from secure_fcit.protocols.messages import (
    COORDINATOR_ID,
    Abort,
    Contribution,
    Message,
    Refusal,
    RoundEnd,
    RoundStart,
    SlotPlan,
    StageEnd,
    StageStart,
    StageSync,
    check_id,
    check_int,
)

__all__ = ["Coordinator", "DEFAULT_MAX_MESSAGE_SIZE"]

DEFAULT_MAX_MESSAGE_SIZE = 256 << 20
_SNAPSHOT_VERSION = 1


class Coordinator:
    """Server side of the federation (see module docstring)."""

    def __init__(
        self,
        federation_id: str,
        schedule: Schedule,
        aggregator_factory: Callable[[], SecureAggregator],
        organizer: Organizer,
        slot_size: int,
        rounds_per_stage: int,
        rng: np.random.Generator,  # cohort sampling only: public, never a secret
        *,
        dp: bool = False,
        max_retries: int = 1,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        coordinator_id: str = COORDINATOR_ID,
    ) -> None:
        self.federation_id = check_id("federation_id", federation_id)
        self.coordinator_id = check_id("coordinator_id", coordinator_id)
        if not callable(aggregator_factory):
            raise ConfigError("aggregator_factory must be a callable returning a SecureAggregator")
        if not isinstance(rng, np.random.Generator):  # the public cohort sampler, never used for a secret
            raise ConfigError("rng must be a numpy Generator")
        if not isinstance(dp, bool):
            raise ConfigError(f"dp must be a bool, got {dp!r}")
        # An FCIT Scenario (stages + cohort) plugs in directly; anything else must be a Schedule.
        if not hasattr(schedule, "members") and hasattr(schedule, "stages"):
            schedule = ScenarioSchedule(schedule)
        self.schedule: Schedule = schedule
        self.organizer = organizer
        self.slot_size = check_int("slot_size", slot_size, 1)
        if organizer.slot_size != self.slot_size:
            raise ConfigError(f"slot_size {slot_size} differs from the organizer's {organizer.slot_size}")
        self.rounds_per_stage = check_int("rounds_per_stage", rounds_per_stage, 1)
        self.max_retries = check_int("max_retries", max_retries, 0)
        self.max_message_size = check_int("max_message_size", max_message_size, 64)
        self.dp = dp  # round metadata for the k_min policy "allow-with-dp"
        self._rng = rng
        self._factory = aggregator_factory
        self.events: list[dict[str, Any]] = []
        self._state = S.BEFORE_STAGE
        self._stage = self._round = self._attempt = 0
        self._failures = 0  # aborted tries of the coordinator's current phase (max_retries counts these)
        self._members: tuple[str, ...] = ()
        self._active: tuple[int, ...] = ()
        self._reset_phase()

    # ----------------------------------------------------------------- public surface
    @property
    def state(self) -> str:
        return self._state

    @property
    def at_boundary(self) -> bool:
        """Nothing in flight: ``advance()`` and ``snapshot()`` are allowed."""
        return self._state in S.BOUNDARIES

    @property
    def done(self) -> bool:
        return self._state == S.DONE

    @property
    def position(self) -> tuple[int, int, int]:
        """(stage, round, attempt) of the current or next phase."""
        return self._stage, self._round, self._attempt

    def advance(self) -> list[Outgoing]:
        """Start the next phase (or finish); only at a boundary."""
        if self._state == S.BEFORE_STAGE:
            if self._stage >= self.schedule.n_stages:
                self._transition("finish")
                self._log("finished")
                return []
            return self._start_tokens()
        if self._state == S.BEFORE_ROUND:
            if self._round >= self.rounds_per_stage or not self._active:
                return self._end_stage()
            return self._start_round()
        raise LocalProtocolError(f"advance() needs a boundary state, the coordinator is in {self._state!r}")

    def receive_bytes(self, peer: str, data: bytes) -> list[Outgoing]:
        """Decode ``data`` from the authenticated ``peer`` and handle it; bad bytes drop the peer."""
        try:
            message = decode(data, self.max_message_size)
        except RemoteProtocolError as exc:
            return self._offence(peer, str(exc))
        return self.receive(peer, message)

    def receive(self, peer: str, message: Message) -> list[Outgoing]:
        """Handle a message from the authenticated ``peer``; never raises on what the peer sent."""
        reason = self._reject_reason(peer, message)
        if reason is not None:
            return self._offence(peer, reason)
        if isinstance(message, Refusal):
            self._answered.add(peer)
            self._log("refusal", peer=peer, reason=message.reason)
            self._dropped[peer] = f"refused: {message.reason}"
            out = self._aggregator_call("dropped", peer)
        else:
            if isinstance(message, Contribution):
                self._answered.add(peer)
            try:
                out = self._aggregator_call("receive", peer, message)
            except RemoteProtocolError as exc:
                return self._offence(peer, str(exc))
        return out + self._progress()

    def peer_lost(self, peer: str) -> list[Outgoing]:
        """The transport lost ``peer`` (closed, timed out): it leaves the current phase."""
        if self._state in S.COLLECTING and peer in self._cohort_set and peer not in self._dropped:
            return self._offence(peer, "connection lost")
        return []

    def sync(self, peer: str) -> list[Outgoing]:
        """A ``StageSync`` for a peer that (re)connected: only at a boundary, where no phase is in
        flight (a peer that joins mid-phase is synced at the next boundary)."""
        if self._state not in (S.BEFORE_STAGE, S.BEFORE_ROUND) or self._stage >= self.schedule.n_stages:
            return []
        if not any(peer in self.schedule.members(s) for s in range(self.schedule.n_stages)):
            return []  # not a worker of this stream
        # A member of the planned stage joins it; anyone else waits idle for its next StageStart.
        planned = self._state == S.BEFORE_ROUND and peer in self._members
        tokens = self._broadcast_tokens()
        message = StageSync(
            federation_id=self.federation_id, stage=self._stage, round=self._round if planned else -1,
            attempt=self._attempt, sender=self.coordinator_id,
            tokens=tokens, active=self._active if planned else (), planned=planned,
        )
        return [(peer, message)]

    def pending(self) -> frozenset[str]:
        """Peers the current phase waits for (empty at a boundary): what a stall timeout drops."""
        if self._state not in S.COLLECTING or self._aggregator is None:
            return frozenset()
        return frozenset(self._aggregator.pending() - set(self._dropped))

    def expire(self, reason: str) -> list[Outgoing]:
        """The transport's phase timer ran out: drop every peer still ``pending()``, with ``reason``.

        Peers that already answered their current step stay in; the secure sum recovers from the
        dropped ones as from any dropout (or the phase aborts and is retried).
        """
        out: list[Outgoing] = []
        for peer in sorted(self.pending()):
            if peer in self.pending():  # an earlier drop may have ended the phase
                out += self._offence(peer, reason)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state at a boundary; ``restore`` it into a coordinator built the same way."""
        if not self.at_boundary:
            raise LocalProtocolError(
                f"snapshot() needs a boundary state, the coordinator is in {self._state!r}"
            )
        return {
            "version": _SNAPSHOT_VERSION,
            "federation_id": self.federation_id,
            "state": self._state,
            "stage": self._stage,
            "round": self._round,
            "attempt": self._attempt,
            "failures": self._failures,
            "members": list(self._members),
            "active": list(self._active),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "organizer": self.organizer.snapshot(),
            "events": copy.deepcopy(self.events),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from ``snapshot``: the next ``advance()`` starts the phase it stopped before,
        under the next attempt number. A worker may have begun that phase's secure sum before the
        snapshot's process died; the new number names a new sum, so nothing signed or sealed for
        the old one counts in it, and workers refuse to begin the old one twice."""
        if not self.at_boundary:
            raise LocalProtocolError("restore() needs a boundary state")
        expected = {"version", "federation_id", "state", "stage", "round", "attempt", "members", "active"}
        if not isinstance(snapshot, dict) or not expected | {"rng", "organizer", "events"} <= set(snapshot):
            raise ConfigError("not a coordinator snapshot (keys missing)")
        if snapshot["version"] != _SNAPSHOT_VERSION or snapshot["federation_id"] != self.federation_id:
            raise ConfigError("snapshot is of another version or federation")
        if snapshot["state"] not in S.BOUNDARIES:
            raise ConfigError(f"snapshot state {snapshot['state']!r} is not a boundary")
        rng_state = snapshot["rng"]
        if (
            not isinstance(rng_state, dict)
            or rng_state.get("bit_generator") != type(self._rng.bit_generator).__name__
        ):
            raise ConfigError("snapshot rng is of another bit generator than this coordinator's")
        self.organizer.restore(snapshot["organizer"])
        self._rng.bit_generator.state = copy.deepcopy(snapshot["rng"])
        self._state = snapshot["state"]
        self._stage = check_int("stage", snapshot["stage"], 0)
        self._round = check_int("round", snapshot["round"], 0)
        self._attempt = check_int("attempt", snapshot["attempt"], 0) + 1
        self._failures = check_int("failures", snapshot.get("failures", 0), 0)
        self._members = tuple(snapshot["members"])
        self._active = tuple(int(s) for s in snapshot["active"])
        self.events = copy.deepcopy(snapshot["events"])
        self._reset_phase()

    # ----------------------------------------------------------------- phases
    def _start_tokens(self) -> list[Outgoing]:
        members = tuple(check_id("member", m) for m in self.schedule.members(self._stage))
        self._members = members
        # public, fixed by (federation, stage, attempt): workers recompute and check it
        hash_seed = public_hash_seed(self.federation_id, self._stage, self._attempt)
        org = self.organizer
        tokens = self._broadcast_tokens()
        self._new_aggregator()
        start = self._message(
            StageStart,
            -1,
            tokens=tokens,
            hash_seed=hash_seed,
            n_buckets=org.n_buckets,
            tau=float(org.tau),
            cohort=members,
            aggregation=self._aggregator_kind,
        )
        out = self._begin_phase(-1, members, token_vector_length(len(tokens) + org.n_buckets, org.dim),
                                state_digest(tokens, start))
        self._transition("start-stage")
        self._log("stage-start", cohort=list(members))
        return [(m, start) for m in members] + out + self._progress()

    def _start_round(self) -> list[Outgoing]:
        cohort = tuple(self.schedule.cohort(self._stage, self._round, self._rng))
        strangers = sorted(set(cohort) - set(self._members))
        if strangers or len(set(cohort)) != len(cohort):
            raise ConfigError(
                f"schedule.cohort({self._stage}, {self._round}) returned {strangers or 'duplicates'}, "
                "not distinct members of the stage"
            )
        weights = np.asarray(self.organizer.global_weights(self._active), dtype=np.float32)
        if weights.shape != (len(self._active), self.slot_size):
            raise LocalProtocolError(f"organizer returned weights of shape {weights.shape}")
        self._new_aggregator()
        start = self._message(
            RoundStart,
            self._round,
            cohort=cohort,
            active=self._active,
            weights=weights,
            aggregation=self._aggregator_kind,
        )
        out = self._begin_phase(self._round, cohort, self.organizer.update_length(len(self._active)),
                                state_digest(self._broadcast_tokens(), start))
        self._transition("start-round")
        self._log("round-start", cohort=list(cohort))
        return [(c, start) for c in cohort] + out + self._progress()

    def _end_stage(self) -> list[Outgoing]:
        end = self._message(StageEnd, -1)
        self._log("stage-end", round=-1)
        self._transition("end-stage")
        self._stage, self._round, self._attempt, self._active = self._stage + 1, 0, 0, ()
        self._failures = 0
        return [(m, end) for m in self._members]

    def _aggregator_findings(self) -> dict[str, Any]:
        """Members the secure sum convicted (a checked complaint) and pairs it cut, for the events."""
        found: dict[str, Any] = {}
        convicted = getattr(self._aggregator, "convicted", None)
        if convicted:
            found["convicted"] = dict(convicted)
        cut = getattr(self._aggregator, "cut_pairs", None)
        if cut:
            found["cut_pairs"] = [list(p) for p in cut]
        return found

    def _broadcast_tokens(self) -> np.ndarray:
        """The global tokens as every broadcast carries them (and as the phase digest hashes them)."""
        org = self.organizer
        return np.asarray(org.tokens, dtype=np.float32).reshape(-1, org.dim)

    def _new_aggregator(self) -> None:
        """A fresh aggregator for the next phase; its kind goes into the phase's start message."""
        aggregator = self._factory()
        if not isinstance(aggregator, SecureAggregator):
            raise ConfigError("aggregator_factory must return a SecureAggregator")
        self._reset_phase()
        self._aggregator, self._aggregator_kind = aggregator, aggregator.kind

    def _begin_phase(self, round_: int, cohort: tuple[str, ...], length: int, context: bytes) -> list[Outgoing]:
        """Begin the secure sum of the aggregator ``_new_aggregator`` made for this phase."""
        aggregator = self._aggregator
        if aggregator is None:
            raise LocalProtocolError("no aggregator for this phase")
        phase = "token" if round_ < 0 else "update"
        # ``context``: the digest of the broadcast, so that clients sent different global states
        # (tokens, weights, cohort) cannot complete this sum together.
        round_id = AggregationRound(self.federation_id, self._stage, round_, self._attempt, phase, context)
        self._cohort, self._cohort_set = cohort, frozenset(cohort)
        return aggregator.begin(round_id, cohort, length)

    def _progress(self) -> list[Outgoing]:
        """Finish the phase if its sum completed or can no longer complete."""
        aggregator = self._aggregator
        if aggregator is None or self._state not in S.COLLECTING:
            return []
        if aggregator.failure is not None:
            return self._abort_phase(aggregator.failure)
        aggregate = aggregator.result()
        if aggregate is None:
            return []
        try:
            if self._state == S.TOKENS:
                return self._planned(aggregate)
            return self._applied(aggregate)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            # e.g. max_slots reached, or a sum no honest cohort could produce: nothing was applied.
            # The sum exists, so the phase is skipped, never retried: a retry over the same inputs
            # would hand the coordinator two sums to subtract.
            return self._abort_phase(f"organizer refused the aggregate: {exc}", retry=False)

    def _planned(self, aggregate: Aggregate) -> list[Outgoing]:
        # Under DP every token in the sum is a token-mechanism release (`dp.client.noisy_token`), so
        # "allow-with-dp" covers a small token bucket as it covers a small slot.
        dim = self.organizer.dim
        _, _, clients = split_token_sum(aggregate.vector, aggregate.vector.size // (dim + 2), dim)
        alone = singleton_blocks(clients)
        plan = self.organizer.plan(self._stage, aggregate, dp=self.dp)
        self._active = tuple(plan.active)
        message = self._message(SlotPlan, -1, tokens=np.asarray(plan.tokens, np.float32), active=self._active)
        self._log(
            "planned",
            contributors=list(aggregate.contributors),
            active=list(self._active),
            opened=list(plan.opened),
            withheld_buckets=list(plan.withheld_buckets),
            incoherent_buckets=list(plan.incoherent_buckets),
            undersized_buckets=list(plan.undersized_buckets),
            singleton_blocks=alone,
            dropped=dict(self._dropped),
            **self._aggregator_findings(),
        )
        self._transition("planned")
        self._round = self._attempt = self._failures = 0
        self._reset_phase()
        return [(m, message) for m in self._members]

    def _applied(self, aggregate: Aggregate) -> list[Outgoing]:
        # Both update layouts (plain and distributed DP, `protocols.layout`) end with the per-slot
        # client counts.
        clients = np.asarray(aggregate.vector)[-len(self._active):]
        alone = singleton_blocks(clients)
        outcome = self.organizer.apply(self._stage, self._round, aggregate, dp=self.dp)
        message = self._message(RoundEnd, self._round, status="applied")
        self._log(
            "applied",
            contributors=list(aggregate.contributors),
            applied=list(outcome.applied),
            withheld=list(outcome.withheld),
            clients={str(k): v for k, v in outcome.clients.items()},
            singleton_blocks=alone,
            dropped=dict(self._dropped),
            **self._aggregator_findings(),
        )
        recipients = self._cohort
        self._transition("applied")
        self._round, self._attempt, self._failures = self._round + 1, 0, 0
        self._reset_phase()
        return [(c, message) for c in recipients]

    def _abort_phase(self, reason: str, *, retry: bool = True) -> list[Outgoing]:
        tokens = self._state == S.TOKENS
        if tokens:
            message: Message = self._message(Abort, -1, reason=reason)
            recipients = self._members
        else:
            message = self._message(RoundEnd, self._round, status="aborted", reason=reason)
            recipients = self._cohort
        self._log("aborted", reason=reason, dropped=dict(self._dropped), **self._aggregator_findings())
        self._transition("aborted")
        self._attempt += 1  # a new sum either way: a retry, or the next phase's first try
        if retry and self._failures < self.max_retries:
            self._failures += 1
            self._log("retry")
        else:
            self._log("stage-skipped" if tokens else "round-skipped")
            if tokens:
                self._stage += 1
            else:
                self._round += 1
            self._attempt = self._failures = 0
        self._reset_phase()
        return [(r, message) for r in recipients]

    # ----------------------------------------------------------------- helpers
    def _reject_reason(self, peer: str, message: Message) -> str | None:
        """Why ``message`` from ``peer`` is not acceptable now, or None."""
        if not isinstance(message, Message):
            return f"not a protocol message: {type(message).__name__}"
        kind = type(message).__name__
        if message.sender != peer:
            return f"{kind} claims sender {message.sender!r} but came from {peer!r}"
        if message.federation_id != self.federation_id:
            return f"{kind} is for federation {message.federation_id!r}"
        if self._state not in S.COLLECTING:
            return f"{kind} arrived while the coordinator is {self._state!r} and expects nothing"
        if peer not in self._cohort_set:
            return f"{kind} from {peer!r}, which is not in this phase's cohort"
        if peer in self._dropped:
            return f"{kind} from {peer!r}, already out of this phase ({self._dropped[peer]})"
        round_ = -1 if self._state == S.TOKENS else self._round
        if (message.stage, message.round, message.attempt) != (self._stage, round_, self._attempt):
            return (
                f"{kind} is for stage {message.stage} round {message.round} attempt {message.attempt}, "
                f"the coordinator is at stage {self._stage} round {round_} attempt {self._attempt}"
            )
        aggregator_types = self._aggregator.message_types if self._aggregator else ()
        if type(message) not in S.COORDINATOR_ACCEPTS[self._state] and not isinstance(
            message, aggregator_types
        ):
            return f"{kind} is not allowed in state {self._state!r}"
        if isinstance(message, Contribution | Refusal) and peer in self._answered:
            return f"duplicate or replayed {kind} from {peer!r}"
        return None

    def _offence(self, peer: str, reason: str) -> list[Outgoing]:
        """Record ``reason`` against ``peer`` and, if it is in the current phase, drop it."""
        in_phase = self._state in S.COLLECTING and peer in self._cohort_set and peer not in self._dropped
        self._log("drop", peer=peer, reason=reason, in_phase=in_phase)
        if not in_phase:
            return []
        self._dropped[peer] = reason
        return self._aggregator_call("dropped", peer) + self._progress()

    def _aggregator_call(self, method: str, *args: Any) -> list[Outgoing]:
        if self._aggregator is None:
            raise LocalProtocolError("no aggregation in progress")
        return list(getattr(self._aggregator, method)(*args))

    def _reset_phase(self) -> None:
        self._aggregator: SecureAggregator | None = None
        self._aggregator_kind = ""
        self._cohort: tuple[str, ...] = ()
        self._cohort_set: frozenset[str] = frozenset()
        self._answered: set[str] = set()
        self._dropped: dict[str, str] = {}

    def _transition(self, event: str) -> None:
        try:
            self._state = S.COORDINATOR_TRANSITIONS[(self._state, event)]
        except KeyError:
            raise LocalProtocolError(f"no transition for {event!r} in state {self._state!r}") from None

    def _message(self, cls: type[Message], round_: int, **fields: Any) -> Message:
        return cls(
            federation_id=self.federation_id,
            stage=self._stage,
            round=round_,
            attempt=self._attempt,
            sender=self.coordinator_id,
            **fields,
        )

    def _log(self, event: str, **detail: Any) -> None:
        round_ = -1 if self._state in (S.TOKENS, S.BEFORE_STAGE) else self._round
        self.events.append(
            {"event": event, "stage": self._stage, "round": round_, "attempt": self._attempt, **detail}
        )
