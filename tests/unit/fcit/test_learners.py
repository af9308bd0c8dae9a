"""The baselines' local terms on a real slot: FedProx's pull, O-LoRA's block mask, EWC's layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from secure_fcit.fcit.learner import EWCLearner, FedProxLearner, OLoRALearner, SlotLearner
from secure_fcit.model.chat import encode_sample
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA
from secure_fcit.model.train import TrainSpec


class _NoEncoder:
    dim = 4

    def encode(self, texts):
        return np.ones((len(texts), 4), np.float32) / 2


@pytest.fixture()
def parts(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    images = [Image.new("RGB", (32, 32), c) for c in ((200, 20, 20), (20, 20, 200), (20, 200, 20))]
    samples = {s: [encode_sample(processor, img, [(f"What color is it {k}?", ans)])
                   for k, (img, ans) in enumerate(zip(images, ("red", "blue", "green"), strict=True))]
               for s in (0, 1)}
    return model, processor, samples


def _args(slots, processor, samples):
    instr = {s: ["What color?"] * len(v) for s, v in samples.items()}
    return ("client-000", slots, _NoEncoder(), samples, instr, TrainSpec(epochs=3, batch_size=3, lr=5e-2),
            processor.tokenizer.pad_token_id, 0)


def test_fedprox_stays_closer_to_the_global_weights(parts):
    model, processor, samples = parts
    slots = SlotLoRA(model, rank=2, alpha=4.0, max_slots=1)
    start = slots.initial_vector(seed=1)
    plain = SlotLearner(*_args(slots, processor, samples)).train(0, 0, 0, start)
    prox = FedProxLearner(*_args(slots, processor, samples), mu=50.0).train(0, 0, 0, start)
    assert 0 < np.linalg.norm(prox) < np.linalg.norm(plain)


def test_olora_trains_only_the_stage_block(parts):
    model, processor, samples = parts
    r = 2
    slots = SlotLoRA(model, rank=2 * r, alpha=8.0, max_slots=1)
    learner = OLoRALearner(*_args(slots, processor, samples), lam=0.5, block_rank=r)
    start = slots.initial_vector(seed=1)
    delta = learner.train(1, 0, 0, start)
    slots.load_slot(0, delta)
    touched = 0
    for name, p in zip(slots._names[0], slots._params(0), strict=True):
        d = p.detach().numpy()
        if ".lora_A." in name:
            assert np.all(d[:r] == 0) and np.any(d[r:] != 0)
        else:
            assert np.all(d[:, :r] == 0)
            touched += int(np.any(d[:, r:] != 0))
    assert touched > 0


def test_ewc_delta_carries_weights_and_the_fisher_in_the_last_round(parts):
    model, processor, samples = parts
    slots = SlotLoRA(model, rank=2, alpha=4.0, max_slots=1)
    p = slots.slot_size
    learner = EWCLearner(*_args(slots, processor, samples), lam=1.0, rounds_per_stage=2)
    w = slots.initial_vector(seed=1)
    vec = np.concatenate([w, w, np.zeros(2 * p, np.float32)])
    first = learner.train(0, 0, 0, vec)
    assert np.any(first[:p] != 0) and np.all(first[p:] == 0)
    last = learner.train(0, 1, 0, vec)
    assert np.all(last[p : 3 * p] == 0)
    assert np.all(last[3 * p :] >= 0) and last[3 * p :].sum() > 0
    # With a Fisher from an earlier stage, the penalty holds important weights near the anchor.
    held = np.concatenate([w, w, np.full(p, 1.0, np.float32), np.zeros(p, np.float32)])
    strong = EWCLearner(*_args(slots, processor, samples), lam=1e4, rounds_per_stage=2).train(1, 0, 0, held)
    assert np.linalg.norm(strong[:p]) < np.linalg.norm(first[:p])
