"""Build (once) and cache the embedded default model: tokenizer + tiny LLaVA + generic pre-training.

The build is deterministic for a seed and a spec on one machine, and lands in
``<cache>/models/tiny-llava-<key>/`` as a standard Hugging Face directory (config, safetensors
weights, tokenizer, processor), so `loading.load_llava` reads it exactly like a real checkpoint.

The default build (default spec, pre-training and seed 0) ships with the package
(``secure_fcit/model/embedded/``): its weights are checked against `SHIPPED_SHA256` and copied into
the cache instead of being rebuilt, so every machine runs the same weights (the pre-training is
not bit-reproducible across machines: float reductions differ). `rebuild_embedded_model` reruns
the pre-training and reports how far its weights land from the shipped ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ModelError
from .chat import collate_train, encode_sample, per_sequence_loss
from .pretrain_data import generate_pretrain_example, pretrain_corpus
from .tiny import TinyLlavaSpec, build_processor, build_tiny_llava
from .tokenizer import train_tokenizer
from .vision_pretrain import pretrain_vision_tower

__all__ = ["PretrainSpec", "default_cache_dir", "embedded_model_dir", "ensure_embedded_model",
           "rebuild_embedded_model", "SHIPPED_DIR", "SHIPPED_SHA256"]

log = logging.getLogger(__name__)

BUILD_VERSION = 3
BUILD_INFO = "secure_fcit_build.json"
#: The shipped default build and the digest of its weights (`loading.weights_sha256`).
SHIPPED_DIR = Path(__file__).resolve().parent / "embedded"
SHIPPED_SHA256 = "ebfd1247f3e2dc21fc01c179afbd785013839f23d8b0a3c5f9ebb65b5dcb9c56"
SHIPPED_FILES = ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", BUILD_INFO)


@dataclass(frozen=True)
class PretrainSpec:
    """Two stages: the vision tower on generic visual targets, then projector + language model on
    generic image-text pairs with the vision tower frozen (LLaVA's recipe, in miniature)."""

    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    n_examples: int = 8000
    vision_steps: int = 1500
    vision_batch_size: int = 32
    vision_lr: float = 2e-3


def default_cache_dir() -> Path:
    """``$SECURE_FCIT_CACHE`` or ``$XDG_CACHE_HOME/secure-fcit`` (``~/.cache/secure-fcit``)."""
    env = os.environ.get("SECURE_FCIT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "secure-fcit"


def _corpus(seed: int) -> list[str]:
    from ..data.tasks import corpus_text

    chat = ["USER:", "ASSISTANT:", "USER: <image>\n", " ASSISTANT: "]
    return corpus_text(seed=seed) + pretrain_corpus() + chat


def _build_key(spec: TinyLlavaSpec, pre: PretrainSpec, seed: int) -> str:
    blob = json.dumps(
        {"spec": spec.to_dict(), "pretrain": pre.__dict__, "seed": seed, "version": BUILD_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def embedded_model_dir(
    cache_dir: Path | None = None,
    spec: TinyLlavaSpec | None = None,
    pretrain: PretrainSpec | None = None,
    seed: int = 0,
) -> Path:
    spec = spec or TinyLlavaSpec()
    pretrain = pretrain or PretrainSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "models" / f"tiny-llava-{_build_key(spec, pretrain, seed)}"


def ensure_embedded_model(
    cache_dir: Path | None = None,
    spec: TinyLlavaSpec | None = None,
    pretrain: PretrainSpec | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Return the cached embedded model directory; if absent, install the shipped build (the
    default spec, pre-training and seed) or build it (any other)."""
    spec = spec or TinyLlavaSpec()
    pretrain = pretrain or PretrainSpec()
    target = embedded_model_dir(cache_dir, spec, pretrain, seed)
    if (target / BUILD_INFO).is_file():
        return target
    shipped = (spec, pretrain, seed) == (TinyLlavaSpec(), PretrainSpec(), 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        if shipped:
            _install_shipped(tmp)
        else:
            info = _build(tmp, spec, pretrain, seed, progress)
            (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same deterministic build first: keep theirs.
            if not (target / BUILD_INFO).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install_shipped(out: Path) -> None:
    """Copy the shipped default build into ``out`` after checking its weights' digest."""
    from .loading import weights_sha256

    missing = [name for name in SHIPPED_FILES if not (SHIPPED_DIR / name).is_file()]
    if missing:
        raise ModelError(f"the shipped embedded model in {SHIPPED_DIR} lacks {', '.join(missing)}: reinstall the "
                         "package (a git checkout: `git checkout secure_fcit/model/embedded`)")
    digest = weights_sha256(SHIPPED_DIR)
    if digest != SHIPPED_SHA256:
        raise ModelError(f"the shipped embedded model in {SHIPPED_DIR} has weights digest {digest}, not the "
                         f"pinned {SHIPPED_SHA256}: the package was modified; reinstall it")
    for name in SHIPPED_FILES:
        shutil.copyfile(SHIPPED_DIR / name, out / name)
    if weights_sha256(out) != SHIPPED_SHA256:
        raise ModelError(f"copying the shipped embedded model to {out} changed its weights")


def rebuild_embedded_model(out: Path | None = None, progress: bool = True) -> dict:
    """Rerun the default build's deterministic pre-training (into ``out``, else a temporary
    folder that is removed) and compare its weights with the shipped ones: the digests and, per
    tensor, the largest absolute difference."""
    from safetensors.torch import load_file

    from .loading import weights_sha256

    keep = out is not None
    folder = Path(out) if keep else Path(tempfile.mkdtemp(prefix="secure-fcit-rebuild-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        info = _build(folder, TinyLlavaSpec(), PretrainSpec(), 0, progress)
        (folder / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        digest = weights_sha256(folder)
        ours, ref = load_file(folder / "model.safetensors"), load_file(SHIPPED_DIR / "model.safetensors")
        if set(ours) != set(ref):
            raise ModelError(f"the rebuilt model's tensors differ from the shipped ones: "
                             f"{sorted(set(ours) ^ set(ref))[:5]}")
        diffs = {k: float((ours[k].double() - ref[k].double()).abs().max()) for k in sorted(ref)}
        worst = max(diffs, key=diffs.get)
        return {"rebuilt_sha256": digest, "shipped_sha256": SHIPPED_SHA256, "identical": digest == SHIPPED_SHA256,
                "tensors": len(diffs), "tensors_different": sum(v > 0 for v in diffs.values()),
                "max_abs_diff": diffs[worst], "max_abs_diff_tensor": worst, "seconds": info["seconds"],
                "kept": str(folder) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _build(out: Path, spec: TinyLlavaSpec, pre: PretrainSpec, seed: int, progress: bool) -> dict:
    t0 = time.perf_counter()
    corpus = _corpus(seed)
    tokenizer = train_tokenizer(corpus, vocab_size=spec.vocab_size)
    processor = build_processor(tokenizer, spec)
    model = build_tiny_llava(tokenizer, spec, seed)

    rng = np.random.default_rng([seed, 7])
    words = sorted({w.strip(".,?!:;") for text in corpus for w in text.split()} - {""})
    words = [w for w in words if "<" not in w]
    examples = [generate_pretrain_example(rng, spec.image_size, words) for _ in range(pre.n_examples)]
    encoded = [encode_sample(processor, ex.image, [(ex.instruction, ex.answer)]) for ex in examples]

    pixels = torch.stack([e.pixel_values for e in encoded])
    vision_loss = pretrain_vision_tower(
        model.model.vision_tower, pixels, examples, spec.image_size // spec.patch_size,
        pre.vision_steps, pre.vision_batch_size, pre.vision_lr, seed, progress,
    )
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)

    torch.manual_seed(seed)
    model.train()
    model.model.vision_tower.eval()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if ("embed" in name or "norm" in name or name.endswith("bias")) else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=pre.lr
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pre.lr, total_steps=pre.steps, pct_start=0.1)
    order = np.random.default_rng([seed, 11])
    losses: list[float] = []
    bar = tqdm(range(pre.steps), desc="pre-training projector + language model", disable=not progress, leave=False)
    for _ in bar:
        idx = order.choice(len(encoded), size=pre.batch_size, replace=False)
        batch = collate_train([encoded[i] for i in idx], tokenizer.pad_token_id)
        outputs = model(**batch.model_inputs())
        loss = per_sequence_loss(outputs.logits, batch.labels).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # saved weights carry no training state; loaders freeze explicitly
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {
        "builder": "secure_fcit.model.pretrain",
        "version": BUILD_VERSION,
        "seed": seed,
        "spec": spec.to_dict(),
        "pretrain": pre.__dict__,
        "final_loss": float(np.mean(losses[-50:])),
        "vision_final_loss": vision_loss,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
