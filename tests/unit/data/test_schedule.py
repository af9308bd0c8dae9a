"""The four FCIT scenarios: stage shapes, the Het schedules, client splits and cohort sampling."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from secure_fcit.data import (
    CAPABILITY_GROUPS,
    CAPABILITY_NAMES,
    HET_CAP_SCHEDULE,
    HET_TASK_SCHEDULE,
    TASK_NAMES,
    TASK_ORDER,
    Scenario,
    build_scenario,
)
from secure_fcit.errors import ConfigError

SIZES = {name: 120 + 7 * i for i, name in enumerate(TASK_NAMES)}


@cache
def scenario(setting: str, kind: str, beta: float = 1.0, seed: int = 0) -> Scenario:
    return build_scenario(setting, kind, SIZES, beta=beta, seed=seed)


def _check_partitions(plan: Scenario) -> None:
    """Every task of every stage is split, whole, over the clients that learn it."""
    for stage in plan.stages:
        for task in stage.tasks:
            parts = [idx for pairs in stage.client_data.values() for t, idx in pairs if t == task]
            assert all(len(p) >= 1 for p in parts)
            assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(SIZES[task]))
        for pairs in stage.client_data.values():
            assert [t for t, _ in pairs] == [t for t in stage.tasks if t in {t for t, _ in pairs}]


def _cumulative(stages_tasks: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    seen: dict[str, None] = {}
    out = []
    for tasks in stages_tasks:
        seen.update(dict.fromkeys(tasks))
        out.append(tuple(seen))
    return out


def test_constants() -> None:
    assert TASK_ORDER == (
        "classification",
        "figure_mcq",
        "icon_qa",
        "counting_math",
        "ocr",
        "captions",
        "chart_yesno",
        "attribute_qa",
    )
    assert CAPABILITY_NAMES == ("perception", "reasoning", "understanding", "generation")
    assert sorted(t for group in CAPABILITY_GROUPS for t in group) == sorted(TASK_NAMES)
    assert [list(r) for r in HET_TASK_SCHEDULE] == [
        [1, 2, 4, 5, 6],
        [3, 4, 5, 7, 7],
        [0, 2, 3, 4, 5],
        [0, 0, 1, 3, 7],
        [1, 2, 4, 4, 5],
        [0, 3, 5, 7, 7],
        [2, 2, 5, 7, 7],
        [5, 5, 5, 6, 6],
    ]
    assert [list(r) for r in HET_CAP_SCHEDULE] == [
        [0, 1, 1, 3, 3],
        [0, 2, 2, 2, 3],
        [1, 2, 2, 3, 3],
        [0, 0, 0, 1, 1],
    ]


def test_hom_task() -> None:
    plan = scenario("hom", "task")
    assert len(plan.stages) == 8 and plan.tasks == TASK_ORDER
    for t, stage in enumerate(plan.stages):
        assert stage.index == t and stage.tasks == (TASK_ORDER[t],)
        assert stage.eval_tasks == TASK_ORDER[: t + 1]
        assert stage.groups == (tuple(range(50)),) and stage.clients == tuple(range(50))
        assert all(len(pairs) == 1 for pairs in stage.client_data.values())
    _check_partitions(plan)


def test_hom_cap() -> None:
    plan = scenario("hom", "cap")
    assert len(plan.stages) == 4
    assert [s.tasks for s in plan.stages] == list(CAPABILITY_GROUPS)
    assert [s.eval_tasks for s in plan.stages] == _cumulative(list(CAPABILITY_GROUPS))
    for stage in plan.stages:
        assert stage.clients == tuple(range(50))
        assert all([t for t, _ in pairs] == list(stage.tasks) for pairs in stage.client_data.values())
    _check_partitions(plan)


@pytest.mark.parametrize(
    ("kind", "schedule", "units"),
    [
        ("task", HET_TASK_SCHEDULE, tuple((t,) for t in TASK_ORDER)),
        ("cap", HET_CAP_SCHEDULE, CAPABILITY_GROUPS),
    ],
)
def test_het_groups_follow_the_schedule(kind: str, schedule: tuple, units: tuple) -> None:
    plan = scenario("het", kind)
    assert len(plan.stages) == len(schedule)
    expected_tasks = []
    for t, stage in enumerate(plan.stages):
        assert stage.groups == tuple(tuple(range(p * 10, p * 10 + 10)) for p in range(5))
        assert stage.group_tasks == tuple(units[i] for i in schedule[t])
        for p, group in enumerate(stage.groups):
            for client in group:
                assert [task for task, _ in stage.client_data[client]] == list(units[schedule[t][p]])
        expected_tasks.append(tuple(dict.fromkeys(task for i in schedule[t] for task in units[i])))
        assert stage.tasks == expected_tasks[-1]
    assert [s.eval_tasks for s in plan.stages] == _cumulative(expected_tasks)
    _check_partitions(plan)


def test_het_shared_task_is_split_over_the_union_of_groups() -> None:
    stage = scenario("het", "task").stages[1]  # slots 3 and 4 both learn attribute_qa
    holders = sorted(c for c, pairs in stage.client_data.items() if pairs[0][0] == "attribute_qa")
    assert holders == list(range(30, 50))


def test_cohorts() -> None:
    hom, het = scenario("hom", "task"), scenario("het", "task")
    seen = set()
    for r in range(40):
        cohort = hom.cohort(2, r, np.random.default_rng(r))
        assert len(cohort) == 5 == len(set(cohort)) and list(cohort) == sorted(cohort)
        assert set(cohort) <= set(hom.stages[2].clients)
        seen.update(cohort)
        het_cohort = het.cohort(3, r, np.random.default_rng(r))
        assert [c // 10 for c in het_cohort] == [0, 1, 2, 3, 4]
    assert len(seen) > 40
    assert hom.cohort(0, 0, np.random.default_rng(9)) == hom.cohort(0, 0, np.random.default_rng(9))
    with pytest.raises(ConfigError, match="stage must be"):
        hom.cohort(8, 0, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="round must be"):
        het.cohort(0, -1, np.random.default_rng(0))


def test_splits_are_deterministic_and_seeded() -> None:
    a, b = build_scenario("het", "cap", SIZES, seed=3), build_scenario("het", "cap", SIZES, seed=3)
    c = build_scenario("het", "cap", SIZES, seed=4)

    def sizes(plan: Scenario) -> list[list[int]]:
        return [[len(i) for pairs in s.client_data.values() for _, i in pairs] for s in plan.stages]

    assert sizes(a) == sizes(b) != sizes(c)
    first = a.stages[0].client_data[0][0][1]
    assert not first.flags.writeable


def test_small_het_federation() -> None:
    plan = build_scenario("het", "task", SIZES, n_clients=10, clients_per_round=5, beta=0.5)
    assert plan.stages[0].groups == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    assert len(plan.cohort(0, 0, np.random.default_rng(0))) == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("both", "task"), {}, "unknown setting 'both'"),
        (("hom", "tasks"), {}, "unknown kind 'tasks'"),
        (("het", "task"), {"n_clients": 52}, "divisible by clients_per_round"),
        (("het", "task"), {"clients_per_round": 10}, "clients_per_round must be 5"),
        (("hom", "task"), {"clients_per_round": 60}, "exceeds n_clients"),
        (("hom", "task"), {"beta": 0.0}, "beta must be a finite number > 0"),
        (("hom", "task"), {"beta": -2}, "beta must be a finite number > 0"),
        (
            ("hom", "cap"),
            {"sizes": {k: v for k, v in SIZES.items() if k != "grounding"}},
            "no entry for task",
        ),
        (("hom", "task"), {"sizes": {**SIZES, "ocr": 49}}, "'ocr' has 49 train samples but stage 4 splits"),
        (
            ("het", "task"),
            {"sizes": {**SIZES, "attribute_qa": 15}},
            "'attribute_qa' has 15 .* over 20 clients",
        ),
        (("hom", "task"), {"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_raise_config_error(args: tuple, kwargs: dict, message: str) -> None:
    sizes = kwargs.pop("sizes", SIZES)
    with pytest.raises(ConfigError, match=message):
        build_scenario(*args, sizes, **kwargs)


def test_a_custom_stream_of_any_task_names_for_hom_and_het() -> None:
    # issue 23: [stream] stages with the user's own task folders (config.StreamConfig.plans)
    from secure_fcit.config import config_from_dict

    METRICS = {"colors": "exact", "sizes": "exact"}  # noqa: N806
    hom = config_from_dict({"privacy": {"aggregation": "plaintext"}, "scenario": {"n_clients": 4, "clients_per_round": 2},
                            "stream": {"stages": ["colors", ["sizes", "colors"]], "metrics": METRICS}})
    plans = hom.stream.plans("hom", 2)
    sc = build_scenario("hom", "task", {"colors": 20, "sizes": 9}, 4, 2, 1.0, 0, plans=plans)
    assert [s.tasks for s in sc.stages] == [("colors",), ("sizes", "colors")]
    assert sc.tasks == ("colors", "sizes")
    assert sum(len(idx) for c in sc.stages[1].client_data.values() for t, idx in c if t == "sizes") == 9
    het = config_from_dict({"privacy": {"aggregation": "plaintext"}, "scenario": {"setting": "het", "n_clients": 4, "clients_per_round": 2},
                            "stream": {"stages": [["colors", "sizes"], ["sizes", ["colors", "sizes"]]], "metrics": METRICS}})
    sc = build_scenario("het", "task", {"colors": 20, "sizes": 9}, 4, 2, 1.0, 0,
                        plans=het.stream.plans("het", 2))
    assert sc.stages[1].group_tasks == (("sizes",), ("colors", "sizes"))
    assert sorted(sc.stages[0].client_data) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"one entry per client group, 2"):
        config_from_dict({"privacy": {"aggregation": "plaintext"}, "scenario": {"setting": "het", "n_clients": 4, "clients_per_round": 2},
                          "stream": {"stages": [["colors"]]}})
    with pytest.raises(ConfigError, match="must name task folders"):
        config_from_dict({"stream": {"stages": [["../etc"]]}})
