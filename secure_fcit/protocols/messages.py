"""The federation's messages: frozen dataclasses, validated on construction.

Every message names its federation, stage, round (-1 for stage-level messages), attempt (a retried
phase gets a fresh attempt number, so a late message of the failed attempt cannot pass for one of
the retry) and sender. Field names live here only: the codec derives the wire format from these
dataclasses. Construction with a bad value raises ``ConfigError``; the codec turns that into a
``RemoteProtocolError`` when the values came off the wire.

Arrays are stored as read-only little-endian copies, so a message cannot change after it was
validated. Aggregation protocols with more phases (masking, CKKS) add their own message types with
``register_message``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

import numpy as np

from secure_fcit.errors import ConfigError

__all__ = [
    "COORDINATOR_ID",
    "MESSAGE_TYPES",
    "ROUND_STATUSES",
    "register_message",
    "message_type",
    "check_bytes",
    "Message",
    "Contribution",
    "StageStart",
    "TokenUpload",
    "SlotPlan",
    "StageSync",
    "RoundStart",
    "UpdateUpload",
    "Refusal",
    "RoundEnd",
    "StageEnd",
    "Abort",
]

COORDINATOR_ID = "coordinator"
ROUND_STATUSES: tuple[str, ...] = ("applied", "aborted")
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 1000
MAX_COHORT = 100_000
_ID_RE = re.compile(r"[A-Za-z0-9._:@/-]+\Z")
_FLOAT_DTYPES = ("<f4", "<f8")

MESSAGE_TYPES: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound="type[Message]")


def register_message(cls: _M) -> _M:
    """Add a message class to the codec's registry (its wire name is the class name)."""
    name = cls.__name__
    if name in MESSAGE_TYPES and MESSAGE_TYPES[name] is not cls:
        raise ConfigError(f"message type {name!r} is already registered")
    MESSAGE_TYPES[name] = cls
    return cls


def message_type(cls: type) -> type:
    """Decorator for a message class: a frozen keyword-only dataclass, registered with the codec."""
    return register_message(dataclass(frozen=True, eq=False, kw_only=True, repr=False)(cls))


_message = message_type


def check_id(name: str, value: object) -> str:
    """A federation/client identifier: 1-128 characters of [A-Za-z0-9._:@/-]."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS or not _ID_RE.match(value):
        raise ConfigError(
            f"{name} must be 1-{MAX_ID_CHARS} characters of letters, digits and ._:@/-, got {value!r:.80}"
        )
    return value


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r:.80}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be an integer <= {maximum}, got {value!r:.80}")
    return value


def check_bytes(name: str, value: object, size: int) -> bytes:
    """A ``bytes`` field of exactly ``size`` bytes (keys, signatures, seeds)."""
    if not isinstance(value, bytes) or len(value) != size:
        raise ConfigError(f"{name} must be {size} bytes")
    return value


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ConfigError(f"{name} must be a string of at most {MAX_TEXT_CHARS} characters")
    return value


def check_ids(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_COHORT:
        raise ConfigError(f"{name} must be a tuple of at most {MAX_COHORT} ids")
    for item in value:
        check_id(f"{name} entry", item)
    if len(set(value)) != len(value):
        raise ConfigError(f"{name} lists an id more than once")
    return value


def check_slots(name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise ConfigError(f"{name} must be a tuple of slot indices")
    for item in value:
        check_int(f"{name} entry", item, 0)
    if any(b <= a for a, b in zip(value, value[1:], strict=False)):
        raise ConfigError(f"{name} must be strictly increasing, got {value!r:.80}")
    return value


def freeze_array(name: str, value: object, dtypes: tuple[str, ...], ndim: int) -> np.ndarray:
    """A read-only little-endian copy of ``value``; float arrays must be finite."""
    if not isinstance(value, np.ndarray):
        raise ConfigError(f"{name} must be a numpy array, got {type(value).__name__}")
    wanted = next((np.dtype(d) for d in dtypes if value.dtype == np.dtype(d)), None)
    if wanted is None:
        raise ConfigError(f"{name} must have dtype in {dtypes}, got {value.dtype.str}")
    if value.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")
    if wanted.kind == "f" and not np.isfinite(value).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    frozen = np.array(value, dtype=wanted.newbyteorder("<"), order="C", copy=True)
    frozen.setflags(write=False)
    return frozen


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Message:
    """Fields every message carries; ``stage_level`` messages have ``round == -1``."""

    stage_level: ClassVar[bool | None] = None  # None: either stage- or round-level
    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {}  # field -> (dtypes, ndim)

    federation_id: str
    stage: int
    round: int
    attempt: int = 0
    sender: str

    def __post_init__(self) -> None:
        check_id("federation_id", self.federation_id)
        check_id("sender", self.sender)
        check_int("stage", self.stage, 0)
        check_int("round", self.round, -1)
        check_int("attempt", self.attempt, 0)
        if self.stage_level is True and self.round != -1:
            raise ConfigError(f"{type(self).__name__} is a stage-level message: round must be -1")
        if self.stage_level is False and self.round < 0:
            raise ConfigError(f"{type(self).__name__} is a round-level message: round must be >= 0")
        for name, (dtypes, ndim) in self.arrays.items():
            object.__setattr__(self, name, freeze_array(name, getattr(self, name), dtypes, ndim))
        self._validate()

    def _validate(self) -> None:
        """Per-type checks; subclasses override."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # arrays make messages unhashable on purpose

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = f"array{value.shape}:{value.dtype.str}" if isinstance(value, np.ndarray) else repr(value)
            parts.append(f"{f.name}={shown:.60}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _check_tokens(tokens: np.ndarray) -> None:
    if tokens.shape[1] < 1:
        raise ConfigError(f"tokens must have dimension d >= 1, got shape {tokens.shape}")


@_message
class StageStart(Message):
    """Coordinator -> stage members: start the token phase of a stage.

    ``tokens`` are the global identity tokens so far, shape (n_slots, d), possibly (0, d); a
    worker whose token has cosine >= ``tau`` with one of them puts it in that slot's block of the
    token sum, any other worker in its SimHash bucket (``protocols.layout``);
    ``hash_seed`` (32 public bytes) and ``n_buckets`` (a power of two) define the SimHash;
    ``cohort`` is who contributes to the token sum; ``aggregation`` names the secure-aggregation
    kind, so a worker can refuse a weaker one than it is configured for.
    """

    stage_level: ClassVar[bool | None] = True
    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"tokens": (_FLOAT_DTYPES[:1], 2)}

    tokens: np.ndarray
    hash_seed: bytes
    n_buckets: int
    tau: float
    cohort: tuple[str, ...]
    aggregation: str

    def _validate(self) -> None:
        _check_tokens(self.tokens)
        tau = self.tau
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) or not 0 < tau <= 1:
            raise ConfigError(f"tau must be a number in (0, 1], got {tau!r:.40}")
        if not isinstance(self.hash_seed, bytes) or len(self.hash_seed) != 32:
            raise ConfigError("hash_seed must be exactly 32 bytes")
        check_int("n_buckets", self.n_buckets, 2, 1 << 20)
        if self.n_buckets & (self.n_buckets - 1):
            raise ConfigError(f"n_buckets must be a power of two, got {self.n_buckets}")
        check_ids("cohort", self.cohort)
        check_id("aggregation", self.aggregation)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Contribution(Message):
    """A worker's input to a secure sum: ``payload`` in the aggregator's ``encoding``.

    The payload goes to the aggregator, never to the organizer. Its dtype depends on the
    encoding: float64 for plaintext, uint32 for fixed-point masking, uint8 for serialized CKKS.
    """

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"payload": (("<f8", "<u4", "|u1"), 1)}

    payload: np.ndarray
    encoding: str

    def _validate(self) -> None:
        check_id("encoding", self.encoding)


@_message
class TokenUpload(Contribution):
    """Worker -> coordinator, token phase: the worker's bucket vector (see ``layout``)."""

    stage_level: ClassVar[bool | None] = True


@_message
class SlotPlan(Message):
    """Coordinator -> stage members: the global tokens after DKO and the stage's active slots."""

    stage_level: ClassVar[bool | None] = True
    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"tokens": (_FLOAT_DTYPES[:1], 2)}

    tokens: np.ndarray
    active: tuple[int, ...]

    def _validate(self) -> None:
        _check_tokens(self.tokens)
        check_slots("active", self.active)
        if self.active and self.active[-1] >= self.tokens.shape[0]:
            raise ConfigError(f"active slot {self.active[-1]} does not exist ({self.tokens.shape[0]} slots)")


@_message
class StageSync(Message):
    """Coordinator -> a stage member that (re)connected between phases: where the stream stands.

    ``planned``: stage ``stage`` has its slot plan (``tokens``, ``active``; token phase attempt
    ``attempt``) and its next round is ``round``; the worker joins it ready to train. Otherwise
    stage ``stage`` has not started (``round`` -1) and the worker waits idle for its StageStart.
    """

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"tokens": (_FLOAT_DTYPES[:1], 2)}

    tokens: np.ndarray
    active: tuple[int, ...]
    planned: bool

    def _validate(self) -> None:
        _check_tokens(self.tokens)
        check_slots("active", self.active)
        if not isinstance(self.planned, bool) or self.planned != (self.round >= 0):
            raise ConfigError("StageSync: planned goes with a round >= 0, unplanned with round -1")
        if self.active and self.active[-1] >= self.tokens.shape[0]:
            raise ConfigError(f"active slot {self.active[-1]} does not exist ({self.tokens.shape[0]} slots)")


@_message
class RoundStart(Message):
    """Coordinator -> round cohort: train on your slot; ``weights[j]`` is slot ``active[j]``."""

    stage_level: ClassVar[bool | None] = False
    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"weights": (_FLOAT_DTYPES[:1], 2)}

    cohort: tuple[str, ...]
    active: tuple[int, ...]
    weights: np.ndarray
    aggregation: str

    def _validate(self) -> None:
        check_ids("cohort", self.cohort)
        check_slots("active", self.active)
        if not self.active:
            raise ConfigError("a round needs at least one active slot")
        if self.weights.shape[0] != len(self.active) or self.weights.shape[1] < 1:
            raise ConfigError(
                f"weights must have shape ({len(self.active)}, p >= 1) for {len(self.active)} active "
                f"slots, got {self.weights.shape}"
            )
        check_id("aggregation", self.aggregation)


@_message
class UpdateUpload(Contribution):
    """Worker -> coordinator, one round: the worker's update vector (see ``layout``)."""

    stage_level: ClassVar[bool | None] = False


@_message
class Refusal(Message):
    """Worker -> coordinator: the worker declines this phase (e.g. privacy budget exhausted)."""

    reason: str

    def _validate(self) -> None:
        check_text("reason", self.reason)


@_message
class RoundEnd(Message):
    """Coordinator -> round cohort: the round is over, ``applied`` or ``aborted`` (with a reason)."""

    stage_level: ClassVar[bool | None] = False

    status: str
    reason: str = ""

    def _validate(self) -> None:
        if self.status not in ROUND_STATUSES:
            raise ConfigError(f"status must be one of {ROUND_STATUSES}, got {self.status!r:.40}")
        check_text("reason", self.reason)


@_message
class StageEnd(Message):
    """Coordinator -> stage members: the stage's rounds are over."""

    stage_level: ClassVar[bool | None] = True


@_message
class Abort(Message):
    """Coordinator -> stage members: the stage (this attempt) is abandoned, with a reason."""

    stage_level: ClassVar[bool | None] = True

    reason: str

    def _validate(self) -> None:
        check_text("reason", self.reason)
