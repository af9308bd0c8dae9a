from __future__ import annotations

import json

from secure_fcit.fcit.validity import validity_table, write_outputs


def _result():
    tasks = ["ocr", "captions"]
    return {
        "zero_shot": 1.0, "upper_bound": 80.0, "finetune_forgetting": 30.0,
        "per_task": {"zero_shot": {"ocr": 0.0, "captions": 2.0}, "upper_bound": {"ocr": 70.0, "captions": 90.0}},
        "finetune": {"accuracy_matrix": [[60.0, None], [30.0, 85.0]], "last": 57.5},
        "setup": {"tasks": tasks},
    }


def test_table_and_files(tmp_path):
    table = validity_table(_result())
    assert "| ocr | 0.0 | 70.0 | 30.0 |" in table
    assert "forgetting 30.0" in table
    paths = write_outputs(_result(), tmp_path)
    assert json.loads(paths[0].read_text())["upper_bound"] == 80.0
    assert "Sequential fine-tuning" in paths[1].read_text()
    assert paths[2].stat().st_size > 1000


def test_a_partial_rerun_keeps_only_figures_of_the_same_settings():
    import pytest

    from secure_fcit.config import TrainConfig
    from secure_fcit.errors import ConfigError
    from secure_fcit.fcit.validity import _check_mergeable

    same = {"tasks": ["ocr"], "n_train_per_task": 10, "n_test_per_task": 2, "seed": 0, "lora": {},
            "model_weights_sha256": "x"}
    old = {"setup": {**same, "train": {"epochs": 10.0, "batch_size": 32, "lr": 3e-3, "upper_bound_epochs": 10.0}}}
    new = {**same, "train": dict(TrainConfig(upper_bound_epochs=10.0, upper_bound_lr=1e-3).__dict__)}
    _check_mergeable(old, new, ["upper_bound"])  # the upper bound is rerun: a new lr is fine
    with pytest.raises(ValueError, match="lr"):
        _check_mergeable(old, new, ["finetune"])  # the kept upper bound was trained at 3e-3
    kept = TrainConfig(upper_bound_epochs=10.0, upper_bound_lr=0.0)  # what the old upper bound used
    _check_mergeable(old, {**same, "train": dict(kept.__dict__)}, ["finetune"])
    with pytest.raises(ConfigError, match="upper_bound_lr"):
        TrainConfig(upper_bound_lr=2.0)
