"""The two records of the task registry: one generated :class:`Example` and one :class:`TaskSpec`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from secure_fcit.errors import ConfigError, DataError

__all__ = ["METRICS", "MIN_TEMPLATES", "Example", "TaskSpec"]

# How each task is scored (the evaluation code owns the formulas): exact string match, an option
# letter, a caption similarity, and box IoU.
METRICS: tuple[str, ...] = ("exact", "option", "caption", "iou")
MIN_TEMPLATES = 5


@dataclass(frozen=True)
class Example:
    """One rendered image with its instruction (no ``<image>`` token) and reference answer.

    ``bbox`` is the answer box ``(x1, y1, x2, y2)`` normalised to [0, 1] for grounding tasks.
    """

    image: Image.Image
    instruction: str
    answer: str
    bbox: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise DataError("generated example has an empty instruction")
        if not self.answer.strip():
            raise DataError(f"generated example for {self.instruction!r} has an empty answer")
        if "<image>" in self.instruction:
            raise DataError(f"generated instruction {self.instruction!r} must not contain <image>")
        if self.bbox is not None and (
            len(self.bbox) != 4 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in self.bbox)
        ):
            raise DataError(f"generated bbox {self.bbox!r} is not 4 numbers in [0, 1]")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its name, the public dataset it mirrors, its metric, its instruction
    templates, and ``generate(rng, image_size) -> Example``."""

    name: str
    mirrors: str
    metric: str
    templates: tuple[str, ...]
    generate: Callable[[np.random.Generator, int], Example]

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(
                f"task {self.name!r}: unknown metric {self.metric!r}; valid: {', '.join(METRICS)}"
            )
        if len(set(self.templates)) < MIN_TEMPLATES:
            raise ConfigError(
                f"task {self.name!r} has {len(set(self.templates))} distinct templates; needs {MIN_TEMPLATES}"
            )
