"""Your own tasks and stream (issue 23): the two-task example of docs/real-data.md, built on disk
in its layout (one task with test.json and images/, one with test.jsonl and images beside it),
run through `simulate` with the Hom config printed on that page (only the model, the sizes and the
output swapped for the micro federation's)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from secure_fcit.cli import main
from secure_fcit.config import config_from_dict
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.simulate import run_simulation

DOC = Path(__file__).resolve().parents[2] / "docs" / "real-data.md"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SIZES = {"small": 8, "large": 24}


def _doc_config() -> dict:
    """The first TOML block of docs/real-data.md that defines a stream."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(tomllib.loads(b) for b in blocks if "[stream]" in b and "[data]" in b)


def _write_dataset(root: Path) -> None:
    colors, sizes = root / "colors", root / "sizes"
    (colors / "images").mkdir(parents=True)
    sizes.mkdir(parents=True)
    train, test = [], []
    for i in range(12):
        name = list(COLORS)[i % 3]
        Image.new("RGB", (32, 32), COLORS[name]).save(colors / "images" / f"{i:04d}.png")
        train.append({"id": f"colors-{i}", "image": f"{i:04d}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": name}]})
    for i in range(3):
        name = list(COLORS)[i]
        Image.new("RGB", (32, 32), COLORS[name]).save(colors / "images" / f"t{i:04d}.png")
        test.append({"question_id": f"colors-t{i}", "image": f"images/t{i:04d}.png",
                     "text": "What color is the square?", "answer": name})
    (colors / "train.json").write_text(json.dumps(train))
    (colors / "test.json").write_text(json.dumps(test))
    train, lines = [], []
    for i in range(12):
        name = list(SIZES)[i % 2]
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste((0, 0, 0), (4, 4, 4 + SIZES[name], 4 + SIZES[name]))
        img.save(sizes / f"{i:04d}.png")
        train.append({"id": f"sizes-{i}", "image": f"{i:04d}.png", "conversations": [
            {"from": "human", "value": "<image>\nIs the square small or large?"}, {"from": "gpt", "value": name}]})
        if i < 2:
            lines.append(json.dumps({"question_id": f"sizes-t{i}", "image": f"{i:04d}.png",
                                     "text": "Is the square small or large?", "answer": name}))
    (sizes / "train.json").write_text(json.dumps(train))
    (sizes / "test.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def user_config(micro_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("my-data")
    _write_dataset(root)
    data = _doc_config()
    assert data["stream"]["stages"] == ["colors", "sizes"] and data["data"]["root"] == "my-data"
    data["data"]["root"] = str(root)
    data["model"] = {"path": str(micro_model_dir), "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    data["eval"] = {"batch_size": 8, "max_new_tokens": 4}
    data["fcit"] |= {"rounds_per_stage": 1, "local_epochs": 1.0, "local_batch_size": 8, "slot_rank": 2,
                     "slot_alpha": 4.0, "tau": 0.5, "n_buckets": 2, "k_min": 1, "min_open_samples": 1}
    data["privacy"] = {"aggregation": "masking", "min_cohort": 2}
    return data


def test_the_documented_two_task_stream_runs_through_simulate(user_config, tmp_path):
    path = tmp_path / "my-stream.toml"
    path.write_text(_toml(user_config))
    assert main(["simulate", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) in (0, 3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stages"] == [["colors"], ["sizes"]], metrics["stages"]
    m = metrics["accuracy_matrix"]
    assert len(m) == 2 and m[0][0] is not None and m[1][0] is not None and m[1][1] is not None
    assert all(set(scores) <= {"colors", "sizes"} for scores in metrics["task_scores"])


def test_a_task_without_a_metric_or_a_folder_is_refused_by_name(user_config):
    data = json.loads(json.dumps(user_config))
    data["stream"]["metrics"] = {"colors": "exact"}
    with pytest.raises(ConfigError, match=r"task\(s\) sizes are not benchmark tasks: give each its metric"):
        config_from_dict(data)  # refused at load, before anything trains
    data["stream"] = {"stages": ["colors", "shapes"], "metrics": {"colors": "exact", "shapes": "exact"}}
    with pytest.raises(ConfigError, match=r"missing task files: .*shapes/train.json"):
        run_simulation(config_from_dict(data), progress=False, log=lambda m: None)


def _toml(data: dict) -> str:
    out = []
    for key, value in data.items():
        if not isinstance(value, dict):
            out.append(f"{key} = {json.dumps(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(f"[{key}]")
            for k, v in value.items():
                if isinstance(v, dict):
                    out.append(f"{k} = {{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }")
                else:
                    out.append(f"{k} = {json.dumps(v)}")
    return "\n".join(out) + "\n"
