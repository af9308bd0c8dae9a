"""Load a LLaVA model + processor from a local Hugging Face directory (embedded or real).

No network: ``local_files_only=True``. Weights are safetensors; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor
from transformers.utils import logging as hf_logging

from ..errors import ModelError
from .tiny import ATTN_IMPLEMENTATION

__all__ = ["load_llava", "freeze", "weights_sha256"]

log = logging.getLogger(__name__)


def weights_sha256(path: str | Path) -> str:
    """SHA-256 over a model directory's ``*.safetensors`` files (names and bytes, in name order).

    Results record it. The embedded build is deterministic on one machine (tested), but nothing
    checks it across machines: the same seed and spec built elsewhere may give other weights.
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: no *.safetensors weights to fingerprint")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def load_llava(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Return ``(model, processor)`` from a local LLaVA directory, model frozen and in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json); give a local HF LLaVA checkpoint")
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path}: no *.safetensors weights; only safetensors checkpoints are loaded")
    try:
        # transformers' per-tensor "Loading weights" bar: a local load takes well under a second,
        # and the run's own bars show progress (one per phase)
        hf_logging.disable_progress_bar()
        model = LlavaForConditionalGeneration.from_pretrained(
            path,
            attn_implementation=ATTN_IMPLEMENTATION,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
        )
        processor = LlavaProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load LLaVA model or processor: {exc}") from exc
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model.to(device)
    freeze(model)
    return model, processor


def freeze(model: torch.nn.Module) -> None:
    """Freeze every base weight; adapters are added (and made trainable) on top."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
