"""The worker's round machine: checks every coordinator message is the one it expects next.

The worker trusts the coordinator with nothing but the protocol: a message of the wrong type for
its state, for another federation, stage, round or attempt, a replayed RoundStart, or an
aggregation kind other than the worker's own raises ``RemoteProtocolError`` and puts the worker in
``error`` (a later call raises ``LocalProtocolError``). In the token phase it sends its SimHash
bucket vector, in a round its update vector (layouts in ``layout``), both through its
``ClientAggregator``; it never sends a plaintext vector unless configured with the plaintext client.

It also holds the coordinator to the worker's own configuration, so that a lying coordinator gets
sums only:
- **Released once.** Right before the step after which a sum holding its input can complete, the
  worker marks that (stage, round, phase) released (``released``; ``on_release`` persists it). A
  later attempt of a released phase gets a fresh input or nothing: the token phase is refused (a
  token is never released twice); a round is retrained only by a learner that draws fresh DP noise
  and is charged again (``fresh_randomness``), else refused. Subtracting two sums therefore never
  cancels everyone but one client.
- **Cohort floor.** A cohort smaller than ``min_cohort`` is refused: the coordinator cannot isolate
  a client in a cohort of itself and a colluder.
- **Parameters.** ``n_buckets`` and ``tau`` must equal the worker's, the SimHash seed must be the
  public one of (federation, stage, attempt), and attempts are bounded by ``max_attempt``.
- **One broadcast.** Every sum is bound to the SHA-256 of the broadcast the worker trained on
  (``aggregation.state_digest``): clients sent different states cannot complete a sum together.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from secure_fcit.errors import (
    JournalError,
    LocalProtocolError,
    PrivacyError,
    ProtocolError,
    RemoteProtocolError,
)
from secure_fcit.protocols import states as S
from secure_fcit.protocols.aggregation import AggregationRound, ClientAggregator, state_digest
from secure_fcit.protocols.codec import decode
from secure_fcit.protocols.coordinator import DEFAULT_MAX_MESSAGE_SIZE
from secure_fcit.protocols.interfaces import Learner
from secure_fcit.protocols.layout import (
    choose_slot,
    public_hash_seed,
    rotation_seed,
    simhash_planes,
    token_block,
    token_vector,
    update_vector,
)
from secure_fcit.protocols.messages import (
    COORDINATOR_ID,
    Abort,
    Message,
    Refusal,
    RoundStart,
    SlotPlan,
    StageStart,
    StageSync,
    TokenUpload,
    UpdateUpload,
    check_id,
    check_int,
)
from secure_fcit.protocols.secagg import MaskingParams, threshold

__all__ = ["Worker"]

_TOKEN_NORM_TOLERANCE = 1e-3
_NO_DATA = "no training data in this stage"



class Worker:
    """Client side of the federation (see module docstring)."""

    def __init__(
        self,
        federation_id: str,
        client_id: str,
        learner: Learner,
        client_aggregator: ClientAggregator,
        *,
        coordinator_id: str = COORDINATOR_ID,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        min_cohort: int = 2,
        n_buckets: int | None = None,
        tau: float | None = None,
        max_attempt: int = 4,
        on_release: Callable[[dict[tuple[int, int, str], int]], None] | None = None,
    ) -> None:
        self.federation_id = check_id("federation_id", federation_id)
        self.client_id = check_id("client_id", client_id)
        self.coordinator_id = check_id("coordinator_id", coordinator_id)
        if not isinstance(client_aggregator, ClientAggregator):
            raise LocalProtocolError("client_aggregator must be a ClientAggregator")
        self.learner = learner
        self.aggregator = client_aggregator
        self.max_message_size = check_int("max_message_size", max_message_size, 64)
        #: the fewest cohort members this worker contributes with (its own floor, not the coordinator's)
        self.min_cohort = check_int("min_cohort", min_cohort, 2)
        self.n_buckets = None if n_buckets is None else check_int("n_buckets", n_buckets, 2)
        if tau is not None and not (isinstance(tau, int | float) and math.isfinite(tau) and 0 < tau <= 1):
            raise LocalProtocolError(f"tau must be in (0, 1], got {tau!r}")
        self.tau = tau
        self.max_attempt = check_int("max_attempt", max_attempt, 0)
        #: (stage, round, phase) -> attempt whose sum this worker let complete (see module docstring)
        self.released: dict[tuple[int, int, str], int] = {}
        self.on_release = on_release
        client_aggregator.release_hook = self._on_release
        self._state = S.IDLE
        self._error: str | None = None
        self._stage_key: tuple[int, int] | None = None  # (stage, attempt) of the last StageStart
        self._round_key: tuple[int, int] | None = None  # (round, attempt) of the last RoundStart
        self._tokens = np.zeros((0, 1), dtype=np.float32)
        self._active: tuple[int, ...] = ()
        self._token: np.ndarray | None = None
        self._n_samples = 0
        self.slots: dict[tuple[int, int], int] = {}  # (stage, round) -> slot trained
        #: (stage, round, attempt) of the last secure sum this worker began (round -1: a token
        #: phase). It never begins that sum or an earlier one again, even after ``restore`` of an
        #: older snapshot: a client process keeps it on disk before its first upload of a sum.
        self.started: tuple[int, int, int] | None = None

    @property
    def state(self) -> str:
        return self._state

    def receive_bytes(self, data: bytes) -> list[Message]:
        """Decode and handle bytes from the coordinator."""
        self._check_usable()
        try:
            message = decode(data, self.max_message_size)
        except RemoteProtocolError as exc:
            self._fail(str(exc))
            raise
        return self.receive(message)

    def receive(self, message: Message) -> list[Message]:
        """Handle a coordinator message; returns the messages to send back."""
        self._check_usable()
        try:
            return self._handle(message)
        except ProtocolError as exc:
            self._fail(str(exc))
            raise

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state between phases (``idle`` or ``ready``); the learner keeps its own."""
        if self._state not in (S.IDLE, S.READY):
            raise LocalProtocolError(f"snapshot() needs state idle or ready, the worker is {self._state!r}")
        return copy.deepcopy(
            {
                "client_id": self.client_id,
                "state": self._state,
                "stage_key": self._stage_key,
                "round_key": self._round_key,
                "tokens": self._tokens,
                "active": self._active,
                "token": self._token,
                "n_samples": self._n_samples,
                "slots": self.slots,
                "started": self.started,
                "released": self.released,
            }
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("client_id") != self.client_id or snapshot.get("state") not in (S.IDLE, S.READY):
            raise LocalProtocolError("snapshot is not of this worker between phases")
        snap = copy.deepcopy(snapshot)
        self._state, self._stage_key, self._round_key = snap["state"], snap["stage_key"], snap["round_key"]
        self._tokens, self._active, self._token = snap["tokens"], tuple(snap["active"]), snap["token"]
        self._n_samples, self.slots, self._error = snap["n_samples"], snap["slots"], None
        self.mark_started(snap.get("started"))
        self.restore_released(snap.get("released", {}))

    def restore_released(self, released: dict[tuple[int, int, str], int]) -> None:
        """Add release marks kept on disk; never forgets one this worker holds already."""
        for key, attempt in released.items():
            key = (int(key[0]), int(key[1]), str(key[2]))
            self.released[key] = max(int(attempt), self.released.get(key, int(attempt)))

    def mark_started(self, key: tuple[int, int, int] | None) -> None:
        """Never begin the sum ``key`` = (stage, round, attempt) or an earlier one (see ``started``)."""
        if key is not None:
            key = (int(key[0]), int(key[1]), int(key[2]))
            if self.started is None or key > self.started:
                self.started = key

    # ----------------------------------------------------------------- handling
    def _handle(self, message: Message) -> list[Message]:
        if not isinstance(message, Message):
            raise LocalProtocolError(f"not a protocol message: {type(message).__name__}")
        stage = f"stage {message.stage}"
        if message.sender != self.coordinator_id or message.federation_id != self.federation_id:
            raise RemoteProtocolError(
                f"{type(message).__name__} from {message.sender!r} of federation {message.federation_id!r}",
                stage=stage,
            )
        if isinstance(message, StageSync):
            return self._on_sync(message, stage)
        key = S.AGGREGATION if isinstance(message, self.aggregator.message_types) else type(message)
        next_state = S.WORKER_TRANSITIONS.get((self._state, key))
        if next_state is None:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} while {self._state!r}", stage=stage
            )
        self._check_binding(message, stage)
        if isinstance(message, StageStart | RoundStart):
            if message.attempt > self.max_attempt:
                raise RemoteProtocolError(
                    f"{type(message).__name__} attempt {message.attempt} exceeds this worker's max_attempt "
                    f"{self.max_attempt}: a coordinator re-running a phase that often is refused",
                    stage=stage,
                )
            key = (message.stage, message.round, message.attempt)
            if self.started is not None and key <= self.started:
                raise RemoteProtocolError(
                    f"{type(message).__name__} {key} would begin a secure sum again: this worker already "
                    f"began {self.started}",
                    stage=stage,
                )
            self.started = key
        if isinstance(message, StageStart):
            out = self._on_stage_start(message)
        elif isinstance(message, SlotPlan):
            out = self._on_slot_plan(message, stage)
        elif isinstance(message, RoundStart):
            out = self._on_round_start(message, stage)
        elif key == S.AGGREGATION:
            out = self.aggregator.receive(message)
        else:  # RoundEnd, StageEnd, Abort: the transition table says it all
            out = []
        self._state = next_state
        return out

    def _check_binding(self, message: Message, stage: str) -> None:
        """Stage/round/attempt binding: nothing replayed, nothing from another phase."""
        msg_stage = (message.stage, message.attempt)
        if isinstance(message, StageStart):
            if self._stage_key is not None and msg_stage <= self._stage_key:
                raise RemoteProtocolError(
                    f"StageStart {msg_stage} does not follow {self._stage_key}", stage=stage
                )
            return
        if self._stage_key is None or message.stage != self._stage_key[0]:
            raise RemoteProtocolError(f"{type(message).__name__} is not for the current stage", stage=stage)
        in_tokens = self._state == S.AWAIT_PLAN
        if isinstance(message, SlotPlan) or in_tokens:
            if message.attempt != self._stage_key[1] or message.round != -1:
                raise RemoteProtocolError("message of another token-phase attempt", stage=stage)
        elif isinstance(message, RoundStart):
            if self._round_key is not None and (message.round, message.attempt) <= self._round_key:
                raise RemoteProtocolError(
                    f"RoundStart {(message.round, message.attempt)} does not follow {self._round_key}",
                    stage=stage,
                )
        elif self._state == S.AWAIT_ROUND_END and not isinstance(message, Abort):
            if (message.round, message.attempt) != self._round_key:
                raise RemoteProtocolError("message of another round or attempt", stage=stage)

    def _on_sync(self, message: StageSync, stage: str) -> list[Message]:
        """Rejoin between phases: idle before stage ``message.stage``, or ready in it (see StageSync)."""
        if self._state not in (S.IDLE, S.READY):
            raise RemoteProtocolError(f"StageSync while {self._state!r}", stage=stage)
        if self._stage_key is not None and message.stage < self._stage_key[0]:
            raise RemoteProtocolError(
                f"StageSync to stage {message.stage} goes back from stage {self._stage_key[0]}", stage=stage
            )
        if self._tokens.shape[1] != message.tokens.shape[1] and self._tokens.size:
            raise RemoteProtocolError("StageSync tokens changed dimension", stage=stage)
        self._tokens, self._token = message.tokens, None
        if message.planned:
            self._stage_key = (message.stage, 0)
            self._round_key = (message.round, message.attempt - 1)
            self._active = message.active
            self._n_samples = check_int("num_samples", self.learner.num_samples(message.stage), 0)
            self._state = S.READY
        else:
            self._stage_key, self._round_key = (message.stage, message.attempt - 1), None
            self._active, self._n_samples = (), 0
            self._state = S.IDLE
        return []

    def _on_stage_start(self, message: StageStart) -> list[Message]:
        stage = f"stage {message.stage}"
        self._check_stage_parameters(message, stage)
        self._stage_key, self._round_key = (message.stage, message.attempt), None
        self._tokens, self._active, self._token = message.tokens, (), None
        self._check_kind(message.aggregation, message.stage)
        self._n_samples = check_int("num_samples", self.learner.num_samples(message.stage), 0)
        if self.client_id not in message.cohort:
            return []
        if self._n_samples == 0:
            return [self._reply(Refusal, message, reason=_NO_DATA)]
        released = self.released.get((message.stage, -1, "token"))
        if released is not None:
            return [self._reply(Refusal, message, reason=(
                f"this client's identity token for stage {message.stage} was released in attempt "
                f"{released}; a token is never released twice"))]
        if (floor := self._below_floor(message.cohort)) is not None:
            return [self._reply(Refusal, message, reason=floor)]
        reason = self.learner.refuse_reason(message.stage, -1)  # round -1: the token phase
        if reason is not None:
            return [self._reply(Refusal, message, reason=str(reason)[:1000])]
        token = self._identity_token(message.stage)
        planes = simhash_planes(message.hash_seed, message.n_buckets, token.size)
        block = token_block(token, message.tokens, message.tau, planes)
        weigh = getattr(self.learner, "token_weight", None)  # DP learners: the token mechanism's noisy count
        count = float(self._n_samples) if weigh is None else float(weigh(message.stage))
        if not (math.isfinite(count) and count >= 1.0):
            raise LocalProtocolError(f"token_weight must be a finite count >= 1, got {count!r}")
        vector = token_vector(token, count, block, len(message.tokens) + message.n_buckets)
        round_id = AggregationRound(message.federation_id, message.stage, -1, message.attempt, "token",
                                    state_digest(message.tokens, message))
        return self.aggregator.begin(
            round_id,
            message.cohort,
            vector,
            lambda payload, encoding: self._reply(TokenUpload, message, payload=payload, encoding=encoding),
        )

    def _on_slot_plan(self, message: SlotPlan, stage: str) -> list[Message]:
        if message.tokens.shape[1] != self._tokens.shape[1]:
            raise RemoteProtocolError("SlotPlan tokens changed dimension", stage=stage)
        self._tokens, self._active = message.tokens, message.active
        return []

    def _on_round_start(self, message: RoundStart, stage: str) -> list[Message]:
        self._round_key = (message.round, message.attempt)
        if self.client_id not in message.cohort:
            raise RemoteProtocolError("RoundStart sent to a worker outside its cohort", stage=stage)
        if message.active != self._active:
            raise RemoteProtocolError(
                f"RoundStart slots {message.active} differ from the plan's", stage=stage
            )
        self._check_kind(message.aggregation, message.stage)
        reason = self._below_floor(message.cohort)
        released = self.released.get((message.stage, message.round, "update"))
        if reason is None and released is not None and not getattr(self.learner, "fresh_randomness", False):
            reason = (f"this client's update for stage {message.stage} round {message.round} was released in "
                      f"attempt {released}; without fresh DP noise it cannot contribute to a second sum")
        if reason is None:
            reason = (
                _NO_DATA if self._n_samples == 0 else self.learner.refuse_reason(message.stage, message.round)
            )
        if reason is not None:
            return [self._reply(Refusal, message, reason=str(reason)[:1000])]
        slot = choose_slot(self._identity_token(message.stage), self._tokens, self._active)
        position = self._active.index(slot)
        weights = np.array(message.weights[position], copy=True)
        round_id = AggregationRound(
            message.federation_id, message.stage, message.round, message.attempt, "update",
            state_digest(self._tokens, message),
        )
        if getattr(self.learner, "distributed", False):
            try:
                vector = self.learner.distributed_contribution(
                    message.stage, message.round, slot, weights, position=position, n_active=len(self._active),
                    **self._distributed_info(message, position))
            except (PrivacyError, JournalError) as exc:  # budget, or no encoding fits: refused, never sent
                return [self._reply(Refusal, message, reason=str(exc)[:1000])]
            self.slots[(message.stage, message.round)] = slot
            return self.aggregator.begin(
                round_id, message.cohort, vector,
                lambda payload, encoding: self._reply(UpdateUpload, message, payload=payload, encoding=encoding),
            )
        try:
            delta = np.asarray(self.learner.train(message.stage, message.round, slot, weights))
        except (PrivacyError, JournalError) as exc:  # a budget planned at train time: refused, nothing sent
            return [self._reply(Refusal, message, reason=str(exc)[:1000])]
        if delta.shape != weights.shape or not np.isfinite(delta).all():
            raise LocalProtocolError(
                f"learner returned a delta of shape {delta.shape} (want {weights.shape}) or non-finite values",
                stage=stage,
            )
        self.slots[(message.stage, message.round)] = slot
        weigh = getattr(self.learner, "update_weight", None)  # DP learners: 1, their n_k stays private
        weight = self._n_samples if weigh is None else check_int("update_weight", weigh(message.stage), 1)
        vector = update_vector(delta, weight, position, len(self._active))
        return self.aggregator.begin(
            round_id,
            message.cohort,
            vector,
            lambda payload, encoding: self._reply(UpdateUpload, message, payload=payload, encoding=encoding),
        )

    # ----------------------------------------------------------------- helpers
    def _distributed_info(self, message: RoundStart, position: int) -> dict[str, Any]:
        """What sizes a distributed-DP share: the cohort, the survivors every honest client insists
        on (t of its neighbourhood; fewer and it refuses to unmask, so no sum is released), the
        colluders assumed, and the round's fixed point. Only masking carries distributed DP."""
        params = getattr(self.aggregator, "params", None)
        if self.aggregator.kind != "masking" or not isinstance(params, MaskingParams):
            raise LocalProtocolError(f"distributed DP needs masking, this worker aggregates with "
                                     f"{self.aggregator.kind!r}", stage=f"stage {message.stage}")
        n = len(message.cohort)
        size = n if params.degree == 0 else min(n, params.degree + 1)
        fp = params.check_cohort(n)
        return {"cohort_size": n, "t": threshold(params.threshold, size), "colluders": min(params.colluders, size - 1),
                "frac_bits": fp.frac_bits, "bound": fp.bound,
                "rotation_seed": rotation_seed(message.federation_id, message.stage, message.round,
                                               message.attempt, position)}

    def _on_release(self, round_id: AggregationRound) -> None:
        """The aggregator is about to let a sum holding this worker's input complete."""
        key = round_id.phase_key
        previous = self.released.get(key)
        if previous is not None and previous != round_id.attempt and key[2] == "token":
            raise LocalProtocolError(
                f"identity token of stage {key[0]} already released in attempt {previous}", stage=f"stage {key[0]}"
            )
        self.released[key] = round_id.attempt
        if self.on_release is not None:  # persist before the step is taken; a failure stops it
            self.on_release(dict(self.released))

    def _below_floor(self, cohort: tuple[str, ...]) -> str | None:
        if len(cohort) < self.min_cohort:
            return (f"a cohort of {len(cohort)} is below this client's floor of {self.min_cohort} "
                    "(privacy.min_cohort): too small to hide one client's input")
        return None

    def _check_stage_parameters(self, message: StageStart, stage: str) -> None:
        """StageStart parameters against the worker's own configuration (mismatch: refused)."""
        wrong = []
        if self.n_buckets is not None and message.n_buckets != self.n_buckets:
            wrong.append(f"n_buckets {message.n_buckets} (this worker's fcit.n_buckets is {self.n_buckets})")
        if self.tau is not None and abs(message.tau - self.tau) > 1e-9:
            wrong.append(f"tau {message.tau:g} (this worker's fcit.tau is {self.tau:g})")
        if message.hash_seed != public_hash_seed(self.federation_id, message.stage, message.attempt):
            wrong.append("a SimHash seed other than the public one of (federation, stage, attempt)")
        if wrong:
            raise RemoteProtocolError("StageStart carries " + "; ".join(wrong), stage=stage)

    def _identity_token(self, stage: int) -> np.ndarray:
        if self._token is None:
            token = np.asarray(self.learner.identity_token(stage), dtype=np.float64)
            dim = self._tokens.shape[1]
            if token.shape != (dim,) or not np.isfinite(token).all():
                raise LocalProtocolError(
                    f"identity token must be finite with shape ({dim},), got {token.shape}"
                )
            norm = float(np.linalg.norm(token))
            if abs(norm - 1.0) > _TOKEN_NORM_TOLERANCE:
                raise LocalProtocolError(f"identity token must be unit-norm, has norm {norm:.4f}")
            self._token = token / norm
        return self._token

    def _check_kind(self, announced: str, stage: int) -> None:
        # The worker's own configuration decides how its vectors are protected; a coordinator asking
        # for another kind (say plaintext instead of masking) is refused, so it cannot downgrade us.
        if announced != self.aggregator.kind:
            raise RemoteProtocolError(
                f"coordinator announces {announced!r} aggregation; this worker is configured for "
                f"{self.aggregator.kind!r}",
                stage=f"stage {stage}",
            )

    def _reply(self, cls: type[Message], to: Message, **fields: Any) -> Message:
        return cls(
            federation_id=self.federation_id,
            stage=to.stage,
            round=to.round,
            attempt=to.attempt,
            sender=self.client_id,
            **fields,
        )

    def _check_usable(self) -> None:
        if self._state == S.ERROR:
            raise LocalProtocolError(f"worker {self.client_id!r} is in error after: {self._error}")

    def _fail(self, reason: str) -> None:
        self._state, self._error = S.ERROR, reason
