from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from secure_fcit.errors import ConfigError, ModelError
from secure_fcit.model.chat import IGNORE_INDEX, collate_train, encode_sample, model_device, per_sequence_loss
from secure_fcit.model.loading import load_llava, weights_sha256
from secure_fcit.model.lora import attach_lora, lora_parameters
from secure_fcit.model.pretrain import PretrainSpec, ensure_embedded_model
from secure_fcit.model.tokenizer import train_tokenizer


def test_tokenizer_round_trip_and_image_token():
    tok = train_tokenizer(["USER: <image>\nWhat is the box? ASSISTANT: [0.25, 0.50, 0.75, 1.00]"] * 4, 320)
    ids = tok("[0.25, 0.50]").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "[0.25, 0.50]"
    assert len(tok("<image>", add_special_tokens=False).input_ids) == 1


def test_loader_accepts_the_embedded_directory(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    assert model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in model.parameters())
    assert processor.tokenizer.pad_token_id is not None


def test_loader_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_llava(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors"):
        load_llava(tmp_path)


def test_lora_only_on_language_model(micro_model_dir):
    model, _ = load_llava(micro_model_dir)
    peft_model = attach_lora(model, rank=4, targets="mlp")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    assert all(any(k in n for k in ("gate_proj", "up_proj", "down_proj")) for n in trainable)
    assert not any("vision_tower" in n for n, _ in peft_model.named_parameters() if "lora_" in n)
    assert len(lora_parameters(peft_model)) == len(trainable)
    with pytest.raises(ConfigError, match="unknown LoRA targets"):
        attach_lora(load_llava(micro_model_dir)[0], targets="everything")


def _samples(processor, n=3):
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    answers = ["circle", "a red square on the left", "B"]
    return [encode_sample(processor, img, [("What is shown?", answers[i % 3])]) for i in range(n)]


def test_prompt_tokens_are_masked(micro_model_dir):
    _, processor = load_llava(micro_model_dir)
    s = _samples(processor, 1)[0]
    n_answer = int((s.labels != IGNORE_INDEX).sum())
    answer_ids = processor.tokenizer(" circle", add_special_tokens=False).input_ids
    assert n_answer == len(answer_ids) + 1  # + end of sequence
    assert s.labels[-1] == processor.tokenizer.eos_token_id
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (s.input_ids == image_id).sum() > 0
    assert (s.labels[s.input_ids == image_id] == IGNORE_INDEX).all()


def test_per_sequence_loss_does_not_couple_samples(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    pad = processor.tokenizer.pad_token_id
    samples = _samples(processor, 3)
    batch = collate_train(samples, pad)
    with torch.no_grad():
        together = per_sequence_loss(model(**batch.model_inputs()).logits, batch.labels)
        for i, s in enumerate(samples):
            single = collate_train([s], pad)
            alone = per_sequence_loss(model(**single.model_inputs()).logits, single.labels)
            torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-5)
        # The HF batch-token mean weights the long caption more than the mean of per-sequence losses.
        hf = model(**batch.model_inputs(), labels=batch.labels).loss
    assert not torch.isclose(hf, together.mean(), rtol=1e-3)


def test_a_batch_moves_whole_to_the_models_device(micro_model_dir):
    # Collation builds batches on the CPU; every tensor, labels included, must follow the model
    # (on a CUDA machine a stray CPU tensor stops the first step). The meta device stands in here.
    _, processor = load_llava(micro_model_dir)
    batch = collate_train(_samples(processor, 2), processor.tokenizer.pad_token_id)
    moved = batch.to("meta")
    for name in ("input_ids", "attention_mask", "pixel_values", "labels"):
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(moved, name).shape == getattr(batch, name).shape, name
    assert batch.input_ids.device.type == "cpu"  # the original is left as it was
    model = torch.nn.Linear(2, 2, device="meta")
    assert model_device(model).type == "meta"


def test_pretraining_is_deterministic(tmp_path, micro_spec, micro_model_dir):
    again = ensure_embedded_model(
        tmp_path, spec=micro_spec, pretrain=PretrainSpec(steps=8, batch_size=8, n_examples=64, vision_steps=4, vision_batch_size=8), seed=0,
        progress=False,
    )
    assert again != micro_model_dir
    assert weights_sha256(again) == weights_sha256(micro_model_dir)
    other = ensure_embedded_model(
        tmp_path, spec=micro_spec, pretrain=PretrainSpec(steps=8, batch_size=8, n_examples=64, vision_steps=4, vision_batch_size=8), seed=1,
        progress=False,
    )
    assert weights_sha256(other) != weights_sha256(micro_model_dir)


def test_the_weights_fingerprint_follows_every_byte_and_names_a_directory_without_weights(tmp_path, micro_model_dir):
    copy = tmp_path / "copy"
    shutil.copytree(micro_model_dir, copy)
    digest = weights_sha256(micro_model_dir)
    assert weights_sha256(copy) == digest and len(digest) == 64
    weights = next(copy.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert weights_sha256(copy) != digest
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        weights_sha256(tmp_path)


def test_cached_build_is_reused(micro_spec, micro_model_dir):
    again = ensure_embedded_model(
        micro_model_dir.parent.parent, spec=micro_spec,
        pretrain=PretrainSpec(steps=8, batch_size=8, n_examples=64, vision_steps=4, vision_batch_size=8), seed=0, progress=False,
    )
    assert again == micro_model_dir


def test_the_default_build_is_installed_from_the_shipped_weights_with_their_pinned_digest(tmp_path, monkeypatch):
    # issue 23: every machine runs the same embedded weights. An empty cache gets the shipped copy
    # (checked against SHIPPED_SHA256, no pre-training), loads as a LLaVA model, and a shipped copy
    # whose bytes were changed is refused, never copied.
    from secure_fcit.model import pretrain
    from secure_fcit.model.loading import load_llava

    assert weights_sha256(pretrain.SHIPPED_DIR) == pretrain.SHIPPED_SHA256
    monkeypatch.setattr(pretrain, "_build", lambda *a, **k: pytest.fail("the default build must not pre-train"))
    got = ensure_embedded_model(tmp_path / "cache", progress=False)
    assert weights_sha256(got) == pretrain.SHIPPED_SHA256
    assert sorted(p.name for p in got.iterdir()) == sorted(pretrain.SHIPPED_FILES)
    model, processor = load_llava(got)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.tokenizer.vocab_size > 0

    forged = tmp_path / "forged"
    shutil.copytree(pretrain.SHIPPED_DIR, forged)
    blob = bytearray((forged / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (forged / "model.safetensors").write_bytes(bytes(blob))
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", forged)
    with pytest.raises(ModelError, match="the package was modified"):
        ensure_embedded_model(tmp_path / "cache2", progress=False)
    assert not any((tmp_path / "cache2" / "models").iterdir())  # nothing half-installed


def test_rebuild_reports_the_digest_and_the_largest_difference_against_the_shipped_weights(tmp_path, monkeypatch):
    # `model --rebuild` reruns the pre-training (here replaced by a copy of the shipped weights
    # with one tensor nudged, as a rebuild on other hardware lands) and reports what differs.
    import torch
    from safetensors.torch import load_file, save_file

    from secure_fcit.model import pretrain

    def fake_build(out, spec, pre, seed, progress):
        for name in pretrain.SHIPPED_FILES:
            shutil.copyfile(pretrain.SHIPPED_DIR / name, out / name)
        tensors = load_file(out / "model.safetensors")
        key = sorted(tensors)[3]
        tensors[key] = tensors[key] + 1e-3 * torch.ones_like(tensors[key])
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        fake_build.key = key
        return {"seconds": 0.0}

    monkeypatch.setattr(pretrain, "_build", fake_build)
    report = pretrain.rebuild_embedded_model(tmp_path / "rebuilt", progress=False)
    assert not report["identical"] and report["shipped_sha256"] == pretrain.SHIPPED_SHA256
    assert report["max_abs_diff_tensor"] == fake_build.key and report["tensors_different"] == 1
    assert report["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert report["rebuilt_sha256"] == weights_sha256(tmp_path / "rebuilt")
