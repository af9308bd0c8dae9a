"""A trained state as standard artifacts: one PEFT LoRA adapter per slot, the tokens and the routing.

    python -m secure_fcit export --state RUN/state --out DIR [--model MODEL_DIR]

``DIR/slot-<k>/`` is a standard PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained(base, DIR/slot-<k>)`` loads on
the base model. ``DIR/routing.json`` holds what SSA needs to route between them in another tool:
the slot folders in token order, each slot's identity token, the temperature, the instruction
encoder and the rule (alpha = softmax_j(cos(e(x), token_j) / T), each slot's LoRA output scaled by
its alpha). Only aggregated, released values are in a state, so an export holds nothing a
coordinator did not already publish.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from ..model.loading import load_llava, weights_sha256
from ..model.slots import slot_name
from .predict import load_state
from .simulate import build_slots

__all__ = ["export_state", "ROUTING_FILE"]

ROUTING_FILE = "routing.json"


def export_state(state_dir: str | Path, model_dir: str | Path, out: str | Path) -> dict:
    """Write every slot of ``state_dir`` as a PEFT adapter under ``out`` plus ``routing.json``;
    returns the routing description."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; export writes a fresh folder")
    state = load_state(state_dir)
    model, _ = load_llava(model_dir)
    slots = build_slots(model, state["layout"])
    if slots.slot_size != state["layout"]["slot_size"]:
        raise ModelError(f"the model gives slots of {slots.slot_size} values, the state has "
                         f"{state['layout']['slot_size']}: the state was trained on another model")
    n = state["slots"].shape[0]
    if n == 0:
        raise ConfigError(f"{state_dir}: the state has no slot to export (no round was trained)")
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for s in range(n):
        slots.load_slot(s, state["slots"][s])
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for s in range(n):
            # peft writes a non-default adapter into <dir>/<adapter name>/
            slots.model.save_pretrained(tmp, selected_adapters=[slot_name(s)], safe_serialization=True)
            folder = out / f"slot-{s}"
            shutil.move(str(Path(tmp) / slot_name(s)), folder)
            config = json.loads((folder / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = str(model_dir)
            (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            folders.append(folder.name)
    meta = state["meta"]
    routing = {
        "slots": folders,
        "tokens": np.asarray(state["tokens"], dtype=np.float64).tolist(),
        "ssa_temperature": float(meta.get("ssa_temperature", 0.05)),
        "encoder": meta.get("encoder", "embedded"),
        "rule": "alpha_j = softmax_j(cos(e(x), tokens[j]) / ssa_temperature), e(x) the "
                "instruction encoder's embedding of the instruction; the model's output uses every slot's LoRA delta scaled by alpha_j",
        "base_model": str(model_dir),
        "base_model_sha256": weights_sha256(model_dir),
        "layout": state["layout"],
    }
    (out / ROUTING_FILE).write_text(json.dumps(routing, indent=2))
    return routing
