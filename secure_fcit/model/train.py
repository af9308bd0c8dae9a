"""Non-private local LoRA training with the per-sequence loss (DP-SGD lives in ``dp/``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .chat import EncodedSample, collate_train, model_device, per_sequence_loss

__all__ = ["FeatureCache", "TrainSpec", "train_steps", "warmup_linear_decay", "image_features"]


@dataclass(frozen=True)
class TrainSpec:
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_frac: float = 0.05

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"training needs epochs > 0, batch_size >= 1 and lr > 0 (got {self.epochs}, "
                f"{self.batch_size}, {self.lr})"
            )


def warmup_linear_decay(opt: torch.optim.Optimizer, steps: int, warmup_frac: float = 0.05):
    """Linear warm-up over ``warmup_frac`` of ``steps``, then linear decay to 0 (both trainers)."""
    warm = max(1, int(warmup_frac * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1.0 - max(0, s - warm) / max(1, steps - warm))
    )


@torch.no_grad()
def image_features(model: torch.nn.Module, samples: Sequence[EncodedSample], chunk: int = 64) -> list[torch.Tensor]:
    """Each sample's projected image features, (image tokens, hidden) per sample.

    The vision tower and the projector are frozen (LoRA adapts the language model only), so the
    features of an image do not change during training: computed once, they are passed to every
    step through the model's own ``mm_encoder_outputs`` argument instead of re-running the tower
    every epoch.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(p.requires_grad for p in base.model.vision_tower.parameters()) or any(
        p.requires_grad for p in base.model.multi_modal_projector.parameters()
    ):
        raise ConfigError("the vision tower or projector is trainable; its features cannot be computed once")
    was_training = base.training
    base.eval()
    feats: list[torch.Tensor] = []
    for start in range(0, len(samples), chunk):
        pixels = torch.stack([s.pixel_values for s in samples[start : start + chunk]]).to(model_device(base))
        feats += list(base.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output)
    base.train(was_training)
    return feats


class FeatureCache:
    """The image features (`image_features`) of a fixed list of samples, computed the first time a
    sample is asked for and kept: a round that samples a few of many samples (Poisson rate q) runs
    the frozen tower only on those it has not seen yet. ``take(indices)`` returns them in order."""

    def __init__(self, model: torch.nn.Module, samples: Sequence[EncodedSample]):
        self.model, self.samples = model, list(samples)
        self._done: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def computed(self) -> int:
        """How many samples' features were computed so far."""
        return len(self._done)

    def take(self, indices: Sequence[int]) -> list[torch.Tensor]:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(self.samples)]
        if bad:
            raise IndexError(f"sample index {bad[0]} out of range for {len(self.samples)} samples")
        missing = sorted({i for i in indices if i not in self._done})
        if missing:
            for i, f in zip(missing, image_features(self.model, [self.samples[i] for i in missing]), strict=True):
                self._done[i] = f
        return [self._done[i] for i in indices]


def train_steps(
    model: torch.nn.Module,
    samples: Sequence[EncodedSample],
    spec: TrainSpec,
    pad_id: int,
    seed: int,
    desc: str = "training",
    progress: bool = True,
    extra_loss=None,
) -> list[float]:
    """Train the model's trainable parameters on ``samples``; returns the per-step losses.

    ``extra_loss`` (optional) is a callable returning a scalar added to the task loss each step
    (FedProx's proximal term, EWC's penalty, O-LoRA's orthogonality term).
    """
    if not samples:
        raise ConfigError("no training samples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; attach a LoRA adapter first")
    n = len(samples)
    bs = min(spec.batch_size, n)
    steps = max(1, int(round(spec.epochs * n / bs)))
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = warmup_linear_decay(opt, steps, spec.warmup_frac)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    device = model_device(model)
    features = image_features(model, samples)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    pos = 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        if pos + bs > n:
            order = rng.permutation(n)
            pos = 0
        idx = order[pos : pos + bs]
        pos += bs
        batch = collate_train([samples[i] for i in idx], pad_id).to(device)
        cached = BaseModelOutputWithPooling(pooler_output=[features[i] for i in idx])
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, mm_encoder_outputs={"image": cached})
        loss = per_sequence_loss(out.logits, batch.labels).mean()
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    return losses
