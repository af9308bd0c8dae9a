from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from secure_fcit.errors import ConfigError
from secure_fcit.model.chat import collate_train, encode_sample
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA, slot_name, ssa_weights


@pytest.fixture()
def slotted(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=4, alpha=8.0, max_slots=4)
    rng = np.random.default_rng(0)
    for i in range(3):
        slots.ensure_slot(i)
        slots.load_slot(i, rng.normal(0, 0.2, slots.slot_size).astype(np.float32))
    img = Image.new("RGB", (32, 32), (20, 200, 40))
    samples = [encode_sample(processor, img, [(f"What is shown {k}?", "circle")]) for k in range(2)]
    return slots, collate_train(samples, processor.tokenizer.pad_token_id)


def _logits(slots, batch):
    with torch.no_grad():
        return slots.model(**batch.model_inputs()).logits


def test_training_exposes_exactly_one_slot(slotted):
    slots, _ = slotted
    with slots.training(1) as params:
        trainable = [n for n, p in slots.model.named_parameters() if p.requires_grad]
        assert trainable and all(f".{slot_name(1)}." in n for n in trainable)
        assert sum(p.numel() for p in params) == slots.slot_size
    assert not any(p.requires_grad for p in slots.model.parameters())


def test_slot_vector_round_trip(slotted):
    slots, _ = slotted
    v = slots.slot_vector(2)
    slots.load_slot(3, v)
    np.testing.assert_array_equal(slots.slot_vector(3), v)
    with pytest.raises(ConfigError, match="slot vector has 3 values"):
        slots.load_slot(0, np.zeros(3, dtype=np.float32))


def test_one_hot_routing_equals_single_slot(slotted):
    slots, batch = slotted
    with slots.training(1):
        single = _logits(slots, batch)
    alpha = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    with slots.routed(alpha, [0, 1, 2]):
        routed = _logits(slots, batch)
    torch.testing.assert_close(routed, single, rtol=1e-4, atol=1e-5)


def test_routing_is_per_sample(slotted):
    slots, batch = slotted
    outs = []
    for k in range(2):
        with slots.training(k):
            outs.append(_logits(slots, batch))
    with slots.routed(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 1]):
        mixed = _logits(slots, batch)
    torch.testing.assert_close(mixed[0], outs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[1], outs[1][1], rtol=1e-4, atol=1e-5)


def test_ssa_weights_softmax_of_cosines():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = ssa_weights(torch.tensor([[2.0, 0.0], [1.0, 1.0]]), tokens, temperature=0.05)
    assert a[0, 0] > 0.999
    torch.testing.assert_close(a[1], torch.tensor([0.5, 0.5]))
    with pytest.raises(ConfigError, match="temperature"):
        ssa_weights(tokens, tokens, temperature=0.0)


def test_ssa_generation_follows_the_routing(micro_model_dir):
    from secure_fcit.fcit.ssa import routed_answers
    from secure_fcit.model.encoder import load_encoder

    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=4, alpha=8.0, max_slots=2)
    rng = np.random.default_rng(1)
    for i in range(2):
        slots.load_slot(i, rng.normal(0, 0.5, slots.slot_size).astype(np.float32))
    encoder = load_encoder("embedded", micro_model_dir)
    q = "What shape is shown?"
    img = Image.new("RGB", (32, 32), (0, 0, 200))
    token = encoder.encode([q])[0]
    # The prompt's own encoding as slot 1's token and its opposite as slot 0's: α ≈ (0, 1).
    routed = routed_answers(slots, processor, encoder, np.stack([-token, token]), [0, 1], [(img, q)],
                            max_new_tokens=4)
    with slots.training(1):
        from secure_fcit.fcit.evaluate import generate_answers

        direct = generate_answers(slots.model, processor, [(img, q)], max_new_tokens=4)
    assert routed == direct


def test_image_features_computed_once_give_the_same_logits_and_frozen_tower_is_required(slotted):
    """Training passes each sample's image features, computed once, through the model's
    ``mm_encoder_outputs``: the logits equal those of the full pass from pixels, bit for bit."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from secure_fcit.model.chat import EncodedSample
    from secure_fcit.model.train import image_features

    slots, batch = slotted
    samples = [EncodedSample(batch.input_ids[i], batch.labels[i], batch.pixel_values[i]) for i in range(2)]
    with slots.training(1):
        feats = image_features(slots.model, samples)
        cached = BaseModelOutputWithPooling(pooler_output=feats)
        with torch.no_grad():
            fast = slots.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               mm_encoder_outputs={"image": cached}).logits
        full = _logits(slots, batch)
    assert torch.equal(fast, full)
    tower = slots.model.get_base_model().model.vision_tower
    next(tower.parameters()).requires_grad_(True)
    with pytest.raises(ConfigError, match="vision tower or projector is trainable"):
        image_features(slots.model, samples)


def test_the_feature_cache_runs_the_tower_once_per_sample_asked_for_and_equals_the_batch_pass(slotted, monkeypatch):
    """A distributed-DP round samples a few of a stage's samples: `FeatureCache.take` computes the
    features of only those not seen before, and returns what the one-shot pass returns."""
    import secure_fcit.model.train as train
    from secure_fcit.model.chat import EncodedSample

    slots, batch = slotted
    samples = [EncodedSample(batch.input_ids[i], batch.labels[i], batch.pixel_values[i])
               for i in range(batch.input_ids.shape[0])]
    assert len(samples) >= 2
    with slots.training(1):
        full = train.image_features(slots.model, samples)
        cache = train.FeatureCache(slots.model, samples)
        asked: list[int] = []
        real = train.image_features
        monkeypatch.setattr(train, "image_features", lambda m, s: (asked.append(len(s)), real(m, s))[1])
        first = cache.take([1])
        again = cache.take([1, 0, 1])
    assert asked == [1, 1] and cache.computed == 2 and len(cache) == len(samples)
    assert torch.allclose(first[0], full[1], atol=1e-6)
    assert [torch.allclose(a, full[i], atol=1e-6) for a, i in zip(again, [1, 0, 1], strict=True)] == [True] * 3
    with pytest.raises(IndexError, match=f"sample index {len(samples)} out of range"):
        cache.take([len(samples)])


def test_the_vo_target_set_adapts_exactly_the_language_models_v_and_o_projections(micro_model_dir):
    from secure_fcit.config import LORA_TARGETS, config_from_dict

    model, _ = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=4, alpha=8.0, targets="vo", max_slots=1)
    slots.ensure_slot(0)
    adapted = {n.split(".lora_")[0] for n, _ in slots.model.named_parameters() if ".lora_" in n}
    assert adapted and all("language_model" in n and n.rsplit(".", 1)[1] in LORA_TARGETS["vo"] for n in adapted)
    assert {n.rsplit(".", 1)[1] for n in adapted} == {"v_proj", "o_proj"}
    full = SlotLoRA(load_llava(micro_model_dir)[0], rank=4, alpha=8.0, targets="all", max_slots=1)
    assert 0 < slots.slot_size < full.slot_size
    with pytest.raises(ConfigError, match="fcit.slot_targets must be one of 'mlp', 'attn', 'vo', 'all'"):
        config_from_dict({"fcit": {"slot_targets": "qv"}})
