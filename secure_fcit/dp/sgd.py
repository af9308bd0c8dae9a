"""DP-SGD on one LoRA slot with Opacus: per-sample clipping to C, Gaussian noise sigma*C, Poisson sampling.

Opacus' ``GradSampleModule`` computes the per-sample gradients of the trainable parameters (the
one slot being trained; the vision tower, the base model and every other slot are frozen) and
``DPOptimizer`` clips and sums them. The noise itself comes from ChaCha20 keyed by ``os.urandom``
(`crypto.prg.ChaCha20PRG`), not from ``torch``'s generator: `ChaChaDPOptimizer` overrides only
``add_noise``. Each step samples every example independently with probability q (Poisson); an
empty batch still takes a noised step, as the accountant assumes.

The loss is the per-sequence loss (mean over one sequence's answer tokens) summed over the batch,
so each sample's gradient is its own; the noised sum is divided by the expected batch size q*n.
Data-independent terms (FedProx's proximal term, EWC's penalty, O-LoRA's orthogonality) are added
after the noise: they touch no example, so adding them is post-processing.

Every step checks, before clipping, that the per-sample gradients summed over the batch equal
autograd's ``.grad`` for each trainable parameter (`check_grad_sample`: one sum per parameter and
an allclose). Opacus #820 and its kind (a peft/transformers change that leaves a hook computing
the wrong per-sample gradient) would clip and noise the wrong vectors while the accountant charges
for the right ones; the check turns that into a `PrivacyError` naming the parameter.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from ..crypto.prg import ChaCha20PRG
from ..errors import PrivacyError
from ..model.chat import EncodedSample, collate_train, model_device, per_sequence_loss
from ..model.train import warmup_linear_decay

__all__ = ["ChaChaDPOptimizer", "DPStepResult", "check_grad_sample", "clipped_per_sample_grads", "dp_train_steps",
           "poisson_batches"]


class ChaChaDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with N(0, (sigma*C)^2) noise drawn from a ChaCha20 keystream, or with
    ``skellam = (mu, gamma)``: integer noise, no floating-point sampler (`_add_skellam`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, prg: ChaCha20PRG,
                 skellam: tuple[float, float] | None = None, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.prg = prg
        self.skellam = skellam

    def _add_skellam(self) -> None:
        """The slot's clipped gradient sum x (all parameters, one vector of D coordinates) becomes
        ``(floor(gamma x + u) + Z) / gamma``: u uniform from the ChaCha20 stream (one stochastic
        rounding), Z symmetric Skellam of variance mu per coordinate (`skellam.SkellamSampler`,
        keyed from the same stream). What leaves the mechanism is an integer vector; dividing by
        the power of two gamma and the optimizer after it are post-processing."""
        from .skellam import SkellamSampler

        mu, gamma = self.skellam
        for p in self.params:
            _check_processed_flag(p.summed_grad)
        flat = torch.cat([p.summed_grad.detach().reshape(-1).double().cpu() for p in self.params]).numpy()
        z = np.floor(flat * gamma + self.prg.uniform(flat.size)).astype(np.int64)
        z = z + SkellamSampler(self.prg.bytes(32)).sample(mu, int(flat.size))
        noisy = torch.from_numpy(z.astype(np.float64) / gamma)
        start = 0
        for p in self.params:
            n = p.summed_grad.numel()
            p.grad = noisy[start:start + n].to(p.summed_grad.device, p.summed_grad.dtype).view_as(p)
            start += n
            _mark_as_processed(p.summed_grad)

    def add_noise(self) -> None:
        if self.skellam is not None:
            return self._add_skellam()
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            if std > 0:
                z = torch.from_numpy(self.prg.normal(p.summed_grad.numel()))
                noise = (z * std).to(p.summed_grad.device, p.summed_grad.dtype).view_as(p.summed_grad)
                p.grad = (p.summed_grad + noise).view_as(p)
            else:
                p.grad = p.summed_grad.clone().view_as(p)
            _mark_as_processed(p.summed_grad)


def poisson_batches(n: int, q: float, steps: int, prg: ChaCha20PRG) -> list[np.ndarray]:
    """``steps`` Poisson samples of range(n): each index in each batch with probability q."""
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate q must be in (0, 1], got {q}")
    return [np.flatnonzero(prg.uniform(n) < q) for _ in range(steps)]


def check_grad_sample(params: Sequence[torch.nn.Parameter], names: Sequence[str]) -> None:
    """Raise `PrivacyError` unless each parameter's per-sample gradients (``grad_sample``) sum over
    the batch to its ``.grad`` (autograd's gradient of the summed loss), within float rounding."""
    for p, name in zip(params, names, strict=True):
        gs = getattr(p, "grad_sample", None)
        if p.grad is None and gs is None:
            continue  # the parameter took no part in this batch's loss
        if gs is None or p.grad is None:
            raise PrivacyError(f"per-sample gradient check: {name} has "
                               f"{'no grad_sample' if gs is None else 'no .grad'} after backward; "
                               "Opacus' hooks and autograd disagree (opacus#820?); pin the tested versions")
        if isinstance(gs, list):  # a module used twice: Opacus keeps one tensor per use
            gs = torch.stack(gs).sum(0)
        summed = gs.detach().sum(0, dtype=torch.float64)
        grad = p.grad.detach().to(torch.float64)
        # Rounding tolerance of the parameter's dtype: float32 sums of many terms differ from
        # autograd's in the last digits; a wrong hook differs by the gradient's own magnitude.
        rtol = max(1e-4, 64 * torch.finfo(p.dtype).eps)
        atol = rtol * float(grad.abs().max()) + 1e-12
        if summed.shape != grad.shape or not torch.allclose(summed, grad, rtol=rtol, atol=atol):
            diff = float((summed - grad).abs().max()) if summed.shape == grad.shape else math.inf
            raise PrivacyError(f"per-sample gradient check: the per-sample gradients of {name} do not sum to "
                               f"autograd's gradient (max difference {diff:.3g}, tolerance {atol:.3g}): "
                               "clipping would bound the wrong vectors (opacus#820?); pin the tested versions")


@dataclass
class DPStepResult:
    losses: list[float]
    batch_sizes: list[int]
    step_seconds: list[float]
    #: Mean over steps of the squared noised gradient (post-processing of released values); the
    #: EWC baseline's Fisher under DP.
    mean_sq_grad: list[torch.Tensor] | None = None


def dp_train_steps(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    samples: Sequence[EncodedSample],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    lr: float,
    pad_id: int,
    prg: ChaCha20PRG | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    grad_masks: Sequence[torch.Tensor] | None = None,
    collect_sq: bool = False,
    optimizer: str = "adamw",
    divisor: float | None = None,
    skellam: tuple[float, float] | None = None,
) -> DPStepResult:
    """Run ``steps`` DP-SGD steps on ``params`` (the only trainable parameters of ``model``).

    ``divisor``: the noisy gradient sum of a step is divided by it. Give a public constant (the
    ledger passes ``fcit.local_batch_size``) so that nothing of the mechanism depends on the
    client's sample count; None divides by the expected batch ``sample_rate * len(samples)``.
    ``skellam = (mu, gamma)``: integer Skellam noise instead of the Gaussian (``noise_multiplier``
    is then ignored; `ChaChaDPOptimizer._add_skellam`)."""
    if noise_multiplier < 0 or max_grad_norm <= 0 or steps < 1 or not samples:
        raise PrivacyError(f"DP-SGD needs sigma >= 0, C > 0, steps >= 1 and samples (got {noise_multiplier}, "
                           f"{max_grad_norm}, {steps}, {len(samples)})")
    params = list(params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if {id(p) for p in trainable} != {id(p) for p in params}:
        raise PrivacyError("DP-SGD must train exactly the slot's parameters; others are trainable too")
    prg = prg or ChaCha20PRG()
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    names = [names_by_id.get(id(p), f"parameter {i}") for i, p in enumerate(params)]
    device = model_device(model)
    n = len(samples)
    expected = sample_rate * n if divisor is None else float(divisor)
    if not expected > 0:
        raise PrivacyError(f"DP-SGD divisor must be > 0, got {expected}")
    if optimizer == "adamw":
        base_opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    elif optimizer in ("sgd", "momentum"):
        base_opt = torch.optim.SGD(params, lr=lr, momentum=0.9 if optimizer == "momentum" else 0.0)
    else:
        raise PrivacyError(f"unknown DP-SGD optimizer {optimizer!r} (adamw, sgd or momentum)")
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    opt = ChaChaDPOptimizer(base_opt, prg=prg, skellam=skellam, noise_multiplier=noise_multiplier,
                            max_grad_norm=max_grad_norm,
                            expected_batch_size=expected, loss_reduction="mean")
    # ``expected_batch_size`` is used as a float divisor: the public divisor (or the expected q*n).
    sched = warmup_linear_decay(base_opt, steps)
    losses, sizes, seconds = [], [], []
    sq = [torch.zeros_like(p) for p in params] if collect_sq else None
    model.train()
    try:
        for idx in poisson_batches(n, sample_rate, steps, prg):
            t0 = time.perf_counter()
            if len(idx):
                batch = collate_train([samples[i] for i in idx], pad_id).to(device)
                per_seq = per_sequence_loss(gsm(**batch.model_inputs()).logits, batch.labels)
                with warnings.catch_warnings():  # frozen inputs: Opacus' hooks fire on outputs, as intended
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    per_seq.sum().backward()
                check_grad_sample(params, names)  # before any clipping or noise
                losses.append(float(per_seq.mean().detach()))
            else:  # an empty Poisson batch: zero per-sample gradients, the step is still noised
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            sizes.append(len(idx))
            if grad_masks:
                for p, m in zip(params, grad_masks, strict=True):
                    p.grad_sample = p.grad_sample * m
            opt.pre_step()
            if grad_masks:
                for p, m in zip(params, grad_masks, strict=True):
                    p.grad = p.grad * m
            if sq is not None:
                for acc, p in zip(sq, params, strict=True):
                    acc += p.grad.detach() ** 2 / steps
            if extra_loss is not None:
                extra = torch.autograd.grad(extra_loss(), params, allow_unused=True)
                for p, g, m in zip(params, extra, grad_masks or [None] * len(params), strict=True):
                    if g is not None:
                        p.grad = p.grad + (g if m is None else g * m)
            base_opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - t0)
    finally:
        _release_hooks(gsm, params, model)
    return DPStepResult(losses, sizes, seconds, sq)


def clipped_per_sample_grads(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    samples: Sequence[EncodedSample],
    *,
    max_grad_norm: float,
    pad_id: int,
    chunk: int = 16,
    features: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """The per-sample gradients of ``params`` (the only trainable parameters) for ``samples``,
    each flattened in ``params`` order and clipped to L2 norm <= ``max_grad_norm``: shape (B, p),
    float64. Distributed DP (`dp.distributed`) encodes them; nothing here is released. Opacus'
    ``GradSampleModule`` computes them, in chunks of ``chunk`` samples, each checked against
    autograd (`check_grad_sample`) before clipping. ``features``: the samples' image features
    (`model.train.image_features`, one per sample), computed once per stage by the caller since
    the vision tower is frozen; the gradients are the same up to float32 rounding (the tower's
    batched matmuls round by batch). Returns the gradients and the chunks' losses."""
    params = list(params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if {id(p) for p in trainable} != {id(p) for p in params}:
        raise PrivacyError("distributed DP must train exactly the slot's parameters; others are trainable too")
    if not max_grad_norm > 0:
        raise PrivacyError(f"the clip norm must be > 0, got {max_grad_norm}")
    dim = sum(p.numel() for p in params)
    if not samples:
        return torch.zeros((0, dim), dtype=torch.float64), []
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    names = [names_by_id.get(id(p), f"parameter {i}") for i, p in enumerate(params)]
    if features is not None and len(features) != len(samples):
        raise PrivacyError(f"{len(features)} image features for {len(samples)} samples")
    device = model_device(model)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    out, losses = [], []
    model.train()
    try:
        for lo in range(0, len(samples), chunk):
            batch = collate_train(list(samples[lo : lo + chunk]), pad_id).to(device)
            if features is None:
                logits = gsm(**batch.model_inputs()).logits
            else:
                from transformers.modeling_outputs import BaseModelOutputWithPooling

                cached = BaseModelOutputWithPooling(pooler_output=[f.to(device) for f in features[lo : lo + chunk]])
                logits = gsm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             mm_encoder_outputs={"image": cached}).logits
            per_seq = per_sequence_loss(logits, batch.labels)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                per_seq.sum().backward()
            check_grad_sample(params, names)
            parts = []
            for p in params:
                gs = p.grad_sample
                if isinstance(gs, list):
                    gs = torch.stack(gs).sum(0)
                parts.append(gs.detach().reshape(gs.shape[0], -1).to(torch.float64).cpu())
            g = torch.cat(parts, dim=1)
            norms = g.norm(dim=1, keepdim=True)
            out.append(g * torch.clamp(max_grad_norm / (norms + 1e-12), max=1.0))
            losses.append(float(per_seq.mean().detach()))
            for p in params:
                p.grad_sample = None
                p.grad = None
    finally:
        _release_hooks(gsm, params, model)
    return torch.cat(out), losses


def _release_hooks(gsm, params, model: torch.nn.Module) -> None:
    """Remove Opacus' hooks and per-sample gradients from the shared model; back to eval mode."""
    gsm._close()
    for p in params:
        for attr in ("grad_sample", "summed_grad", "_processed"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    model.eval()
