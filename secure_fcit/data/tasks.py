"""The registry of the ten synthetic FCIT tasks, one per public dataset of the FCIT benchmark.

Each task renders a small, clean image and asks one of several paraphrased instructions whose
answer is a short word, letter, number, caption or box. ``TASKS`` is an explicit dict: a task
exists only if it is listed here.
"""

from __future__ import annotations

import zlib

import numpy as np

from secure_fcit.data.spec import Example, TaskSpec
from secure_fcit.data.tasks_figures import FIGURE_TASKS
from secure_fcit.data.tasks_objects import OBJECT_TASKS
from secure_fcit.errors import ConfigError

__all__ = [
    "GENERATOR_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "TASKS",
    "TASK_NAMES",
    "Example",
    "TaskSpec",
    "get_task",
    "task_rng",
    "corpus_text",
]

# Bump whenever a generator's output changes, so cached splits on disk are regenerated.
GENERATOR_VERSION = "2"
DEFAULT_IMAGE_SIZE = 64

_ORDER = (
    "classification",
    "figure_mcq",
    "icon_qa",
    "counting_math",
    "ocr",
    "captions",
    "chart_yesno",
    "attribute_qa",
    "grounding",
    "table_math",
)
_BY_NAME = {spec.name: spec for spec in (*OBJECT_TASKS, *FIGURE_TASKS)}
TASKS: dict[str, TaskSpec] = {name: _BY_NAME[name] for name in _ORDER}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}") from None


def task_rng(seed: int, task: str, *stream: int) -> np.random.Generator:
    """A generator for (seed, task, *stream), independent of every other such tuple.

    The task enters through a CRC32 of its name so that adding a task never shifts another's data.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(task.encode("utf-8")), *stream])


def corpus_text(seed: int = 0, n_per_task: int = 200) -> list[str]:
    """Instruction and answer strings of ``n_per_task`` examples of every task (tokenizer training).

    The list alternates instruction, answer, instruction, answer, ... task by task in registry order.
    """
    if n_per_task < 0:
        raise ConfigError(f"n_per_task must be >= 0, got {n_per_task}")
    texts: list[str] = []
    for name, spec in TASKS.items():
        rng = task_rng(seed, name, 2)  # stream 2: never used for train (0) or test (1) data
        for _ in range(n_per_task):
            example = spec.generate(rng, DEFAULT_IMAGE_SIZE)
            texts.append(example.instruction)
            texts.append(example.answer)
    return texts
