"""One place that prepares what every run needs: the model directory and the benchmark files.

Encoded training samples and parsed test records are cached per task, so a stream of stages or
a set of baselines tokenizes each task once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..errors import ConfigError
from ..model.chat import EncodedSample
from ..model.loading import load_llava
from ..model.lora import attach_lora
from ..model.pretrain import PretrainSpec, default_cache_dir, ensure_embedded_model
from .evaluate import TaskEval, encode_train_records, evaluate_records

__all__ = ["Workspace", "prepare_workspace", "resolve_device", "describe_device", "task_metric"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """What a run's wall time was measured on: the CUDA device's name, or the CPU thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def task_metric(config: Config, task: str) -> str:
    """How ``task`` is scored: ``stream.metrics``, else the synthetic benchmark's task spec."""
    if task in config.stream.metrics:
        return config.stream.metrics[task]
    from ..data.tasks import get_task

    try:
        return get_task(task).metric
    except ConfigError:
        from ..data.spec import METRICS

        raise ConfigError(f"task {task!r} is not a benchmark task: give its metric in the config, "
                          f"[stream] metrics = {{ {task} = \"exact\" }} (one of {', '.join(METRICS)})") from None


@dataclass
class Workspace:
    config: Config
    model_dir: Path
    task_dirs: dict[str, Path]
    device: torch.device
    _train: dict[str, list] = field(default_factory=dict)
    _encoded: dict[str, list[EncodedSample]] = field(default_factory=dict)
    _test: dict[str, list] = field(default_factory=dict)
    _processor: object | None = None

    # --- model ----------------------------------------------------------------------------
    def base_model(self):
        """A fresh frozen base model and its processor."""
        model, processor = load_llava(self.model_dir, device=self.device)
        self._processor = processor
        return model, processor

    def lora_model(self, seed: int):
        """A fresh base model with one trainable LoRA adapter (from the config's ``lora`` section).

        ``seed`` fixes the adapter's initialisation (peft draws lora_A from torch's global RNG).
        """
        model, processor = self.base_model()
        torch.manual_seed(seed)
        lc = self.config.lora
        return attach_lora(model, rank=lc.rank, alpha=lc.alpha, targets=lc.targets), processor

    @property
    def processor(self):
        if self._processor is None:
            self.base_model()
        return self._processor

    # --- data -----------------------------------------------------------------------------
    def _dir(self, task: str) -> Path:
        try:
            return self.task_dirs[task]
        except KeyError:
            raise ConfigError(f"task {task!r} is not in this workspace ({', '.join(self.task_dirs)})") from None

    def train_records(self, task: str) -> list:
        from ..data.llava_json import load_train

        if task not in self._train:
            self._train[task] = load_train(self._dir(task) / "train.json")
        return self._train[task]

    def train_samples(self, task: str) -> list[EncodedSample]:
        if task not in self._encoded:
            self._encoded[task] = encode_train_records(self.processor, self.train_records(task), desc=task)
        return self._encoded[task]

    def test_records(self, task: str) -> list:
        from ..data.llava_json import find_test_file, load_test

        if task not in self._test:
            self._test[task] = load_test(find_test_file(self._dir(task)))
        return self._test[task]

    def max_new_tokens(self, task: str) -> int:
        tok = self.processor.tokenizer
        longest = max(len(tok(" " + r.answer, add_special_tokens=False)["input_ids"]) for r in self.test_records(task))
        return min(self.config.eval.max_new_tokens, longest + 2)

    def evaluate(self, model, task: str, metric: str, progress: bool = False) -> TaskEval:
        return evaluate_records(
            model,
            self.processor,
            self.test_records(task),
            metric,
            max_new_tokens=self.max_new_tokens(task),
            batch_size=self.config.eval.batch_size,
            desc=f"eval {task}",
            progress=progress,
        )


def prepare_workspace(config: Config, tasks: Sequence[str], progress: bool = True) -> Workspace:
    """Build (or reuse) the embedded model and the synthetic benchmark files for ``tasks``."""
    from ..data.llava_json import build_benchmark

    mc, dc = config.model, config.data
    cache = Path(mc.cache_dir) if mc.cache_dir else default_cache_dir()
    if mc.path == "embedded":
        model_dir = ensure_embedded_model(
            cache, pretrain=PretrainSpec(steps=mc.pretrain_steps), seed=mc.seed, progress=progress
        )
    else:
        model_dir = Path(mc.path)
    if dc.root == "synthetic":
        root = cache / "benchmark" / f"seed{dc.seed}-n{dc.n_train}-t{dc.n_test}-s{dc.image_size}"
        files = build_benchmark(root, list(tasks), dc.n_train, dc.n_test, dc.seed, dc.image_size, progress=progress)
        task_dirs = {t: files[t].directory for t in tasks}
    else:
        root = Path(dc.root)
        task_dirs = {t: root / t for t in tasks}
        missing = [str(d / "train.json") for d in task_dirs.values() if not (d / "train.json").is_file()]
        if missing:
            raise ConfigError(f"data.root {root}: missing task files: {', '.join(missing)}")
    return Workspace(config, model_dir, task_dirs, resolve_device(mc.device))
