"""The validity runs' machinery end to end on a micro model and a micro benchmark."""

from __future__ import annotations

import pytest
import torch

from secure_fcit.config import Config, DataConfig, EvalConfig, LoraConfigSection, ModelConfig, TrainConfig
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.centralized import multitask_upper_bound, sequential_finetune, zero_shot
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.lora import lora_parameters

TASKS = ("classification", "grounding", "captions", "figure_mcq")


@pytest.fixture()
def workspace(micro_model_dir, micro_benchmark):
    root = next(iter(micro_benchmark.values())).directory.parent
    cfg = Config(
        model=ModelConfig(path=str(micro_model_dir), device="cpu"),
        data=DataConfig(root=str(root)),
        lora=LoraConfigSection(rank=4, alpha=8.0),
        train=TrainConfig(epochs=1.0, batch_size=8, lr=1e-2, upper_bound_epochs=1.0, upper_bound_lr=0.0),
        eval=EvalConfig(batch_size=8, max_new_tokens=12),
    )
    return prepare_workspace(cfg, TASKS, progress=False)


def test_zero_shot_scores_every_task(workspace):
    res = zero_shot(workspace, TASKS, progress=False)
    assert set(res.scores) == set(TASKS)
    assert all(0.0 <= v <= 100.0 for v in res.scores.values())


def test_upper_bound_is_deterministic(workspace):
    a = multitask_upper_bound(workspace, TASKS, seed=3, progress=False)
    b = multitask_upper_bound(workspace, TASKS, seed=3, progress=False)
    assert a.scores == b.scores


def test_training_changes_only_lora_weights(workspace):
    from secure_fcit.model.train import TrainSpec, train_steps

    model, processor = workspace.lora_model(seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    train_steps(model, workspace.train_samples("classification"), TrainSpec(epochs=1, batch_size=8, lr=1e-2),
                processor.tokenizer.pad_token_id, seed=0, progress=False)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(p, lora[n]) for n, p in lora_parameters(model).items())


def test_sequential_finetune_fills_the_lower_triangle(workspace):
    res = sequential_finetune(workspace, TASKS[:2], seed=0, epochs=0.5, progress=False)
    assert res.matrix[0][1] is None and res.matrix[1][0] is not None
    assert set(res.summary) == {"last", "avg", "forgetting", "bwt"}


def test_missing_task_folder_is_named(tmp_path, micro_model_dir):
    cfg = Config(model=ModelConfig(path=str(micro_model_dir)), data=DataConfig(root=str(tmp_path)))
    with pytest.raises(ConfigError, match="classification/train.json"):
        prepare_workspace(cfg, ["classification"], progress=False)
