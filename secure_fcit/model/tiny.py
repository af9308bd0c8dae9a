"""The embedded default model: a tiny LLaVA (CLIP vision tower + Llama text model) built from configs.

Nothing is downloaded: the architecture comes from `transformers` configs, the tokenizer is trained
offline (`tokenizer.py`), and the weights come from a short generic pre-training (`pretrain.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ..errors import ConfigError

__all__ = ["TinyLlavaSpec", "build_tiny_llava", "build_processor", "ATTN_IMPLEMENTATION"]

# Eager attention: the model is tiny, and eager is the implementation Opacus' per-sample
# gradient hooks and every CPU build handle.
ATTN_IMPLEMENTATION = "eager"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the embedded model. The defaults train on 2 CPU cores in minutes."""

    # 32x32 input in 4x4 patches: 64 image tokens, each small enough for a from-scratch tower to
    # learn from on a CPU budget (measured: far better than 64x64 in 16x16 or 8x8 patches).
    image_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 6
    text_intermediate: int = 512
    vocab_size: int = 1024
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        for name in ("vision_hidden", "text_hidden"):
            heads = self.vision_heads if name == "vision_hidden" else self.text_heads
            if getattr(self, name) % heads:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be divisible by its head count ({heads})")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec) -> LlavaProcessor:
    # The PIL backend (what transformers < 5 called CLIPImageProcessor): no torchvision needed, and
    # no fallback warning on every load.
    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=False,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_tiny_llava(
    tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec, seed: int
) -> LlavaForConditionalGeneration:
    """A freshly initialised tiny LLaVA whose vocabulary and image token match ``tokenizer``."""
    vision = CLIPVisionConfig(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=spec.num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = ATTN_IMPLEMENTATION
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
