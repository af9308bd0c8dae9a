"""Shared helpers of the protocol and DKO tests: a numpy FakeLearner, a list schedule, builders."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from secure_fcit.config import PrivacyConfig
from secure_fcit.fcit.dko import DKOConfig, DKOOrganizer
from secure_fcit.protocols import (
    Aggregate,
    AggregationRound,
    Coordinator,
    PlaintextAggregator,
    PlaintextClient,
    TokenUpload,
    UpdateUpload,
    Worker,
)
from secure_fcit.protocols.factory import build_aggregation

FED = "fed-test"
DIM = 16
SLOT = 6


def task_token(task: int, dim: int = DIM) -> np.ndarray:
    """One fixed random unit vector per task."""
    v = np.random.default_rng(1000 + task).standard_normal(dim)
    return v / np.linalg.norm(v)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


@dataclass
class FakeLearner:
    """Tokens: the task's vector plus small client noise. Deltas: ``delta_value`` everywhere."""

    client_id: str
    tasks: Mapping[int, int]  # stage -> task of this client's data (absent: no data)
    samples: Mapping[int, int] | int = 10
    noise: float = 0.02
    refuse: set[tuple[int, int]] = field(default_factory=set)
    trained: list[tuple[int, int, int, np.ndarray]] = field(default_factory=list)
    #: stands for a DP learner: each ``train`` would draw fresh noise (a retried round may retrain)
    fresh_randomness: bool = False

    def identity_token(self, stage: int) -> np.ndarray:
        base = task_token(self.tasks[stage])
        jitter = np.random.default_rng(_seed(self.client_id, stage)).standard_normal(base.size)
        token = base + self.noise * jitter / np.sqrt(base.size)
        return token / np.linalg.norm(token)

    def num_samples(self, stage: int) -> int:
        if stage not in self.tasks:
            return 0
        return self.samples if isinstance(self.samples, int) else self.samples[stage]

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        self.trained.append((stage, round, slot, weights.copy()))
        return np.full(weights.shape, delta_value(self.client_id, stage, round), dtype=np.float32)

    def refuse_reason(self, stage: int, round: int) -> str | None:
        return "privacy budget exhausted" if (stage, round) in self.refuse else None


def delta_value(client_id: str, stage: int, round: int) -> float:
    """The deterministic delta a FakeLearner returns (a multiple of 1/64: exact in float32)."""
    return ((_seed(client_id) % 16) + 1 + 4 * round + 8 * stage) / 64.0


class ListSchedule:
    """Members per stage from a list; cohorts of ``cohort_size`` drawn without replacement."""

    def __init__(self, members: Sequence[Sequence[str]], cohort_size: int) -> None:
        self._members = [tuple(m) for m in members]
        self.cohort_size = cohort_size

    @property
    def n_stages(self) -> int:
        return len(self._members)

    def members(self, stage: int) -> tuple[str, ...]:
        return self._members[stage]

    def cohort(self, stage: int, round: int, rng: np.random.Generator) -> tuple[str, ...]:
        members = self._members[stage]
        k = min(self.cohort_size, len(members))
        return tuple(sorted(str(c) for c in rng.choice(np.array(members), size=k, replace=False)))


def client(i: int) -> str:
    return f"client-{i:02d}"


@dataclass
class Federation:
    coordinator: Coordinator
    workers: list[Worker]
    learners: dict[str, FakeLearner]
    organizer: DKOOrganizer


def build_federation(
    stage_tasks: Sequence[Mapping[str, int]],
    *,
    cohort_size: int = 5,
    rounds: int = 2,
    min_contributors: int = 2,
    config: DKOConfig | None = None,
    organizer: DKOOrganizer | None = None,
    samples: Callable[[str], int] | None = None,
    seed: int = 0,
    dp: bool = False,
    aggregation: str = "plaintext",
) -> Federation:
    """A federation whose stage s has the clients ``stage_tasks[s]`` (client id -> task), summing
    with ``aggregation`` ("plaintext", "masking" or "ckks")."""
    ids = sorted({c for stage in stage_tasks for c in stage})
    learners = {
        c: FakeLearner(
            c,
            {s: stage[c] for s, stage in enumerate(stage_tasks) if c in stage},
            samples=samples(c) if samples else 10,
        )
        for c in ids
    }
    organizer = organizer or DKOOrganizer(DIM, SLOT, config or DKOConfig(n_buckets=64))
    schedule = ListSchedule([sorted(stage) for stage in stage_tasks], cohort_size)
    if aggregation == "plaintext":
        factory: Callable = functools.partial(PlaintextAggregator, min_contributors=min_contributors)
        sides: dict = {c: PlaintextClient() for c in ids}
    else:
        built = build_aggregation(PrivacyConfig(aggregation=aggregation, ckks_k_min=2), ids, min_contributors=min_contributors)
        factory, sides = built.factory, built.clients
    coordinator = Coordinator(
        FED,
        schedule,
        factory,
        organizer,
        SLOT,
        rounds,
        np.random.default_rng(seed),
        dp=dp,
    )
    workers = [Worker(FED, c, learners[c], sides[c]) for c in ids]
    return Federation(coordinator, workers, learners, organizer)


def aggregate_of(
    vectors: Mapping[str, np.ndarray], *, stage: int = 0, round: int = -1, attempt: int = 0
) -> Aggregate:
    """The Aggregate a PlaintextAggregator builds from ``vectors`` (the only way to get one)."""
    phase = "token" if round < 0 else "update"
    cls = TokenUpload if round < 0 else UpdateUpload
    aggregator = PlaintextAggregator(min_contributors=1)
    length = next(iter(vectors.values())).size
    rid = AggregationRound(FED, stage, round, attempt, phase)
    aggregator.begin(rid, list(vectors), length)
    for sender, vector in vectors.items():
        message = cls(
            federation_id=FED,
            stage=stage,
            round=round,
            attempt=attempt,
            sender=sender,
            payload=np.asarray(vector, dtype=np.float64),
            encoding=PlaintextAggregator.encoding,
        )
        aggregator.receive(sender, message)
    result = aggregator.result()
    if result is None:
        raise RuntimeError("aggregation did not complete")
    return result
