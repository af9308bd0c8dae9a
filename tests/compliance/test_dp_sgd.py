"""DP-SGD on a real LoRA slot: per-sample clipping, the noise's scale, and what noise may not touch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.sgd import dp_train_steps, poisson_batches
from secure_fcit.errors import PrivacyError
from secure_fcit.model.chat import collate_train, encode_sample, per_sequence_loss
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA


@pytest.fixture()
def setup(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=2, alpha=4.0, targets="all", max_slots=2)
    slots.ensure_slot(1)
    colors = ((200, 20, 20), (20, 20, 200), (20, 200, 20), (200, 200, 20), (20, 200, 200), (90, 90, 90))
    answers = ("red", "blue", "green", "yellow", "cyan", "gray")
    samples = [encode_sample(processor, Image.new("RGB", (32, 32), c), [(f"What color is shape {k}?", a)])
               for k, (c, a) in enumerate(zip(colors, answers, strict=True))]
    # Non-zero B so that A gets gradients too.
    gen = torch.Generator().manual_seed(0)
    vec = slots.initial_vector(seed=3) + 0.05 * torch.randn(slots.slot_size, generator=gen).numpy()
    slots.load_slot(1, vec)
    return slots, processor.tokenizer.pad_token_id, samples


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_clipped_sum_equals_a_manual_per_sample_loop(setup):
    slots, pad, samples = setup
    C = 0.05  # small enough that every sample is clipped
    with slots.training(1) as params:
        manual = [torch.zeros_like(p) for p in params]
        norms = []
        for s in samples:
            batch = collate_train([s], pad)
            loss = per_sequence_loss(slots.model(**batch.model_inputs()).logits, batch.labels).sum()
            grads = torch.autograd.grad(loss, params)
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            norms.append(float(norm))
            factor = min(1.0, C / (float(norm) + 1e-6))
            for acc, g in zip(manual, grads, strict=True):
                acc += g * factor
        before = [p.detach().clone() for p in params]
        # q = 1: every sample in the one batch; SGD with lr 1: the step is -(clipped sum)/n.
        dp_train_steps(slots.model, params, samples, noise_multiplier=0.0, max_grad_norm=C, sample_rate=1.0,
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd")
        step = [b - p.detach() for b, p in zip(before, params, strict=True)]
    assert min(norms) > C
    flat_dp = torch.cat([s.reshape(-1) for s in step])
    flat_manual = torch.cat([m.reshape(-1) for m in manual]) / len(samples)
    rel = float((flat_dp - flat_manual).norm() / flat_manual.norm())
    assert rel < 1e-5, rel


def test_noise_has_std_sigma_c_over_b_and_touches_only_the_slot(setup):
    slots, pad, samples = setup
    # No answer token: every per-sample gradient is exactly zero, so the step is the noise alone.
    silent = [dataclasses.replace(s, labels=torch.full_like(s.labels, -100)) for s in samples]
    sigma, C, q = 1.3, 0.7, 0.5
    expected_b = q * len(silent)
    before = _snapshot(slots.model)
    with slots.training(1) as params:
        names = slots._names[1]
        dp_train_steps(slots.model, params, silent, noise_multiplier=sigma, max_grad_norm=C, sample_rate=q,
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd")
    after = _snapshot(slots.model)
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed and set(changed) <= set(names)
    noise = torch.cat([(after[n] - before[n]).reshape(-1) for n in names]).double().numpy()
    assert np.isfinite(noise).all()
    d, target = noise.size, sigma * C / expected_b
    stat = (d - 1) * noise.var(ddof=1) / target**2
    lo, hi = stats.chi2.ppf([0.005, 0.995], d - 1)
    assert lo < stat < hi, (noise.std(), target)
    assert abs(noise.mean()) < 4 * target / np.sqrt(d)


def test_an_empty_poisson_batch_still_takes_a_noised_step(setup):
    slots, pad, samples = setup
    with slots.training(1) as params:
        before = [p.detach().clone() for p in params]
        res = dp_train_steps(slots.model, params, samples[:1], noise_multiplier=1.0, max_grad_norm=1.0,
                             sample_rate=1e-9, steps=2, lr=0.1, pad_id=pad, optimizer="sgd")
        moved = any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert res.batch_sizes == [0, 0] and moved


def test_poisson_batches_sample_each_index_with_probability_q():
    batches = poisson_batches(1000, 0.1, 50, ChaCha20PRG(b"\x07" * 32))
    sizes = np.array([len(b) for b in batches])
    assert abs(sizes.mean() - 100) < 10 and sizes.std() > 0


def test_only_the_slot_may_be_trainable(setup):
    slots, pad, samples = setup
    with slots.training(1) as params:
        with pytest.raises(PrivacyError, match="exactly the slot"):
            dp_train_steps(slots.model, params[:1], samples, noise_multiplier=1.0, max_grad_norm=1.0,
                           sample_rate=0.5, steps=1, lr=0.1, pad_id=pad)


def test_a_samples_gradient_does_not_depend_on_its_batchmates(setup):
    """The per-sequence loss: sample 0's per-sample gradient is the same next to any other sample
    (the HF batch-token mean would weight it by its batchmates' answer lengths)."""
    slots, pad, samples = setup

    def grads_of_first(batch_samples):
        with slots.training(1) as params:
            batch = collate_train(batch_samples, pad)
            loss = per_sequence_loss(slots.model(**batch.model_inputs()).logits, batch.labels)
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss[0], params)])

    a = grads_of_first([samples[0], samples[1]])
    b = grads_of_first([samples[0], samples[4]])
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_noise_comes_from_the_chacha20_stream(setup):
    """Same ChaCha20 seed, same noise; another seed, other noise: the noise is the keystream's,
    not torch's global generator (which is left untouched)."""
    slots, pad, samples = setup
    silent = [dataclasses.replace(s, labels=torch.full_like(s.labels, -100)) for s in samples]

    def step(seed):
        slots.load_slot(1, np.zeros(slots.slot_size, np.float32))
        with slots.training(1) as params:
            dp_train_steps(slots.model, params, silent, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0,
                           steps=1, lr=1.0, pad_id=pad, optimizer="sgd", prg=ChaCha20PRG(seed))
        return slots.slot_vector(1)

    torch_state = torch.random.get_rng_state()
    a, b, c = step(b"\x01" * 32), step(b"\x01" * 32), step(b"\x02" * 32)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_skellam_noise_is_integer_on_the_grid_with_the_accounted_variance(setup):
    """dp.noise = "skellam" (Mironov 2012's floating-point attack has no float sampler to target):
    the step's noise is an integer vector divided by gamma, with per-coordinate variance mu."""
    slots, pad, samples = setup
    silent = [dataclasses.replace(s, labels=torch.full_like(s.labels, -100)) for s in samples]
    slots.load_slot(1, np.zeros(slots.slot_size, dtype=np.float32))  # the step is then -noise exactly
    mu, gamma = 90.0, 16.0
    with slots.training(1) as params:
        dp_train_steps(slots.model, params, silent, noise_multiplier=0.0, max_grad_norm=1.0, sample_rate=1.0,
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd", divisor=1.0, skellam=(mu, gamma))
        z = -torch.cat([p.detach().reshape(-1) for p in params]).double().numpy() * gamma
    assert np.array_equal(z, np.round(z)), "the noise is not on the 1/gamma grid"
    d = z.size
    stat = (d - 1) * z.var(ddof=1) / mu
    lo, hi = stats.chi2.ppf([0.005, 0.995], d - 1)
    assert lo < stat < hi and abs(z.mean()) < 4 * np.sqrt(mu / d)


def test_local_skellam_rounds_are_journaled_as_skellam_releases_and_audit_clean(setup, tmp_path):
    from secure_fcit.config import DPConfig
    from secure_fcit.dp.client import ClientPrivacy
    from secure_fcit.dp.report import audit

    slots, pad, samples = setup
    dp = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, noise="skellam", sample_rate=0.5)
    privacy = ClientPrivacy(tmp_path, "client-000", dp, batch_size=4, local_epochs=1.0, lr=0.1, planned_rounds=2)
    assert privacy.refuse_reason(0, 0, len(samples)) is None
    for r in range(2):
        with slots.training(1) as params:
            res = privacy.train(slots.model, params, samples, 0, r, pad)
        assert len(res.batch_sizes) == 2  # round(local_epochs / q) steps
    entries = [e for e in privacy.ledger.journal.entries if e["kind"] == "skellam"]
    assert [e["steps"] for e in entries] == [2, 2] and {e["noise"] for e in entries} == {"skellam-local"}
    privacy.close()
    rep = audit(tmp_path, progress=False)
    (client,) = rep["clients"]
    assert client["mismatches"] == [] and 7.0 < client["epsilon"]["rdp"] <= 8.0
    assert rep["dp_modes"] == ["local"] and {r["mechanism"] for r in client["rounds"]} == {"skellam-local"}
