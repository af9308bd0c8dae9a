"""Finding 6 (issue 20): the per-step check that per-sample gradients sum to autograd's gradient,
and the dependency bounds in pyproject.toml that the installed (tested) versions satisfy."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from packaging.requirements import Requirement
from PIL import Image

import secure_fcit.dp.sgd as sgd
from secure_fcit.errors import PrivacyError
from secure_fcit.model.chat import encode_sample
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def setup(micro_model_dir):
    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=2, alpha=4.0, targets="all", max_slots=2)
    slots.ensure_slot(1)
    samples = [encode_sample(processor, Image.new("RGB", (32, 32), c), [(f"What color is shape {k}?", a)])
               for k, (c, a) in enumerate([((200, 20, 20), "red"), ((20, 20, 200), "blue"), ((20, 200, 20), "green")])]
    gen = torch.Generator().manual_seed(0)
    slots.load_slot(1, slots.initial_vector(seed=3) + 0.05 * torch.randn(slots.slot_size, generator=gen).numpy())
    return slots, processor.tokenizer.pad_token_id, samples


def _train(slots, pad, samples):
    with slots.training(1) as params:
        sgd.dp_train_steps(slots.model, params, samples, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0,
                           steps=2, lr=1e-3, pad_id=pad)


def test_honest_per_sample_gradients_pass_the_check(setup):
    _train(*setup)  # the check runs every step; it must not trip on Opacus' own per-sample gradients


def test_a_corrupted_grad_sample_stops_the_step_naming_the_parameter(setup, monkeypatch):
    """Adversary: a broken per-sample-gradient hook (opacus#820's kind) that alters one entry of one
    parameter's grad_sample. Claim: the step stops with a PrivacyError naming that parameter, before
    clipping and noise, so the accountant never charges for vectors that were not clipped."""
    slots, pad, samples = setup
    names = {id(p): n for n, p in slots.model.named_parameters()}
    corrupted: list[str] = []

    class CorruptingGradSampleModule(GradSampleModule):
        def capture_backprops_hook(self, module, *args, **kwargs):
            super().capture_backprops_hook(module, *args, **kwargs)
            for p in module.parameters(recurse=False):
                gs = getattr(p, "grad_sample", None)
                if not corrupted and p.requires_grad and isinstance(gs, torch.Tensor):
                    with torch.no_grad():
                        gs.view(-1)[0] += 1.0  # one entry of one sample's gradient
                    corrupted.append(names[id(p)])

    monkeypatch.setattr(sgd, "GradSampleModule", CorruptingGradSampleModule)
    with pytest.raises(PrivacyError, match="per-sample gradient check") as err:
        _train(slots, pad, samples)
    assert corrupted and corrupted[0] in str(err.value)
    # Positive control: the same training without the corruption passes (see the test above), and
    # the shared model is left clean (no hooks, no per-sample gradients).
    assert all(not hasattr(p, "grad_sample") for p in slots.model.parameters())


def test_installed_versions_satisfy_pyproject_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    by_name = {r.name.lower(): r for r in reqs}
    for name in ("opacus", "peft", "transformers", "torch", "dp-accounting"):
        req = by_name[name]
        assert req.specifier, f"{name} has no version bound in pyproject.toml"
        installed = importlib.metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} outside {req.specifier}"
    for name in ("opacus", "peft"):  # the per-sample-gradient stack: an upper bound too
        assert any(s.operator in ("<", "<=", "==", "~=") for s in by_name[name].specifier), name
