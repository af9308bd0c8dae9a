"""Models: the embedded tiny LLaVA (tokenizer, configs, two-stage generic pre-training), the loader
for local HF LLaVA checkpoints, prompt format and per-sequence loss, LoRA (one adapter, or DISCO's
slots with SSA routing) and the instruction identity encoder.
"""

from __future__ import annotations

from secure_fcit.model.chat import (
    IGNORE_INDEX,
    Batch,
    EncodedSample,
    collate_prompts,
    collate_train,
    encode_prompt,
    encode_sample,
    format_prompt,
    per_sequence_loss,
)
from secure_fcit.model.encoder import HFTextEncoder, InstructionEncoder, load_encoder, mean_token
from secure_fcit.model.loading import freeze, load_llava
from secure_fcit.model.lora import LORA_TARGETS, attach_lora, lora_parameters, lora_target_regex
from secure_fcit.model.pretrain import (
    PretrainSpec,
    default_cache_dir,
    embedded_model_dir,
    ensure_embedded_model,
)
from secure_fcit.model.slots import SlotLoRA, slot_name, ssa_weights
from secure_fcit.model.tiny import TinyLlavaSpec, build_processor, build_tiny_llava
from secure_fcit.model.tokenizer import IMAGE_TOKEN, train_tokenizer
from secure_fcit.model.train import TrainSpec, train_steps

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "LORA_TARGETS",
    "Batch",
    "EncodedSample",
    "HFTextEncoder",
    "InstructionEncoder",
    "PretrainSpec",
    "SlotLoRA",
    "TinyLlavaSpec",
    "TrainSpec",
    "attach_lora",
    "build_processor",
    "build_tiny_llava",
    "collate_prompts",
    "collate_train",
    "default_cache_dir",
    "embedded_model_dir",
    "encode_prompt",
    "encode_sample",
    "ensure_embedded_model",
    "format_prompt",
    "freeze",
    "load_encoder",
    "load_llava",
    "lora_parameters",
    "lora_target_regex",
    "mean_token",
    "per_sequence_loss",
    "slot_name",
    "ssa_weights",
    "train_steps",
    "train_tokenizer",
]
