"""Shared fixtures: a micro embedded model and a micro benchmark, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist (make test runs 2 workers) each worker takes one core's thread.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

from secure_fcit.compliance.micro import MICRO_PRETRAIN_KW, MICRO_SPEC_KW  # noqa: E402


@pytest.fixture(scope="session")
def micro_spec():
    from secure_fcit.model.tiny import TinyLlavaSpec

    return TinyLlavaSpec(**MICRO_SPEC_KW)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory, micro_spec):
    from secure_fcit.model.pretrain import PretrainSpec, ensure_embedded_model

    cache = tmp_path_factory.mktemp("cache")
    return ensure_embedded_model(
        cache, spec=micro_spec, pretrain=PretrainSpec(**MICRO_PRETRAIN_KW), seed=0,
        progress=False,
    )


@pytest.fixture(scope="session")
def micro_benchmark(tmp_path_factory):
    from secure_fcit.data import build_benchmark

    root = tmp_path_factory.mktemp("bench")
    tasks = ["classification", "grounding", "captions", "figure_mcq"]
    return build_benchmark(root, tasks, n_train=24, n_test=8, seed=0, image_size=32, progress=False)
