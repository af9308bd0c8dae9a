"""What the round machines need from the rest of the system: a learner, an organizer, a schedule.

``Learner`` is implemented by the model side (LoRA + DP-SGD), ``Organizer`` by ``fcit.dko``, and
``Schedule`` by ``ScenarioSchedule`` around an FCIT ``Scenario``. The protocols package imports
none of them, so the state machines can be tested with numpy fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from secure_fcit.errors import ConfigError
from secure_fcit.protocols.aggregation import Aggregate

__all__ = ["Learner", "Organizer", "StagePlan", "RoundOutcome", "Schedule", "ScenarioSchedule"]


@runtime_checkable
class Learner(Protocol):
    """A worker's local model and data, as the round machine sees them."""

    def identity_token(self, stage: int) -> np.ndarray:
        """Unit-norm mean instruction embedding of this stage's data, shape (d,)."""
        ...

    def num_samples(self, stage: int) -> int:
        """Training samples this worker holds in ``stage`` (0: none, the worker sits it out)."""
        ...

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        """Train slot ``slot`` from global ``weights`` (p,) and return the delta (p,)."""
        ...

    def refuse_reason(self, stage: int, round: int) -> str | None:
        """Why this worker declines the round (e.g. privacy budget exhausted), or None.

        ``round == -1`` asks about the stage's token phase (releasing the identity token)."""
        ...


@dataclass(frozen=True)
class StagePlan:
    """What DKO decided in a stage's token phase.

    The ``*_buckets`` fields are block indices of the token sum (``protocols.layout``): below the
    stage's starting slot count a known slot's block, from it on ``n_slots + SimHash bucket``.
    """

    tokens: np.ndarray  # (n_slots, d) float32, every global token after this stage's update
    active: tuple[int, ...]  # slots matched or opened by this stage's blocks
    opened: tuple[int, ...] = ()
    withheld_buckets: tuple[int, ...] = ()  # below k_min and not allowed by the policy
    incoherent_buckets: tuple[int, ...] = ()  # bucket mixed dissimilar tokens; not used
    undersized_buckets: tuple[int, ...] = ()  # unmatched, too few samples to open a slot; not used


@dataclass(frozen=True)
class RoundOutcome:
    """What DKO did with one round's aggregate."""

    applied: tuple[int, ...]
    withheld: tuple[int, ...]
    clients: dict[int, int] = field(default_factory=dict)  # active slot -> contributing clients


class Organizer(Protocol):
    """The server-side organizer: sees ``Aggregate`` objects only (see ``fcit.dko``)."""

    @property
    def dim(self) -> int: ...

    @property
    def n_buckets(self) -> int: ...

    @property
    def tau(self) -> float:
        """Cosine at which a worker's token joins a known slot's block of the token sum."""
        ...

    @property
    def slot_size(self) -> int: ...

    @property
    def tokens(self) -> np.ndarray: ...

    def plan(self, stage: int, aggregate: Aggregate, *, dp: bool = False) -> StagePlan: ...

    def global_weights(self, slots: Sequence[int]) -> np.ndarray: ...

    def update_length(self, n_active: int) -> int:
        """The length of a round's update sum over ``n_active`` slots (`protocols.layout`)."""
        ...

    def apply(self, stage: int, round: int, aggregate: Aggregate, *, dp: bool = False) -> RoundOutcome: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, snapshot: dict[str, Any]) -> None: ...


class Schedule(Protocol):
    """Who takes part when: the stage's token cohort and each round's sampled cohort."""

    @property
    def n_stages(self) -> int: ...

    def members(self, stage: int) -> tuple[str, ...]:
        """The workers of ``stage``: they get StageStart/SlotPlan and contribute tokens."""
        ...

    def cohort(self, stage: int, round: int, rng: np.random.Generator) -> tuple[str, ...]:  # public cohort draw
        """A round's cohort, a subset of ``members(stage)``, drawn with ``rng``."""
        ...


class ScenarioSchedule:
    """A ``Schedule`` over an FCIT ``Scenario`` (duck-typed: ``stages[i].clients``, ``cohort``).

    Client c is known on the wire as ``client_id(c)`` (default ``client-007`` style).
    """

    def __init__(self, scenario: Any, client_id: Callable[[int], str] | None = None) -> None:
        if not hasattr(scenario, "stages") or not callable(getattr(scenario, "cohort", None)):
            raise ConfigError("scenario must have .stages and .cohort(stage, round, rng)")
        self._scenario = scenario
        self._id = client_id or (lambda c: f"client-{c:03d}")

    @property
    def n_stages(self) -> int:
        return len(self._scenario.stages)

    def members(self, stage: int) -> tuple[str, ...]:
        return tuple(self._id(c) for c in self._scenario.stages[stage].clients)

    def cohort(self, stage: int, round: int, rng: np.random.Generator) -> tuple[str, ...]:  # public cohort draw
        return tuple(self._id(c) for c in self._scenario.cohort(stage, round, rng))
