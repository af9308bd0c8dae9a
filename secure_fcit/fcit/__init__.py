"""Federated continual instruction tuning: metrics, evaluation, the non-federated reference runs
(zero-shot, multi-task upper bound, sequential fine-tuning) and DISCO's organizer (``dko``).
"""

from __future__ import annotations

from secure_fcit.fcit.metrics import (
    METRICS,
    average,
    backward_transfer,
    forgetting,
    last,
    score_prediction,
    summarize,
)

__all__ = [
    "METRICS",
    "average",
    "backward_transfer",
    "forgetting",
    "last",
    "score_prediction",
    "summarize",
]
