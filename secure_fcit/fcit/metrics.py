"""Per-task scoring and the continual-learning metrics of an accuracy matrix.

Scores are percentages (0–100) like the paper's tables.

* ``exact``: case-insensitive exact match after trimming whitespace and a trailing period.
* ``option``: the first standalone option letter (A–D) in the prediction equals the answer's.
* ``iou``: the first four numbers of the prediction form a box with IoU > 0.5 with the answer box.
* ``caption``: ROUGE-L F-measure (Google's `rouge-score` package) between prediction and answer.

From A[t][i] (score on task i after stage t, defined for i ≤ t):
Last = mean_i A[T][i]; Avg = mean_t mean_{i≤t} A[t][i];
Forgetting = mean_{i<T} (max_{t<T} A[t][i] − A[T][i]); BWT = mean_{i<T} (A[T][i] − A[i][i]).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

from ..errors import ConfigError

__all__ = [
    "METRICS",
    "score_prediction",
    "score_exact",
    "score_option",
    "score_iou",
    "score_caption",
    "box_iou",
    "parse_box",
    "last",
    "average",
    "forgetting",
    "backward_transfer",
    "summarize",
]

METRICS = ("exact", "option", "iou", "caption")

_OPTION = re.compile(r"\b([A-D])\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def score_exact(prediction: str, answer: str) -> float:
    return 100.0 if _normalize(prediction) == _normalize(answer) else 0.0


def score_option(prediction: str, answer: str) -> float:
    want = _OPTION.search(answer.strip().upper())
    got = _OPTION.search(prediction.strip())
    if want is None:
        raise ConfigError(f"option-letter answer {answer!r} holds no letter A-D")
    return 100.0 if got is not None and got.group(1) == want.group(1) else 0.0


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    nums = _NUMBER.findall(text)
    if len(nums) < 4:
        return None
    x1, y1, x2, y2 = (float(v) for v in nums[:4])
    return (x1, y1, x2, y2)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def score_iou(prediction: str, answer: str, answer_bbox: Sequence[float] | None = None) -> float:
    truth = tuple(answer_bbox) if answer_bbox is not None else parse_box(answer)
    if truth is None:
        raise ConfigError(f"grounding answer {answer!r} holds no box")
    box = parse_box(prediction)
    return 100.0 if box is not None and box_iou(box, truth) > 0.5 else 0.0


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def score_caption(prediction: str, answer: str) -> float:
    return 100.0 * _rouge().score(answer, prediction)["rougeL"].fmeasure


def score_prediction(metric: str, prediction: str, answer: str, answer_bbox=None) -> float:
    """Score one prediction (0–100) with the task's metric."""
    if metric == "exact":
        return score_exact(prediction, answer)
    if metric == "option":
        return score_option(prediction, answer)
    if metric == "iou":
        return score_iou(prediction, answer, answer_bbox)
    if metric == "caption":
        return score_caption(prediction, answer)
    raise ConfigError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


# --- accuracy-matrix metrics ------------------------------------------------------------------


def _check(matrix: Sequence[Sequence[float | None]]) -> int:
    t = len(matrix)
    if t == 0:
        raise ConfigError("accuracy matrix is empty")
    for r, row in enumerate(matrix):
        for i in range(r + 1):
            if i >= len(row) or row[i] is None or not math.isfinite(float(row[i])):
                raise ConfigError(f"accuracy matrix entry A[{r}][{i}] is missing (needed for i <= t)")
    return t


def last(matrix: Sequence[Sequence[float | None]]) -> float:
    t = _check(matrix)
    row = matrix[t - 1]
    return sum(float(row[i]) for i in range(t)) / t


def average(matrix: Sequence[Sequence[float | None]]) -> float:
    t = _check(matrix)
    return sum(sum(float(matrix[r][i]) for i in range(r + 1)) / (r + 1) for r in range(t)) / t


def forgetting(matrix: Sequence[Sequence[float | None]]) -> float:
    t = _check(matrix)
    if t == 1:
        return 0.0
    final = matrix[t - 1]
    drops = [max(float(matrix[r][i]) for r in range(i, t - 1)) - float(final[i]) for i in range(t - 1)]
    return sum(drops) / len(drops)


def backward_transfer(matrix: Sequence[Sequence[float | None]]) -> float:
    t = _check(matrix)
    if t == 1:
        return 0.0
    final = matrix[t - 1]
    return sum(float(final[i]) - float(matrix[i][i]) for i in range(t - 1)) / (t - 1)


def summarize(matrix: Sequence[Sequence[float | None]]) -> dict[str, float]:
    return {
        "last": last(matrix),
        "avg": average(matrix),
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
    }
