"""Answer prompts with a trained global state (``state/`` of a simulation or a federation run).

The state holds the LoRA slot vectors (``slots.safetensors``) and, in ``tokens.json``, the
identity tokens and the slot layout. Answers are routed with SSA over every slot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from ..model.encoder import load_encoder
from ..model.loading import load_llava
from .simulate import build_slots
from .ssa import routed_answers

__all__ = ["load_state", "predict"]


def load_state(state_dir: str | Path) -> dict:
    """Read ``tokens.json`` and ``slots.safetensors``; every mismatch is named."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    state_dir = Path(state_dir)
    meta_path, slots_path = state_dir / "tokens.json", state_dir / "slots.safetensors"
    for p in (meta_path, slots_path):
        if not p.is_file():
            raise ConfigError(f"{state_dir}: not a trained state directory ({p.name} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
        layout, tokens = meta["layout"], np.asarray(meta["tokens"], dtype=np.float32)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{meta_path}: malformed state file: {exc}") from None
    try:
        arrays = load_file(str(slots_path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{slots_path}: cannot read: {exc}") from None
    n = tokens.shape[0] if tokens.ndim == 2 else -1
    names = [f"slot{i}" for i in range(max(n, 0))]
    if n < 1 or sorted(arrays) != sorted(names):
        raise ConfigError(f"{state_dir}: {n} tokens but slots {sorted(arrays)} in slots.safetensors")
    slots = np.stack([arrays[k] for k in names]).astype(np.float32)
    if slots.shape[1] != layout.get("slot_size"):
        raise ConfigError(f"{slots_path}: slots have {slots.shape[1]} values, layout says {layout.get('slot_size')}")
    return {"layout": layout, "tokens": tokens, "slots": slots, "meta": meta}


def predict(state_dir: str | Path, model_dir: str | Path, items: Sequence[tuple[object, str]],
            max_new_tokens: int = 24, encoder: str | None = None, slot: int | None = None) -> list[str]:
    """Greedy SSA-routed answers for (PIL image, instruction) pairs; with ``slot``, that slot
    alone answers (routing off: its weight is 1)."""
    state = load_state(state_dir)
    model, processor = load_llava(model_dir)
    slots = build_slots(model, state["layout"])
    if slots.slot_size != state["layout"]["slot_size"]:
        raise ModelError(
            f"the model gives slots of {slots.slot_size} values, the state has {state['layout']['slot_size']}: "
            "the state was trained on another model"
        )
    ids = list(range(state["slots"].shape[0]))
    for s in ids:
        slots.load_slot(s, state["slots"][s])
    tokens = state["tokens"]
    if slot is not None:
        if not 0 <= slot < len(ids):
            raise ConfigError(f"slot {slot} is not in this state (slots 0..{len(ids) - 1})")
        ids, tokens = [slot], tokens[slot : slot + 1]
    enc = load_encoder(encoder or state["meta"].get("encoder", "embedded"), model_dir)
    return routed_answers(slots, processor, enc, tokens, ids, items, max_new_tokens=max_new_tokens,
                          temperature=float(state["meta"].get("ssa_temperature", 0.05)))
