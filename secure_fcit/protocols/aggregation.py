"""The secure-aggregation interface, the ``Aggregate`` it produces, and the plaintext baseline.

The organizer (DKO) accepts only ``Aggregate`` objects, and only aggregators can build one:
``Aggregate.__init__`` demands the module-private capability ``_AGGREGATOR_KEY``. The rule is that
only aggregator modules (this one, and later ``secagg`` and ``ckks``) import that name; a grep for
it is the audit. That makes "the organizer sees sums only" a property of the types rather than of
the call sites.

Both sides are sans-IO. The coordinator side (``SecureAggregator``) is told the cohort and the
vector length, fed the messages of cohort members and their drops, and answers with messages to
send; it is complete when every cohort member has contributed or dropped and at least
``min_contributors`` contributed. The worker side (``ClientAggregator``) turns the worker's vector
into messages and answers later phases. Plaintext needs one message per worker; masking and CKKS
use several request/response phases through the same ``receive`` methods and their own message
types (``message_types``), which the coordinator and the worker route to them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols.messages import (
    Contribution,
    Message,
    TokenUpload,
    UpdateUpload,
    check_bytes,
    check_id,
    check_ids,
    check_int,
    message_type,
)

__all__ = [
    "AGGREGATION_KINDS",
    "PHASES",
    "AggregationRound",
    "Aggregate",
    "Outgoing",
    "UploadFactory",
    "SecureAggregator",
    "ClientAggregator",
    "PlaintextAggregator",
    "PlaintextClient",
    "SignedList",
    "ListSignature",
    "CONTRIBUTION_TYPES",
    "state_digest",
]

AGGREGATION_KINDS: tuple[str, ...] = ("plaintext", "masking", "ckks")
PHASES: tuple[str, ...] = ("token", "update")
_STAGE = "aggregation"

Outgoing = tuple[str, Message]
"""(recipient id, message)."""
UploadFactory = Callable[[np.ndarray, str], Message]
"""Builds the worker's contribution message (TokenUpload or UpdateUpload) from (payload, encoding)."""


class _Capability:
    """Proof of being an aggregator. Only aggregator modules import ``_AGGREGATOR_KEY``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<aggregator capability>"


_AGGREGATOR_KEY = _Capability()


@dataclass(frozen=True)
class AggregationRound:
    """What one secure sum is bound to: federation, stage, round (-1: token phase), attempt, phase,
    and ``context``: the SHA-256 of the coordinator's broadcast this sum answers (``state_digest``:
    the global tokens, the slot weights, the cohort). Both sides put it into every signature, HKDF
    label and AEAD datum of the sum, so clients that were sent different global states cannot
    complete one sum together (Pasquini et al., CCS 2022: model inconsistency)."""

    federation_id: str
    stage: int
    round: int
    attempt: int
    phase: str
    context: bytes = b""

    def __post_init__(self) -> None:
        check_id("federation_id", self.federation_id)
        check_int("stage", self.stage, 0)
        check_int("round", self.round, -1)
        check_int("attempt", self.attempt, 0)
        if self.phase not in PHASES:
            raise ConfigError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if (self.phase == "token") != (self.round == -1):
            raise ConfigError("the token phase has round -1 and only it does")
        if not isinstance(self.context, bytes) or len(self.context) not in (0, 32):
            raise ConfigError("context must be empty or a 32-byte state digest")

    @property
    def phase_key(self) -> tuple[int, int, str]:
        """(stage, round, phase): what a client's input is for, whatever the attempt."""
        return (self.stage, self.round, self.phase)

    def binding(self, protocol: str) -> bytes:
        """Bytes naming this sum for ``protocol``: signatures, HKDF info and AEAD data carry them,
        so nothing signed or sealed for one sum passes in another."""
        return json.dumps(
            [f"secure-fcit/{protocol}/v2", self.federation_id, self.stage, self.round, self.attempt, self.phase,
             self.context.hex()],
            separators=(",", ":"),
        ).encode()

    def binds(self, message: Message) -> bool:
        """Whether ``message`` belongs to this secure sum."""
        return (message.federation_id, message.stage, message.round, message.attempt) == (
            self.federation_id,
            self.stage,
            self.round,
            self.attempt,
        )


def state_digest(tokens: np.ndarray, start: Message) -> bytes:
    """SHA-256 of a phase's broadcast: the global tokens a worker matches against and the
    ``StageStart``/``RoundStart`` itself (cohort, slot weights, SimHash parameters, attempt).
    The ``context`` of the phase's ``AggregationRound`` on both sides."""
    from secure_fcit.protocols.codec import encode  # the codec registers this module's messages

    tokens = np.ascontiguousarray(tokens, dtype="<f4")
    digest = hashlib.sha256(b"secure-fcit/state/v1|")
    digest.update(json.dumps(list(tokens.shape)).encode() + b"|")
    digest.update(tokens.tobytes())
    digest.update(b"|")
    digest.update(encode(start))
    return digest.digest()


class Aggregate:
    """The result of one secure sum: the only input derived from client data the organizer takes.

    ``vector`` is the float64 sum of the contributors' vectors; ``contributors`` are their ids.
    Build one only inside an aggregator (the constructor demands ``_AGGREGATOR_KEY``).
    """

    __slots__ = ("_round_id", "_vector", "_contributors", "_kind")

    def __init__(
        self,
        key: object,
        *,
        round_id: AggregationRound,
        vector: np.ndarray,
        contributors: Sequence[str],
        kind: str,
    ) -> None:
        if key is not _AGGREGATOR_KEY:
            raise LocalProtocolError(
                "Aggregate objects are built by secure aggregators only; pass the sum through a "
                "SecureAggregator instead of constructing it",
                stage=_STAGE,
            )
        if not isinstance(round_id, AggregationRound):
            raise ConfigError("round_id must be an AggregationRound")
        if kind not in AGGREGATION_KINDS:
            raise ConfigError(f"kind must be one of {AGGREGATION_KINDS}, got {kind!r}")
        ids = tuple(sorted(check_id("contributor", c) for c in contributors))
        if not ids or len(set(ids)) != len(ids):
            raise ConfigError("an Aggregate needs at least one contributor, each listed once")
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or not np.isfinite(vector).all():
            raise ConfigError("vector must be a finite 1-D numpy array")
        frozen = np.array(vector, dtype=np.float64, copy=True)
        frozen.setflags(write=False)
        for name, value in (
            ("_round_id", round_id),
            ("_vector", frozen),
            ("_contributors", ids),
            ("_kind", kind),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Aggregate is immutable")

    @property
    def round_id(self) -> AggregationRound:
        return self._round_id

    @property
    def vector(self) -> np.ndarray:
        """The summed vector (float64, read-only)."""
        return self._vector

    @property
    def contributors(self) -> tuple[str, ...]:
        return self._contributors

    @property
    def n_contributors(self) -> int:
        return len(self._contributors)

    @property
    def kind(self) -> str:
        return self._kind

    def __repr__(self) -> str:
        return (
            f"Aggregate(kind={self._kind!r}, round_id={self._round_id}, n_contributors="
            f"{self.n_contributors}, length={self._vector.size})"
        )


class SecureAggregator(ABC):
    """Coordinator side of one secure sum; a fresh instance per phase (see module docstring)."""

    kind: ClassVar[str]
    encoding: ClassVar[str]
    message_types: ClassVar[tuple[type[Message], ...]] = ()  # extra phase messages it consumes

    def __init__(self, min_contributors: int = 1) -> None:
        self.min_contributors = check_int("min_contributors", min_contributors, 1)

    @abstractmethod
    def begin(self, round_id: AggregationRound, cohort: Sequence[str], vector_length: int) -> list[Outgoing]:
        """Start a sum over ``cohort``'s vectors of ``vector_length``; returns messages to send."""

    @abstractmethod
    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        """Take a cohort member's message; ``RemoteProtocolError`` if the sender broke the protocol."""

    @abstractmethod
    def dropped(self, sender: str) -> list[Outgoing]:
        """A cohort member is gone (lost, refused, or dropped for misbehaviour)."""

    @abstractmethod
    def result(self) -> Aggregate | None:
        """The aggregate once complete, else None (see ``failure`` for a sum that cannot complete)."""

    @property
    @abstractmethod
    def failure(self) -> str | None:
        """Why this sum can no longer complete (too few contributors left), or None."""

    @abstractmethod
    def pending(self) -> frozenset[str]:
        """Cohort members whose next message this sum is waiting for (none once it is over).

        A transport that times a phase out drops exactly these: a member that already answered
        its current step is never dropped for someone else's silence.
        """


class ClientAggregator(ABC):
    """Worker side of secure sums; one instance per worker, ``begin`` once per phase.

    ``release_hook`` (set by the worker) is called with the sum's ``AggregationRound`` right before
    the step after which a sum holding this client's input can complete: the unmask shares
    (masking), the list signature (CKKS), the upload itself (plaintext). The worker persists a
    "released" mark there, so the same input never enters a second sum that can complete; if the
    hook raises, the step is not taken.
    """

    kind: ClassVar[str]
    message_types: ClassVar[tuple[type[Message], ...]] = ()
    release_hook: Callable[[AggregationRound], None] | None = None

    def _released(self, round_id: AggregationRound) -> None:
        if self.release_hook is not None:
            self.release_hook(round_id)

    @abstractmethod
    def begin(
        self, round_id: AggregationRound, cohort: Sequence[str], vector: np.ndarray, upload: UploadFactory
    ) -> list[Message]:
        """Start contributing ``vector``; returns the messages to send to the coordinator."""

    @abstractmethod
    def receive(self, message: Message) -> list[Message]:
        """Answer a later phase's message from the coordinator."""


CONTRIBUTION_TYPES: dict[str, type[Contribution]] = {"token": TokenUpload, "update": UpdateUpload}
"""The contribution message of each phase."""
SIGNATURE_BYTES = 64


@message_type
class SignedList(Message):
    """Coordinator -> clients: a list of cohort members for each to sign, once per sum (masking:
    who sent a masked input; CKKS: whose ciphertexts the decryptor will sum)."""

    members: tuple[str, ...]

    def _validate(self) -> None:
        check_ids("members", self.members)


@message_type
class ListSignature(Message):
    """Client -> coordinator: its Ed25519 signature of the ``SignedList`` it was sent."""

    signature: bytes

    def _validate(self) -> None:
        check_bytes("signature", self.signature, SIGNATURE_BYTES)


class PlaintextAggregator(SecureAggregator):
    """INSECURE: the coordinator sees every worker's vector in the clear. Baselines and tests only.

    Its aggregates say ``kind == "plaintext"``; the deployment config refuses it unless enabled
    explicitly. A contributor who is dropped later (e.g. for a replayed message) is taken out of
    the sum: in plaintext that is possible, and it keeps the offender's input out of the result.
    """

    kind: ClassVar[str] = "plaintext"
    encoding: ClassVar[str] = "plaintext-f64"

    def __init__(self, min_contributors: int = 1) -> None:
        super().__init__(min_contributors)
        self._round: AggregationRound | None = None
        self._cohort: frozenset[str] = frozenset()
        self._length = 0
        self._vectors: dict[str, np.ndarray] = {}
        self._dropped: set[str] = set()
        self._result: Aggregate | None = None

    def begin(self, round_id: AggregationRound, cohort: Sequence[str], vector_length: int) -> list[Outgoing]:
        if self._round is not None:
            raise LocalProtocolError("begin() called twice; use a fresh aggregator per phase", stage=_STAGE)
        if not isinstance(round_id, AggregationRound):
            raise ConfigError("round_id must be an AggregationRound")
        self._cohort = frozenset(check_id("cohort member", c) for c in cohort)
        self._length = check_int("vector_length", vector_length, 1)
        self._round = round_id
        return []

    def _check_open(self) -> AggregationRound:
        if self._round is None:
            raise LocalProtocolError("aggregator used before begin()", stage=_STAGE)
        if self._result is not None:
            raise LocalProtocolError("aggregation is already complete", stage=_STAGE)
        return self._round

    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        round_id = self._check_open()
        if sender not in self._cohort:
            raise RemoteProtocolError(f"{sender!r} is not in this sum's cohort", stage=_STAGE)
        if sender in self._dropped:
            raise RemoteProtocolError(f"{sender!r} was already dropped from this sum", stage=_STAGE)
        if sender in self._vectors:
            raise RemoteProtocolError(f"duplicate contribution from {sender!r}", stage=_STAGE)
        expected = CONTRIBUTION_TYPES[round_id.phase]
        if (
            not isinstance(message, Contribution)
            or type(message) is not expected
            or message.sender != sender
            or not round_id.binds(message)
        ):
            raise RemoteProtocolError(
                f"expected a {expected.__name__} from {sender!r} for {round_id}, got {message!r:.200}",
                stage=_STAGE,
            )
        if message.encoding != self.encoding or message.payload.dtype != np.float64:
            raise RemoteProtocolError(
                f"{sender!r} sent encoding {message.encoding!r}; this sum is {self.encoding}", stage=_STAGE
            )
        if message.payload.size != self._length:
            raise RemoteProtocolError(
                f"{sender!r} sent {message.payload.size} values; this sum takes {self._length}", stage=_STAGE
            )
        self._vectors[sender] = message.payload
        return []

    def dropped(self, sender: str) -> list[Outgoing]:
        self._check_open()
        if sender not in self._cohort:
            raise LocalProtocolError(f"{sender!r} is not in this sum's cohort", stage=_STAGE)
        self._dropped.add(sender)
        self._vectors.pop(sender, None)
        return []

    def pending(self) -> frozenset[str]:
        if self._round is None or self._result is not None or self.failure is not None:
            return frozenset()
        return frozenset(self._cohort - self._dropped - set(self._vectors))

    @property
    def failure(self) -> str | None:
        if self._round is None:
            return None
        possible = len(self._cohort - self._dropped)
        if possible < self.min_contributors:
            return (
                f"only {possible} of {len(self._cohort)} cohort members can still contribute; "
                f"min_contributors={self.min_contributors}"
            )
        return None

    def result(self) -> Aggregate | None:
        if self._result is not None:
            return self._result
        if self._round is None or self.failure is not None:
            return None
        if len(self._vectors) + len(self._dropped) < len(self._cohort):
            return None
        total = np.zeros(self._length, dtype=np.float64)
        for sender in sorted(self._vectors):  # fixed order: the float sum is reproducible
            total += self._vectors[sender]
        self._result = Aggregate(
            _AGGREGATOR_KEY,
            round_id=self._round,
            vector=total,
            contributors=list(self._vectors),
            kind=self.kind,
        )
        return self._result


class PlaintextClient(ClientAggregator):
    """INSECURE worker side of ``PlaintextAggregator``: sends the vector itself."""

    kind: ClassVar[str] = "plaintext"

    @staticmethod
    def prepare(vector: np.ndarray) -> np.ndarray:
        """The payload for ``vector``: a finite float64 copy."""
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or not np.isfinite(vector).all():
            raise LocalProtocolError("the contribution must be a finite 1-D numpy array", stage=_STAGE)
        return np.array(vector, dtype=np.float64, copy=True)

    def begin(
        self, round_id: AggregationRound, cohort: Sequence[str], vector: np.ndarray, upload: UploadFactory
    ) -> list[Message]:
        payload = self.prepare(vector)
        self._released(round_id)  # the coordinator holds the vector as soon as it is sent
        return [upload(payload, PlaintextAggregator.encoding)]

    def receive(self, message: Message) -> list[Message]:
        raise RemoteProtocolError(
            f"plaintext aggregation has no further phases; unexpected {type(message).__name__}", stage=_STAGE
        )
