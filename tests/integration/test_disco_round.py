"""The real LoRA-slot learner under the sans-IO round machines, in memory, on the micro model."""

from __future__ import annotations

import functools

import numpy as np

from secure_fcit.data import load_train
from secure_fcit.fcit.dko import DKOConfig, DKOOrganizer
from secure_fcit.fcit.evaluate import encode_train_records
from secure_fcit.fcit.learner import SlotLearner
from secure_fcit.model.encoder import load_encoder
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA
from secure_fcit.model.train import TrainSpec
from secure_fcit.protocols import Coordinator, PlaintextAggregator, PlaintextClient, Worker, run_federation


class _Schedule:
    def __init__(self, members):
        self._members = members

    @property
    def n_stages(self):
        return len(self._members)

    def members(self, stage):
        return self._members[stage]

    def cohort(self, stage, round, rng):
        return self._members[stage]


def test_two_stage_federation_trains_slots(micro_model_dir, micro_benchmark):
    # The micro model's untrained encoder gives dissimilar tokens even within a task, so τ is low
    # here: this test is about the learner under the round machines, not about DKO's matching.
    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=4, alpha=8.0, max_slots=8)
    encoder = load_encoder("embedded", micro_model_dir)
    tasks = ["classification", "grounding"]
    records = {t: load_train(micro_benchmark[t].train) for t in tasks}
    clients = [f"client-{i}" for i in range(4)]
    learners = {}
    for i, c in enumerate(clients):
        samples, instructions = {}, {}
        for stage, task in enumerate(tasks):
            mine = records[task][i::4]
            samples[stage] = encode_train_records(processor, mine)
            instructions[stage] = [r.turns[0][0] for r in mine]
        learners[c] = SlotLearner(c, slots, encoder, samples, instructions,
                                  TrainSpec(epochs=1, batch_size=4, lr=1e-2), processor.tokenizer.pad_token_id, 0)
    organizer = DKOOrganizer(encoder.dim, slots.slot_size, DKOConfig(tau=0.1, n_buckets=2, max_slots=8, k_min=1, policy="allow"),
                             slot_init=lambda s: slots.initial_vector(seed=s))
    coordinator = Coordinator("fed-test", _Schedule([tuple(clients), tuple(clients)]),
                              functools.partial(PlaintextAggregator, min_contributors=2), organizer,
                              slots.slot_size, 1, np.random.default_rng(0))
    workers = [Worker("fed-test", c, learners[c], PlaintextClient()) for c in clients]
    history = run_federation(coordinator, workers)
    assert coordinator.done
    assert not history.worker_errors
    assert len(history.of("applied")) == 2 and not history.of("aborted")
    trained = organizer.global_weights(list(range(len(organizer.tokens))))
    fresh = np.stack([slots.initial_vector(seed=s) for s in range(len(organizer.tokens))])
    assert np.isfinite(trained).all() and not np.allclose(trained, fresh)
