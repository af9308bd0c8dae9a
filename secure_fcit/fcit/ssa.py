"""Subspace Selective Activation at inference: route every prompt over all LoRA slots.

For each prompt, α = softmax_i(cos(e(x), token_i) / ε) over the global identity tokens, computed
once from the instruction (not per generated token), then generation runs with every slot active
and slot i's output scaled by α_i for that sample (`model.SlotLoRA.routed`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model.chat import collate_prompts, encode_prompt, model_device
from ..model.encoder import InstructionEncoder
from ..model.slots import SlotLoRA, ssa_weights
from .evaluate import TaskEval
from .metrics import score_prediction

__all__ = ["SSA_TEMPERATURE", "routed_answers", "evaluate_routed"]

SSA_TEMPERATURE = 0.05


@torch.no_grad()
def routed_answers(
    slots: SlotLoRA,
    processor,
    encoder: InstructionEncoder,
    tokens: np.ndarray,
    slot_ids: Sequence[int],
    items: Sequence[tuple[object, str]],
    max_new_tokens: int = 24,
    batch_size: int = 64,
    temperature: float = SSA_TEMPERATURE,
    progress: bool = False,
) -> list[str]:
    """Greedy answers for ``(image, instruction)`` pairs with SSA over ``slot_ids``."""
    tok = processor.tokenizer
    token_t = torch.as_tensor(np.asarray(tokens, dtype=np.float32))
    answers: list[str] = []
    for start in tqdm(range(0, len(items), batch_size), desc="SSA generation", disable=not progress, leave=False):
        chunk = items[start : start + batch_size]
        emb = torch.as_tensor(encoder.encode([q for _, q in chunk]))
        alpha = ssa_weights(emb, token_t, temperature)
        batch = collate_prompts([encode_prompt(processor, img, q) for img, q in chunk], tok.pad_token_id).to(
            model_device(slots.model)
        )
        with slots.routed(alpha, list(slot_ids)):
            out = slots.model.generate(
                **batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        answers += [s.strip() for s in tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)]
    return answers


def evaluate_routed(
    slots: SlotLoRA,
    processor,
    encoder: InstructionEncoder,
    tokens: np.ndarray,
    slot_ids: Sequence[int],
    records: Sequence,
    metric: str,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    temperature: float = SSA_TEMPERATURE,
) -> TaskEval:
    """Mean score (0–100) of SSA-routed greedy answers on test records (``data.TestRecord``)."""
    from ..data.llava_json import load_image

    items = [(load_image(r.image), r.text) for r in records]
    preds = routed_answers(slots, processor, encoder, tokens, slot_ids, items, max_new_tokens, batch_size, temperature)
    scores = [score_prediction(metric, p, r.answer, r.answer_bbox) for p, r in zip(preds, records, strict=True)]
    return TaskEval(sum(scores) / len(scores) if scores else 0.0, tuple(preds))
