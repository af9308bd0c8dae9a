"""DP-SGD on a real LoRA slot: per-sample clipping, the noise's scale, and what noise may not touch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from secure_fcit.compliance.live import clipping_matches_manual_loop, dp_setup, noise_has_accounted_std
from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.sgd import dp_train_steps, poisson_batches
from secure_fcit.errors import PrivacyError
from secure_fcit.model.chat import collate_train, per_sequence_loss


@pytest.fixture()
def setup(micro_model_dir):
    return dp_setup(micro_model_dir)


def test_clipped_sum_equals_a_manual_per_sample_loop(setup):
    # The same check as the compliance command's LV-1 (one implementation, two front ends).
    r = clipping_matches_manual_loop(*setup, clip=0.05)  # C small enough that every sample is clipped
    assert r["min_norm"] > r["clip"]
    assert r["relative_error"] < 1e-5, r


def test_noise_has_std_sigma_c_over_b_and_touches_only_the_slot(setup):
    # LV-2: no answer token, so every per-sample gradient is zero and the step is the noise alone.
    r = noise_has_accounted_std(*setup, sigma=1.3, clip=0.7, q=0.5)
    assert r["touched_only_slot"]
    assert r["lo"] < r["chi2"] < r["hi"], (r["std"], r["target"])
    assert r["mean_ok"]


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
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd", divisor=1.0, skellam=(mu, gamma),
                       prg=ChaCha20PRG(b"\x05" * 32))  # a fixed key: the 99 % interval cannot fail by chance
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


def test_per_sample_gradients_from_cached_image_features_equal_the_full_pass(setup):
    """Distributed DP computes each stage's image features once (the tower is frozen) and passes
    them to every round: the clipped per-sample gradients are the same up to float32 rounding (the
    tower's batched matmuls round differently for a different batch: 1e-7 relative, measured)."""
    from secure_fcit.dp.sgd import clipped_per_sample_grads
    from secure_fcit.model.train import image_features

    slots, pad, samples = setup
    with slots.training(1, freeze_a=True) as params:
        full, _ = clipped_per_sample_grads(slots.model, params, samples, max_grad_norm=0.5, pad_id=pad, chunk=3)
        feats = image_features(slots.model, samples)
        fast, _ = clipped_per_sample_grads(slots.model, params, samples, max_grad_norm=0.5, pad_id=pad, chunk=3,
                                           features=feats)
        assert full.abs().sum() > 0
        assert float((full - fast).norm() / full.norm()) < 1e-6
        with pytest.raises(PrivacyError, match="image features for"):
            clipped_per_sample_grads(slots.model, params, samples, max_grad_norm=0.5, pad_id=pad, features=feats[:1])
