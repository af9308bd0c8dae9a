"""Benchmark validity: the synthetic FCIT benchmark is neither pre-solved nor unlearnable.

Three figures on the 8 task-related tasks (percentages 0–100):
* ``zero_shot``: the pre-trained base model's mean score (must be low: ≤ 25);
* ``upper_bound``: one LoRA trained on all 8 tasks pooled (centralized multi-task; must be ≥ 70);
* ``finetune_forgetting``: Forgetting of plain sequential LoRA fine-tuning over the 8 tasks (≥ 20).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import Config
from ..data.schedule import TASK_ORDER
from .centralized import multitask_upper_bound, sequential_finetune, zero_shot
from .report import matrix_markdown, plot_matrix
from .workspace import prepare_workspace

__all__ = ["PARTS", "TARGETS", "run_validity", "validity_table", "write_outputs"]

TARGETS = {"zero_shot_max": 25.0, "upper_bound_min": 70.0, "finetune_forgetting_min": 20.0}


def _weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


PARTS = ("zero_shot", "upper_bound", "finetune")


def run_validity(
    config: Config, progress: bool = True, log=print, parts: Sequence[str] = PARTS, previous: dict | None = None
) -> dict:
    """Run the validity figures and return them with per-task scores and wall times.

    ``parts`` picks which of the three runs to do; the others are taken from ``previous`` (an
    earlier result on the same model weights and data), and ``rerun`` in the result names what was
    run this time. Refuses to merge with a result from other weights, data or settings.
    """
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"validity parts must be a non-empty subset of {PARTS}, got {list(parts)}")
    if set(parts) != set(PARTS) and previous is None:
        raise ValueError(f"running only {list(parts)} needs a previous result to take the others from")
    t0 = time.perf_counter()
    ws = prepare_workspace(config, TASK_ORDER, progress=progress)
    prep = time.perf_counter() - t0
    log(f"model: {ws.model_dir}  (prepared with data in {prep:.0f} s)")
    setup = {
        "tasks": list(TASK_ORDER),
        "n_train_per_task": config.data.n_train,
        "n_test_per_task": config.data.n_test,
        "seed": config.seed,
        "lora": dict(config.lora.__dict__),
        "train": dict(config.train.__dict__),
        "model_weights_sha256": _weights_digest(ws.model_dir),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if previous is not None:
        _check_mergeable(previous, setup, parts)
        result = json.loads(json.dumps(previous))
    else:
        result = {"seconds": {}, "per_task": {}}
    result["seconds"]["prepare"] = round(prep, 1)
    if "zero_shot" in parts:
        zs = zero_shot(ws, TASK_ORDER, progress=progress)
        log(f"zero-shot mean {zs.mean:.1f}  ({zs.seconds:.0f} s)")
        result["zero_shot"] = round(zs.mean, 2)
        result["seconds"]["zero_shot"] = round(zs.seconds, 1)
        result["per_task"]["zero_shot"] = {k: round(v, 2) for k, v in zs.scores.items()}
    if "upper_bound" in parts:
        ub = multitask_upper_bound(ws, TASK_ORDER, seed=config.seed, progress=progress)
        log(f"multi-task upper bound mean {ub.mean:.1f}  ({ub.seconds:.0f} s)")
        result["upper_bound"] = round(ub.mean, 2)
        result["seconds"]["upper_bound"] = round(ub.seconds, 1)
        result["per_task"]["upper_bound"] = {k: round(v, 2) for k, v in ub.scores.items()}
    if "finetune" in parts:
        ft = sequential_finetune(ws, TASK_ORDER, seed=config.seed, progress=progress)
        log(f"sequential fine-tuning forgetting {ft.summary['forgetting']:.1f}  ({ft.seconds:.0f} s)")
        result["finetune_forgetting"] = round(ft.summary["forgetting"], 2)
        result["seconds"]["finetune"] = round(ft.seconds, 1)
        result["finetune"] = {
            "accuracy_matrix": [[None if v is None else round(v, 2) for v in row] for row in ft.matrix],
            **{k: round(v, 2) for k, v in ft.summary.items()},
        }
    result["targets"] = TARGETS
    result["pass"] = {
        "zero_shot": result["zero_shot"] <= TARGETS["zero_shot_max"],
        "upper_bound": result["upper_bound"] >= TARGETS["upper_bound_min"],
        "finetune_forgetting": result["finetune_forgetting"] >= TARGETS["finetune_forgetting_min"],
    }
    result["rerun"] = list(parts)
    result["setup"] = setup
    return result


def _check_mergeable(previous: dict, setup: dict, parts: Sequence[str]) -> None:
    """A partial rerun may only reuse figures measured on the same weights, data and settings."""
    old = previous.get("setup", {})
    same = ("tasks", "n_train_per_task", "n_test_per_task", "seed", "lora", "model_weights_sha256")
    for key in same:
        if old.get(key) != setup[key]:
            raise ValueError(f"previous validity result differs in setup.{key}: {old.get(key)!r} != {setup[key]!r}")
    old_train, new_train = old.get("train", {}), setup["train"]
    kept = [p for p in PARTS if p not in parts]
    # The training settings the kept parts depend on must not have changed.
    needs = {"upper_bound": ("batch_size", "lr", "upper_bound_epochs", "upper_bound_lr"),
             "finetune": ("epochs", "batch_size", "lr")}
    for part in kept:
        for k in needs.get(part, ()):
            if k == "upper_bound_lr" and k not in old_train:  # results from before the setting: train.lr
                if new_train[k] not in (0.0, old_train.get("lr")):
                    raise ValueError(f"previous upper bound used lr {old_train.get('lr')}, config says {new_train[k]}")
                continue
            if k == "upper_bound_epochs" and k not in old_train:
                # Results written before the setting existed trained the upper bound for train.epochs.
                if old_train.get("epochs") != new_train[k]:
                    raise ValueError(f"previous upper bound used {old_train.get('epochs')} epochs, config says {new_train[k]}")
                continue
            if old_train.get(k) != new_train[k]:
                raise ValueError(f"previous {part} used train.{k}={old_train.get(k)!r}, config says {new_train[k]!r}")


def dump(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def validity_table(result: dict) -> str:
    """Per-task scores of the three runs as a Markdown table."""
    tasks = result["setup"]["tasks"]
    lines = ["| task | zero-shot | multi-task LoRA | sequential FT (final) |", "|---|---:|---:|---:|"]
    final = result["finetune"]["accuracy_matrix"][-1]
    for i, t in enumerate(tasks):
        zs = result["per_task"]["zero_shot"][t]
        ub = result["per_task"]["upper_bound"][t]
        lines.append(f"| {t} | {zs:.1f} | {ub:.1f} | {final[i]:.1f} |")
    lines.append(
        f"| **mean** | **{result['zero_shot']:.1f}** | **{result['upper_bound']:.1f}** | "
        f"**{result['finetune']['last']:.1f}** (forgetting {result['finetune_forgetting']:.1f}) |"
    )
    return "\n".join(lines)


def write_outputs(result: dict, out: Path, json_name: str = "validity.json") -> list[Path]:
    """``validity.json``, a Markdown summary and the sequential fine-tuning heatmap in ``out``."""
    tasks = result["setup"]["tasks"]
    matrix = result["finetune"]["accuracy_matrix"]
    dump(result, out / json_name)
    png = plot_matrix(matrix, tasks, out / "finetune_matrix.png", "Sequential LoRA fine-tuning: A[t][i]")
    md = out / "validity.md"
    md.write_text(
        "# Benchmark validity\n\n" + validity_table(result) + "\n\n## Sequential fine-tuning A[t][i]\n\n"
        + matrix_markdown(matrix, tasks) + "\n"
    )
    return [out / json_name, md, png]
