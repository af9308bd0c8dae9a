"""LoRA adapters on the language model only, via peft.

``target_modules`` is a regex anchored on ``language_model``: a plain list such as
``["q_proj", "v_proj"]`` would also match the CLIP vision tower's projections, and the vision tower
stays frozen and adapter-free. ``embed_tokens`` is never a target (Opacus cannot compute its
per-sample gradients through peft's embedding LoRA).
"""

from __future__ import annotations

import re
import warnings

import torch
from peft import LoraConfig, get_peft_model

from ..config import LORA_TARGETS
from ..errors import ConfigError

__all__ = ["LORA_TARGETS", "lora_target_regex", "attach_lora", "lora_parameters", "wrap_peft"]


def lora_target_regex(targets: str = "mlp") -> str:
    if targets not in LORA_TARGETS:
        raise ConfigError(f"unknown LoRA targets {targets!r}; expected one of {', '.join(LORA_TARGETS)}")
    names = "|".join(LORA_TARGETS[targets])
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def wrap_peft(model: torch.nn.Module, config: LoraConfig, adapter_name: str):
    """``peft.get_peft_model``, without the FutureWarning transformers 5 raises when peft reads
    ``is_gradient_checkpointing`` (deprecated there; peft 0.21 still reads it, harmlessly)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config, adapter_name=adapter_name)


def attach_lora(
    model: torch.nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: str = "mlp",
    dropout: float = 0.0,
    adapter_name: str = "default",
):
    """Wrap ``model`` with one LoRA adapter (trainable) on the language model; base stays frozen."""
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=lora_target_regex(targets),
        bias="none",
    )
    peft_model = wrap_peft(model, config, adapter_name)
    hit = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    if not hit or any("vision_tower" in n for n in hit):
        raise ConfigError("LoRA must adapt the language model and only it; check the target regex")
    return peft_model


def lora_parameters(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.nn.Parameter]:
    pattern = re.compile(rf"lora_[AB]\.{re.escape(adapter_name)}\.weight$")
    return {n: p for n, p in model.named_parameters() if pattern.search(n)}
