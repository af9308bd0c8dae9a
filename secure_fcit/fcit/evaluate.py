"""Batched greedy evaluation of a (LoRA-adapted) LLaVA model on a task's test records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..model.chat import EncodedSample, collate_prompts, encode_prompt, encode_sample, model_device
from .metrics import score_prediction

__all__ = ["TaskEval", "encode_train_records", "generate_answers", "evaluate_records"]


@dataclass(frozen=True)
class TaskEval:
    score: float
    predictions: tuple[str, ...]


def encode_train_records(processor, records: Sequence, desc: str = "encoding", progress: bool = False):
    """Tokenize LLaVA train records (``data.TrainRecord``) once, for many training steps."""
    from ..data.llava_json import load_image

    out: list[EncodedSample] = []
    for rec in tqdm(records, desc=desc, disable=not progress, leave=False):
        out.append(encode_sample(processor, load_image(rec.image), rec.turns))
    return out


@torch.no_grad()
def generate_answers(
    model,
    processor,
    items: Sequence[tuple[object, str]],
    max_new_tokens: int = 24,
    batch_size: int = 64,
    desc: str = "generating",
    progress: bool = False,
) -> list[str]:
    """Greedy answers for ``(image, instruction)`` pairs, batched with left padding."""
    tok = processor.tokenizer
    model.eval()
    answers: list[str] = []
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = items[start : start + batch_size]
        batch = collate_prompts([encode_prompt(processor, img, q) for img, q in chunk], tok.pad_token_id).to(
            model_device(model)
        )
        out = model.generate(
            **batch.model_inputs(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = out[:, batch.input_ids.shape[1] :]
        answers += [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
    return answers


def evaluate_records(
    model,
    processor,
    records: Sequence,
    metric: str,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    desc: str = "evaluating",
    progress: bool = False,
) -> TaskEval:
    """Mean score (0–100) of greedy answers on test records (``data.TestRecord``)."""
    from ..data.llava_json import load_image

    items = [(load_image(r.image), r.text) for r in records]
    preds = generate_answers(model, processor, items, max_new_tokens, batch_size, desc, progress)
    scores = [score_prediction(metric, p, r.answer, r.answer_bbox) for p, r in zip(preds, records, strict=True)]
    return TaskEval(sum(scores) / len(scores) if scores else 0.0, tuple(preds))
