"""Small random helpers shared by the task generators (all draws come from an injected generator)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from secure_fcit.data.render import Color

__all__ = ["pick", "light_background", "dark_background", "flatten_templates"]

T = TypeVar("T")


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One element of ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def light_background(rng: np.random.Generator, low: int = 215) -> Color:
    """A random pale tint (every channel in [low, 255])."""
    r, g, b = (int(v) for v in rng.integers(low, 256, size=3))
    return (r, g, b)


def dark_background(rng: np.random.Generator, high: int = 50) -> Color:
    """A random dark tint (every channel in [0, high))."""
    r, g, b = (int(v) for v in rng.integers(0, high, size=3))
    return (r, g, b)


def flatten_templates(groups: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Every template of a task whose templates are grouped by question kind, in key order."""
    return tuple(t for key in sorted(groups) for t in groups[key])
