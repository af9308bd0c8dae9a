"""Non-federated reference points on the benchmark: zero-shot, multi-task upper bound, sequential FT.

These are the benchmark-validity runs (`benchmarks/validity.py`) and the zero-shot / centralized
multi-task rows of the baseline tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..model.train import TrainSpec, train_steps
from .metrics import summarize
from .workspace import Workspace, task_metric

__all__ = ["RunResult", "zero_shot", "multitask_upper_bound", "sequential_finetune"]


@dataclass(frozen=True)
class RunResult:
    scores: dict[str, float]
    mean: float
    seconds: float
    matrix: list[list[float | None]] | None = None
    summary: dict[str, float] | None = None


def _train_spec(ws: Workspace, epochs: float | None = None, lr: float | None = None) -> TrainSpec:
    tc = ws.config.train
    return TrainSpec(epochs=epochs if epochs is not None else tc.epochs, batch_size=tc.batch_size,
                     lr=lr if lr else tc.lr)


def _eval_all(ws: Workspace, model, tasks: Sequence[str], progress: bool) -> dict[str, float]:
    return {t: ws.evaluate(model, t, task_metric(ws.config, t), progress=progress).score for t in tasks}


def zero_shot(ws: Workspace, tasks: Sequence[str], progress: bool = True) -> RunResult:
    t0 = time.perf_counter()
    model, _ = ws.base_model()
    scores = _eval_all(ws, model, tasks, progress)
    return RunResult(scores, sum(scores.values()) / len(scores), time.perf_counter() - t0)


def multitask_upper_bound(
    ws: Workspace, tasks: Sequence[str], seed: int, epochs: float | None = None, progress: bool = True
) -> RunResult:
    """One LoRA trained on every task's data pooled together (the centralized upper bound).

    ``epochs`` defaults to ``train.upper_bound_epochs``, the lr to ``train.upper_bound_lr`` (0: ``train.lr``).
    """
    t0 = time.perf_counter()
    epochs = epochs if epochs is not None else ws.config.train.upper_bound_epochs
    model, processor = ws.lora_model(seed)
    pooled = [s for t in tasks for s in ws.train_samples(t)]
    train_steps(
        model, pooled, _train_spec(ws, epochs, ws.config.train.upper_bound_lr), processor.tokenizer.pad_token_id,
        seed, desc="multi-task LoRA", progress=progress,
    )
    scores = _eval_all(ws, model, tasks, progress)
    return RunResult(scores, sum(scores.values()) / len(scores), time.perf_counter() - t0)


def sequential_finetune(
    ws: Workspace, tasks: Sequence[str], seed: int, epochs: float | None = None, progress: bool = True
) -> RunResult:
    """One LoRA fine-tuned on the tasks in order; A[t][i] = score on task i after stage t."""
    t0 = time.perf_counter()
    model, processor = ws.lora_model(seed)
    matrix: list[list[float | None]] = []
    for stage, task in enumerate(tasks):
        train_steps(
            model, ws.train_samples(task), _train_spec(ws, epochs), processor.tokenizer.pad_token_id,
            seed + stage, desc=f"stage {stage + 1}/{len(tasks)} {task}", progress=progress,
        )
        seen = _eval_all(ws, model, tasks[: stage + 1], progress)
        matrix.append([seen[t] for t in tasks[: stage + 1]] + [None] * (len(tasks) - stage - 1))
    final = {t: float(matrix[-1][i]) for i, t in enumerate(tasks)}
    return RunResult(
        final, sum(final.values()) / len(final), time.perf_counter() - t0, matrix, summarize(matrix)
    )
