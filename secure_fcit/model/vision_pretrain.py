"""Stage 1 of the embedded model's pre-training: the CLIP vision tower learns generic features.

A from-scratch vision tower that only ever learns through the language model's caption loss
learns colours and little else in a CPU-sized budget. This stage trains it directly, with small
heads on its last hidden state (the layer LLaVA feeds the projector), on generic targets of the
generic pre-training images (`pretrain_data.py`): per patch token, the colour class and a coarse
foreground mask of its cell; per image, the kind of picture, polygon corners, stroke direction and
the characters of a random UPPER-CASE string. The heads are thrown away afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .pretrain_data import GLYPHS, KINDS, N_COLOURS, PretrainExample, dense_targets

__all__ = ["pretrain_vision_tower"]

_MAX_CHARS = 4
_SUB = 4


class _Heads(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.kind = nn.Linear(hidden, len(KINDS))
        self.corners = nn.Linear(hidden, 5)
        self.direction = nn.Linear(hidden, 4)
        self.chars = nn.Linear(hidden, _MAX_CHARS * (len(GLYPHS) + 1))
        self.colour = nn.Linear(hidden, N_COLOURS + 1)
        self.mask = nn.Linear(hidden, _SUB * _SUB)


def _labels(examples: Sequence[PretrainExample], grid: int) -> dict[str, torch.Tensor]:
    n = len(examples)
    kind = torch.tensor([e.labels["kind"] for e in examples])
    corners = torch.tensor([e.labels.get("corners", 2) - 3 for e in examples])  # -1 = n/a
    direction = torch.tensor([e.labels.get("direction", -1) for e in examples])
    chars = torch.full((n, _MAX_CHARS), -1, dtype=torch.long)
    colour = torch.zeros((n, grid * grid), dtype=torch.long)
    mask = torch.zeros((n, grid * grid, _SUB * _SUB))
    for i, e in enumerate(examples):
        if "chars" in e.labels:
            idx = e.labels["chars"] + [len(GLYPHS)] * (_MAX_CHARS - len(e.labels["chars"]))
            chars[i] = torch.tensor(idx)
        c, m = dense_targets(e.image, grid, _SUB)
        colour[i] = torch.from_numpy(c)
        mask[i] = torch.from_numpy(m)
    return {"kind": kind, "corners": corners, "direction": direction, "chars": chars,
            "colour": colour, "mask": mask}


def _masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the entries whose label applies (>= 0); 0 when none does in the batch."""
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep])


def pretrain_vision_tower(
    vision_tower: nn.Module,
    pixels: torch.Tensor,
    examples: Sequence[PretrainExample],
    grid: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
) -> float:
    """Train ``vision_tower`` in place on the generic targets; returns the final mean loss."""
    labels = _labels(examples, grid)
    hidden = vision_tower.config.hidden_size
    torch.manual_seed(seed)
    heads = _Heads(hidden)
    params = list(vision_tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    order = np.random.default_rng([seed, 13])
    vision_tower.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pre-training vision tower", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.from_numpy(order.choice(len(examples), size=batch_size, replace=False))
        out = vision_tower(pixels[idx], output_hidden_states=True)
        tokens = out.hidden_states[-1][:, 1:]  # the features LLaVA's projector reads
        pooled = tokens.mean(dim=1)
        b = {k: v[idx] for k, v in labels.items()}
        loss = F.cross_entropy(heads.kind(pooled), b["kind"])
        loss = loss + _masked_ce(heads.corners(pooled), b["corners"])
        loss = loss + _masked_ce(heads.direction(pooled), b["direction"])
        char_logits = heads.chars(pooled).view(-1, len(GLYPHS) + 1)
        loss = loss + _masked_ce(char_logits, b["chars"].reshape(-1))
        loss = loss + F.cross_entropy(heads.colour(tokens).reshape(-1, N_COLOURS + 1), b["colour"].reshape(-1))
        loss = loss + F.binary_cross_entropy_with_logits(heads.mask(tokens), b["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    vision_tower.eval()
    return float(np.mean(losses[-50:]))
