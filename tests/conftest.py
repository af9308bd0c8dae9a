"""Shared fixtures: a micro embedded model and a micro benchmark, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

MICRO_SPEC_KW = dict(
    image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, vocab_size=400,
)


@pytest.fixture(scope="session")
def micro_spec():
    from secure_fcit.model.tiny import TinyLlavaSpec

    return TinyLlavaSpec(**MICRO_SPEC_KW)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory, micro_spec):
    from secure_fcit.model.pretrain import PretrainSpec, ensure_embedded_model

    cache = tmp_path_factory.mktemp("cache")
    return ensure_embedded_model(
        cache, spec=micro_spec, pretrain=PretrainSpec(steps=8, batch_size=8, n_examples=64, vision_steps=4, vision_batch_size=8), seed=0,
        progress=False,
    )


@pytest.fixture(scope="session")
def micro_benchmark(tmp_path_factory):
    from secure_fcit.data import build_benchmark

    root = tmp_path_factory.mktemp("bench")
    tasks = ["classification", "grounding", "captions", "figure_mcq"]
    return build_benchmark(root, tasks, n_train=24, n_test=8, seed=0, image_size=32, progress=False)
