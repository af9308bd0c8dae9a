"""A client's DP side as a learner sees it: refuse or plan a round, journal it, then run DP-SGD.

`ClientPrivacy` owns the client's `PrivacyLedger`. A journal that fails verification when the
ledger opens does not stop the process: the client refuses every round with the reason (so the
federation goes on without it) until an operator restores the journal — see threat_model.md.
Every entry is signed with ``signing_key`` (the deployment passes the client's certificate key;
without one the ledger makes an in-memory key, see `PrivacyLedger`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import Config, DPConfig
from ..crypto.prg import ChaCha20PRG
from ..errors import JournalError, PrivacyError
from ..model.chat import EncodedSample
from .accounting import STREAM_PARTITION
from .ledger import PrivacyLedger, RoundPlan
from .sgd import DPStepResult, dp_train_steps

__all__ = ["ClientPrivacy", "planned_rounds", "planned_by_task"]


def planned_rounds(config: Config, n_stages: int) -> int:
    """``dp.planned_rounds``, or expected participations + 2 standard deviations when it is 0."""
    if config.dp.planned_rounds:
        return config.dp.planned_rounds
    n = n_stages * config.fcit.rounds_per_stage
    p = config.scenario.clients_per_round / config.scenario.n_clients
    return max(1, math.ceil(n * p + 2 * math.sqrt(n * p * (1 - p))))


def planned_by_task(config: Config, tasks: dict[int, tuple[str, ...]], n_stages: int) -> dict[str, int]:
    """`planned_rounds` per task: a task held in m stages plans the participation of m stages.
    Stages without a task label count for `accounting.STREAM_PARTITION`, which composes them all."""
    stages: dict[str, int] = {}
    for stage in range(n_stages):
        for task in tasks.get(stage) or (STREAM_PARTITION,):
            stages[task] = stages.get(task, 0) + 1
    return {task: planned_rounds(config, m) for task, m in stages.items()}


class ClientPrivacy:
    """Per-task accounting: ``tasks`` maps each stage to the tasks of the client's samples in it
    (public labels fixed before training); a round charges each of its tasks, and the client's
    epsilon is the maximum over tasks. ``planned_rounds`` is one number, or one per task.

    ``noise_prg`` is for equality tests only: ``noise_prg(stage, round)`` gives the round's
    ChaCha20 stream (batch sampling and noise). No config or command line reaches it; without it
    (always, in production) every round draws a fresh key from ``os.urandom``."""

    def __init__(self, root: Path, client_id: str, dp: DPConfig, *, batch_size: int, local_epochs: float,
                 lr: float, planned_rounds: int | dict[str, int],
                 tasks: dict[int, tuple[str, ...]] | None = None,
                 noise_prg: Callable[[int, int], ChaCha20PRG] | None = None,
                 signing_key: Ed25519PrivateKey | None = None) -> None:
        self.dp = dp
        self._noise_prg = noise_prg
        self.client_id = client_id
        self.batch_size, self.local_epochs, self.lr = batch_size, local_epochs, lr
        self.planned_rounds = planned_rounds
        self.tasks = dict(tasks or {})
        self.error: str | None = None
        self.ledger: PrivacyLedger | None = None
        try:
            self.ledger = PrivacyLedger(root, client_id, dp, signing_key=signing_key)
        except JournalError as exc:
            self.error = str(exc)
        self._plans: dict[tuple[int, int], RoundPlan] = {}
        self._released: set[int] = set()

    def close(self) -> None:
        """Release the ledger folder's lock (a restarted client in this process can then open it)."""
        if self.ledger is not None:
            self.ledger.close()

    def _plan(self, stage: int, round: int, n_samples: int) -> RoundPlan:
        if self.ledger is None:
            raise JournalError(self.journal_error())
        return self.ledger.plan(stage, round, n_samples, self.batch_size, self.local_epochs, self.planned_rounds,
                                self.tasks.get(stage) or (STREAM_PARTITION,))

    def journal_error(self) -> str | None:
        if self.ledger is None:
            return f"the spend journal failed verification; no training until an operator restores it: {self.error}"
        return None

    def refuse_reason(self, stage: int, round: int, n_samples: int) -> str | None:
        try:
            self._plans[(stage, round)] = self._plan(stage, round, n_samples)
        except PrivacyError as exc:
            return str(exc)
        return None

    def train(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], samples: Sequence[EncodedSample],
              stage: int, round: int, pad_id: int, extra_loss: Callable[[], torch.Tensor] | None = None,
              grad_masks: Sequence[torch.Tensor] | None = None, collect_sq: bool = False) -> DPStepResult:
        plan = self._plans.pop((stage, round), None) or self._plan(stage, round, len(samples))
        self.ledger.charge(plan)  # journaled and fsynced before the first step
        return dp_train_steps(model, params, samples, noise_multiplier=plan.sigma, max_grad_norm=plan.max_grad_norm,
                              sample_rate=plan.q, steps=plan.steps, lr=self.dp.lr or self.lr, pad_id=pad_id,
                              optimizer=self.dp.optimizer,
                              extra_loss=extra_loss, grad_masks=grad_masks, collect_sq=collect_sq,
                              prg=None if self._noise_prg is None else self._noise_prg(stage, round))

    def record_token_release(self, stage: int, n_samples: int) -> None:
        """The identity token (n_k * mean embedding of the stage's instructions) and n_k leave
        the client without DP noise; the journal lists the release (once per stage)."""
        if stage in self._released or self.ledger is None:
            return
        self.ledger.record_release(stage, -1, "identity-token", n_samples=n_samples)
        self._released.add(stage)
