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
