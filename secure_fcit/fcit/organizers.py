"""Server-side organizers of the baselines, on the same aggregate-only gate as DKO.

Finetune, FedProx and O-LoRA keep one global slot for the whole stream (O-LoRA's slot is a wide
LoRA holding one rank block per stage, see ``fcit.regularizers``); EWC's slot also carries the
federated Fisher. Like ``DKOOrganizer`` they accept only ``Aggregate`` objects: the token phase
still runs (it keeps a running-mean token, so the same worker code path is exercised), and each
round FedAvg-s the per-slot mean delta into the slot.
"""

from __future__ import annotations

import numpy as np

from secure_fcit.protocols.aggregation import Aggregate
from secure_fcit.protocols.interfaces import StagePlan

from .dko import DKOOrganizer, _int_at_least

__all__ = ["SharedSlotOrganizer", "EWCOrganizer", "EWC_PARTS"]


class SharedSlotOrganizer(DKOOrganizer):
    """One slot (index 0) for every stage: FedAvg of a single adapter over the task sequence."""

    def plan(self, stage: int, aggregate: Aggregate, *, dp: bool = False) -> StagePlan:
        stage = _int_at_least("stage", stage, 0)
        sums, samples, _ = self._token_sums(stage, aggregate)
        total, n = sums.sum(axis=0), float(samples.sum())
        opened: tuple[int, ...] = ()
        if self.n_slots == 0:
            weights = self._new_slot_weights(0)
            self._tokens = (total / n)[None, :]
            self._counts = np.array([n])
            self._weights = weights[None, :]
            opened = (0,)
        else:
            self._tokens[0] = (self._counts[0] * self._tokens[0] + total) / (self._counts[0] + n)
            self._counts[0] += n
        self.consolidate(stage)
        self._stage, self._active = stage, (0,)
        return StagePlan(tokens=self.tokens, active=(0,), opened=opened)

    def consolidate(self, stage: int) -> None:
        """Hook at the start of every stage, after the token phase (EWC consolidates here)."""


#: EWC's slot vector: [w | w* | F_acc | F_new], four blocks of the LoRA's size p.
EWC_PARTS = 4


class EWCOrganizer(SharedSlotOrganizer):
    """EWC from sums: the slot carries the weights, the anchor and the Fisher (see ``EWC_PARTS``).

    Workers add ``F_k - F_new`` to the last block in a stage's last round, so FedAvg leaves the
    sample-weighted mean Fisher of that round's cohort there; at the next stage the organizer
    folds it into ``F_acc`` and moves the anchor ``w*`` to the current weights.
    """

    def consolidate(self, stage: int) -> None:
        p = self.slot_size // EWC_PARTS
        w = self._weights[0]
        w[3 * p :] = w[3 * p :].clip(min=0.0)  # a mean of squares: clip rounding below zero
        w[2 * p : 3 * p] += w[3 * p :]
        w[3 * p :] = 0.0
        w[p : 2 * p] = w[:p]
