"""Data for federated continual instruction tuning: the synthetic task generators, LLaVA-format
files (one loader for synthetic and real data), Dirichlet client splits and the FCIT schedules.
"""

from __future__ import annotations

from secure_fcit.data.llava_json import (
    IMAGE_TOKEN,
    TaskFiles,
    TestRecord,
    TrainRecord,
    build_benchmark,
    load_image,
    load_test,
    load_train,
    write_task_split,
)
from secure_fcit.data.partition import dirichlet_quantity_split
from secure_fcit.data.schedule import (
    CAPABILITY_GROUPS,
    CAPABILITY_NAMES,
    HET_CAP_SCHEDULE,
    HET_TASK_SCHEDULE,
    KINDS,
    SETTINGS,
    TASK_ORDER,
    Scenario,
    Stage,
    build_scenario,
)
from secure_fcit.data.spec import METRICS, Example, TaskSpec
from secure_fcit.data.tasks import (
    DEFAULT_IMAGE_SIZE,
    GENERATOR_VERSION,
    TASK_NAMES,
    TASKS,
    corpus_text,
    get_task,
    task_rng,
)

__all__ = [
    # tasks
    "TASKS",
    "TASK_NAMES",
    "METRICS",
    "DEFAULT_IMAGE_SIZE",
    "GENERATOR_VERSION",
    "Example",
    "TaskSpec",
    "get_task",
    "task_rng",
    "corpus_text",
    # LLaVA-format files
    "IMAGE_TOKEN",
    "TrainRecord",
    "TestRecord",
    "TaskFiles",
    "load_train",
    "load_test",
    "load_image",
    "write_task_split",
    "build_benchmark",
    # client splits and scenarios
    "dirichlet_quantity_split",
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
