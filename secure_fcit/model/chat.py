"""Prompt format, collation with prompt-masked labels, and the per-sequence loss.

The prompt format is LLaVA-1.5's (``USER: <image>\\n… ASSISTANT:``), so the same code drives the
embedded tiny model and a real local LLaVA checkpoint. Labels are -100 on every prompt token: the
loss covers only the answer tokens (and the end-of-sequence token that stops generation).

The loss is per sequence (mean over that sequence's answer tokens), then averaged over the batch.
The Hugging Face built-in loss averages over all answer tokens of the batch instead, which weights
long answers more and couples the samples of a batch: per-sample gradients (DP-SGD) need the
per-sequence form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IGNORE_INDEX",
    "EncodedSample",
    "Batch",
    "format_prompt",
    "encode_sample",
    "encode_prompt",
    "collate_train",
    "collate_prompts",
    "per_sequence_loss",
    "model_device",
]

IGNORE_INDEX = -100


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are: batches, masks and anchors are moved there before use."""
    return next(model.parameters()).device


def format_prompt(instruction: str, image_token: str = "<image>") -> str:
    """The first user turn, with the image placeholder in front of the instruction."""
    return f"USER: {image_token}\n{instruction.strip()} ASSISTANT:"


def _follow_up_prompt(instruction: str) -> str:
    return f" USER: {instruction.strip()} ASSISTANT:"


@dataclass(frozen=True)
class EncodedSample:
    """One training example, tokenized once: ids, labels (-100 on the prompt) and pixels."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long
    pixel_values: torch.Tensor  # (3, H, W) float


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device`` (the model's: collation builds batches on the CPU)."""
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.pixel_values.to(device),
            None if self.labels is None else self.labels.to(device),
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "pixel_values": self.pixel_values,
        }


def _prompt_ids(processor, prompt: str, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    out = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")
    return out["input_ids"][0], out["pixel_values"][0]


def encode_sample(processor, image: Image.Image, turns: Sequence[tuple[str, str]]) -> EncodedSample:
    """Tokenize a (possibly multi-turn) conversation about one image."""
    tok = processor.tokenizer
    eos = tok.eos_token_id
    first_q, _ = turns[0]
    prompt_ids, pixels = _prompt_ids(processor, format_prompt(first_q, processor.image_token), image)
    ids: list[int] = prompt_ids.tolist()
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for i, (question, answer) in enumerate(turns):
        if i > 0:
            q_ids = tok(_follow_up_prompt(question), add_special_tokens=False)["input_ids"]
            ids += q_ids
            labels += [IGNORE_INDEX] * len(q_ids)
        a_ids = tok(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [eos]
        ids += a_ids
        labels += a_ids
    return EncodedSample(torch.tensor(ids), torch.tensor(labels), pixels)


def encode_prompt(processor, image: Image.Image, instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids and pixels for generation."""
    return _prompt_ids(processor, format_prompt(instruction, processor.image_token), image)


def collate_train(samples: Sequence[EncodedSample], pad_id: int) -> Batch:
    """Right-pad a list of encoded samples into a batch."""
    n = len(samples)
    length = max(int(s.input_ids.numel()) for s in samples)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, s in enumerate(samples):
        k = int(s.input_ids.numel())
        input_ids[i, :k] = s.input_ids
        labels[i, :k] = s.labels
        mask[i, :k] = 1
    pixels = torch.stack([s.pixel_values for s in samples])
    return Batch(input_ids, mask, pixels, labels)


def collate_prompts(prompts: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> Batch:
    """Left-pad prompts (for batched greedy generation)."""
    n = len(prompts)
    length = max(int(ids.numel()) for ids, _ in prompts)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, (ids, _) in enumerate(prompts):
        k = int(ids.numel())
        input_ids[i, length - k :] = ids
        mask[i, length - k :] = 1
    pixels = torch.stack([p for _, p in prompts])
    return Batch(input_ids, mask, pixels)


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over each sequence's answer tokens; returns shape (batch,).

    A sequence with no answer token contributes 0 (and no gradient).
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)).float(),
        shift_labels.clamp_min(0).reshape(-1),
        reduction="none",
    ).view_as(shift_labels)
    counts = mask.sum(dim=1).clamp_min(1)
    return (token_loss * mask).sum(dim=1) / counts
