"""The client's local side of DISCO: identity tokens from its instructions, training of one LoRA slot.

Implements the `protocols.Learner` interface on a `model.SlotLoRA`. In the in-process simulation
many learners share one `SlotLoRA` (one model in memory): a learner loads the global weights of
its slot before training and returns only the change, so sharing leaks nothing between clients.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ..model.chat import EncodedSample
from ..model.encoder import InstructionEncoder, mean_token
from ..model.slots import SlotLoRA
from ..model.train import TrainSpec, train_steps

__all__ = ["SlotLearner"]


class SlotLearner:
    """One client's data per stage, its identity tokens, and local LoRA-slot training."""

    def __init__(
        self,
        client_id: str,
        slots: SlotLoRA,
        encoder: InstructionEncoder,
        samples: Mapping[int, Sequence[EncodedSample]],
        instructions: Mapping[int, Sequence[str]],
        train: TrainSpec,
        pad_id: int,
        seed: int,
    ) -> None:
        self.client_id = client_id
        self.slots = slots
        self.encoder = encoder
        self.samples = samples
        self.instructions = instructions
        self.spec = train
        self.pad_id = pad_id
        self.seed = seed
        self._tokens: dict[int, np.ndarray] = {}

    def identity_token(self, stage: int) -> np.ndarray:
        if stage not in self._tokens:
            self._tokens[stage] = mean_token(self.encoder, list(self.instructions[stage]))
        return self._tokens[stage]

    def num_samples(self, stage: int) -> int:
        return len(self.samples.get(stage, ()))

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        self.slots.load_slot(slot, weights)
        seed = zlib.crc32(f"{self.seed}/{self.client_id}/{stage}/{round}".encode())
        with self.slots.training(slot):
            train_steps(self.slots.model, list(self.samples[stage]), self.spec, self.pad_id, seed,
                        progress=False)
        return self.slots.slot_vector(slot) - np.asarray(weights, dtype=np.float32)

    def refuse_reason(self, stage: int, round: int) -> str | None:
        return None
