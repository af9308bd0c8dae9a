"""The micro model the live self-tests run on: the embedded architecture at its smallest.

Built deterministically in seconds (8 pre-training steps) and cached like the embedded model, so a
compliance run on a fresh machine needs no download and no full model. ``tests/conftest.py`` builds
the same one for the test suite.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MICRO_SPEC_KW", "MICRO_PRETRAIN_KW", "micro_model"]

MICRO_SPEC_KW = dict(
    image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, vocab_size=400,
)
MICRO_PRETRAIN_KW = dict(steps=8, batch_size=8, n_examples=64, vision_steps=4, vision_batch_size=8)


def micro_model(cache: Path | None = None, progress: bool = False) -> Path:
    """The micro model's directory under ``cache`` (the embedded model's cache when None)."""
    from ..model.pretrain import PretrainSpec, ensure_embedded_model
    from ..model.tiny import TinyLlavaSpec

    return ensure_embedded_model(cache, spec=TinyLlavaSpec(**MICRO_SPEC_KW), pretrain=PretrainSpec(**MICRO_PRETRAIN_KW),
                                 seed=0, progress=progress)
