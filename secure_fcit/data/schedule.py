"""The four FCIT scenarios: Hom/Het x task-related/capability-related, as stage-by-stage plans.

Hom-FCIT: in a stage every client learns the same task (or capability group). Het-FCIT: the
clients form ``clients_per_round`` fixed groups, one sampled per round from each, and in a stage
group p learns the task the schedule puts in slot p, so one round mixes tasks and tasks return in
later stages. The schedules are those of the FCIT benchmark (Guo et al., ICCV 2025).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from secure_fcit.data.partition import dirichlet_quantity_split
from secure_fcit.data.tasks import task_rng
from secure_fcit.errors import ConfigError

__all__ = [
    "TASK_ORDER",
    "CAPABILITY_GROUPS",
    "CAPABILITY_NAMES",
    "HET_TASK_SCHEDULE",
    "HET_CAP_SCHEDULE",
    "SETTINGS",
    "KINDS",
    "Stage",
    "Scenario",
    "build_scenario",
]

TASK_ORDER: tuple[str, ...] = (
    "classification",
    "figure_mcq",
    "icon_qa",
    "counting_math",
    "ocr",
    "captions",
    "chart_yesno",
    "attribute_qa",
)
CAPABILITY_GROUPS: tuple[tuple[str, ...], ...] = (
    ("classification", "ocr", "grounding"),
    ("counting_math", "table_math", "figure_mcq"),
    ("icon_qa", "chart_yesno", "attribute_qa"),
    ("captions",),
)
CAPABILITY_NAMES: tuple[str, ...] = ("perception", "reasoning", "understanding", "generation")
# Row t, slot p: what group p learns in stage t (indices into TASK_ORDER / CAPABILITY_GROUPS).
HET_TASK_SCHEDULE: tuple[tuple[int, ...], ...] = (
    (1, 2, 4, 5, 6),
    (3, 4, 5, 7, 7),
    (0, 2, 3, 4, 5),
    (0, 0, 1, 3, 7),
    (1, 2, 4, 4, 5),
    (0, 3, 5, 7, 7),
    (2, 2, 5, 7, 7),
    (5, 5, 5, 6, 6),
)
HET_CAP_SCHEDULE: tuple[tuple[int, ...], ...] = (
    (0, 1, 1, 3, 3),
    (0, 2, 2, 2, 3),
    (1, 2, 2, 3, 3),
    (0, 0, 0, 1, 1),
)
SETTINGS: tuple[str, ...] = ("hom", "het")
KINDS: tuple[str, ...] = ("task", "cap")
_PARTITION_STREAM = 3  # task_rng stream of client splits (0/1/2 are train, test and corpus)

ClientData = Mapping[int, tuple[tuple[str, np.ndarray], ...]]


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage: what is learned, what is evaluated, and which client holds which samples.

    ``client_data`` maps a client id to (task, indices into that task's train set) pairs; clients
    without data this stage are absent. ``groups`` are the client groups cohorts are drawn from and
    ``group_tasks[p]`` the tasks group p learns this stage.
    """

    index: int
    tasks: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    client_data: ClientData
    groups: tuple[tuple[int, ...], ...]
    group_tasks: tuple[tuple[str, ...], ...]

    @property
    def clients(self) -> tuple[int, ...]:
        """The ids of clients holding data this stage, ascending."""
        return tuple(sorted(self.client_data))


@dataclass(frozen=True, eq=False)
class Scenario:
    """A full FCIT stream: its parameters and its stages in order."""

    setting: str
    kind: str
    n_clients: int
    clients_per_round: int
    beta: float
    seed: int
    stages: tuple[Stage, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task of the stream, in order of first appearance."""
        return self.stages[-1].eval_tasks if self.stages else ()

    def cohort(self, stage: int, round: int, rng: np.random.Generator) -> tuple[int, ...]:
        """The clients sampled for one round of ``stage``.

        Hom: ``clients_per_round`` distinct clients, uniformly among those with data (ascending).
        Het: one client per group, uniformly within the group; position p is group p. ``round``
        is validated but all randomness comes from ``rng``.
        """
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(self.stages):
            raise ConfigError(f"stage must be an integer in [0, {len(self.stages)}), got {stage!r}")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ConfigError(f"round must be a non-negative integer, got {round!r}")
        plan = self.stages[stage]
        if self.setting == "hom":
            candidates = plan.clients
            if len(candidates) < self.clients_per_round:
                raise ConfigError(
                    f"stage {stage} has {len(candidates)} clients with data, fewer than "
                    f"clients_per_round={self.clients_per_round}"
                )
            chosen = rng.choice(np.asarray(candidates), size=self.clients_per_round, replace=False)
            return tuple(sorted(int(c) for c in chosen))
        cohort = []
        for p, group in enumerate(plan.groups):
            members = [c for c in group if c in plan.client_data]
            if not members:
                raise ConfigError(f"stage {stage}: group {p} has no client with data")
            cohort.append(members[int(rng.integers(len(members)))])
        return tuple(cohort)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _stage_plans(
    setting: str, kind: str, n_clients: int, clients_per_round: int,
    plans: Sequence[tuple[tuple[str, ...], ...]] | None = None,
) -> tuple[tuple[tuple[int, ...], ...], list[tuple[tuple[str, ...], ...]]]:
    """The client groups and, per stage, the tasks each group learns (the benchmark's schedules,
    or ``plans``: per stage, the tasks of each group; Hom has one group of every client)."""
    if plans is not None:
        plans = [tuple(tuple(unit) for unit in plan) for plan in plans]
        if not plans:
            raise ConfigError("a custom stream needs at least one stage")
        if setting == "hom":
            if any(len(plan) != 1 for plan in plans):
                raise ConfigError("a hom stream's stage is one list of tasks that every client learns")
            return (tuple(range(n_clients)),), plans
        slots = clients_per_round
        if any(len(plan) != slots for plan in plans):
            raise ConfigError(f"a het stream's stages each list {slots} group entries (clients_per_round)")
    else:
        units = tuple((name,) for name in TASK_ORDER) if kind == "task" else CAPABILITY_GROUPS
        if setting == "hom":
            return (tuple(range(n_clients)),), [(unit,) for unit in units]
        schedule = HET_TASK_SCHEDULE if kind == "task" else HET_CAP_SCHEDULE
        plans = [tuple(units[i] for i in row) for row in schedule]
        slots = len(schedule[0])
    if clients_per_round != slots:
        raise ConfigError(
            f"het-{kind} schedules have {slots} slots per stage; clients_per_round must be {slots}"
        )
    if n_clients % clients_per_round:
        raise ConfigError(
            f"het needs n_clients ({n_clients}) divisible by clients_per_round ({clients_per_round})"
        )
    size = n_clients // clients_per_round
    groups = tuple(tuple(range(p * size, (p + 1) * size)) for p in range(clients_per_round))
    return groups, plans


def build_scenario(
    setting: str,
    kind: str,
    train_sizes: Mapping[str, int],
    n_clients: int = 50,
    clients_per_round: int = 5,
    beta: float = 1.0,
    seed: int = 0,
    plans: Sequence[tuple[tuple[str, ...], ...]] | None = None,
) -> Scenario:
    """Build one of the four scenarios, splitting every task of a stage by Dirichlet(beta); with
    ``plans`` (per stage, the tasks of each client group: `config.StreamConfig.plans`) a custom
    stream of any tasks in the same setting.

    A task learned in a stage is split over the union of the clients of every group learning it;
    it uses its whole train set (``train_sizes[task]`` samples) in every stage it appears in.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    n_clients = _check_int("n_clients", n_clients, 1)
    clients_per_round = _check_int("clients_per_round", clients_per_round, 1)
    seed = _check_int("seed", seed, 0)
    if clients_per_round > n_clients:
        raise ConfigError(f"clients_per_round ({clients_per_round}) exceeds n_clients ({n_clients})")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}")
    groups, plans = _stage_plans(setting, kind, n_clients, clients_per_round, plans)
    needed = dict.fromkeys(task for plan in plans for unit in plan for task in unit)
    missing = [task for task in needed if task not in train_sizes]
    if missing:
        raise ConfigError(f"train_sizes has no entry for task(s) {', '.join(missing)}")

    stages: list[Stage] = []
    seen: dict[str, None] = {}
    for t, group_tasks in enumerate(plans):
        tasks = tuple(dict.fromkeys(task for unit in group_tasks for task in unit))
        seen.update(dict.fromkeys(tasks))
        data: dict[int, list[tuple[str, np.ndarray]]] = {}
        for task in tasks:
            clients = [
                c for group, unit in zip(groups, group_tasks, strict=True) if task in unit for c in group
            ]
            size = _check_int(f"train_sizes[{task!r}]", train_sizes[task], 0)
            if size < len(clients):
                raise ConfigError(
                    f"task {task!r} has {size} train samples but stage {t} splits it over {len(clients)} "
                    "clients; every client needs at least one"
                )
            parts = dirichlet_quantity_split(
                size, len(clients), beta, task_rng(seed, task, _PARTITION_STREAM, t)
            )
            for client, part in zip(sorted(clients), parts, strict=True):
                part.setflags(write=False)
                data.setdefault(client, []).append((task, part))
        client_data = MappingProxyType({c: tuple(data[c]) for c in sorted(data)})
        stages.append(Stage(t, tasks, tuple(seen), client_data, groups, group_tasks))
    return Scenario(setting, kind, n_clients, clients_per_round, float(beta), seed, tuple(stages))
