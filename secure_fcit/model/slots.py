"""LoRA subspaces ("slots") for DISCO, on peft: train one slot, route all slots with SSA.

Each slot is a peft LoRA adapter named ``slot<i>`` on the language model's projections (the
``lora`` config's targets; DISCO uses the MLP's gate/up/down). Training activates exactly one slot
and makes only its parameters trainable: the other slots, the base model and the vision tower stay
frozen, so DP noise later touches only the trained slot.

Inference uses Subspace Selective Activation: every slot is active, and slot i's output in each
LoRA layer is scaled per sample by α_i = softmax_i(cos(e(x), token_i) / ε). peft's LoRA layer
computes ``result + lora_B(lora_A(x)) * scaling[adapter]``; SSA sets that scaling to a (batch, 1, 1)
tensor α_i·(alpha/rank) for the duration of a forward/generate call, so ΔW·x = Σ_i α_i B_i A_i x per
sample, with routing computed once per prompt.

A slot's weights travel as one flat float32 vector: every lora_A then lora_B weight of the slot,
in sorted module-name order. The layout is fixed by the model, identical on every party.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import numpy as np
import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from ..errors import ConfigError
from .chat import model_device
from .lora import lora_target_regex, wrap_peft

__all__ = ["SlotLoRA", "ssa_weights", "slot_name"]


def slot_name(index: int) -> str:
    return f"slot{index}"


def ssa_weights(embeddings: torch.Tensor, tokens: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """α (batch, n_slots) = softmax over slots of cos(e(x), token) / temperature."""
    if temperature <= 0:
        raise ConfigError(f"SSA temperature must be > 0, got {temperature}")
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    t = torch.nn.functional.normalize(tokens.float(), dim=-1)
    return torch.softmax(e @ t.T / temperature, dim=-1)


class SlotLoRA:
    """A frozen base model with up to ``max_slots`` LoRA slots."""

    def __init__(self, model: torch.nn.Module, rank: int = 8, alpha: float = 16.0, targets: str = "mlp",
                 max_slots: int = 16) -> None:
        if max_slots < 1:
            raise ConfigError(f"max_slots must be >= 1, got {max_slots}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.max_slots = rank, alpha, max_slots
        self._config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                  target_modules=lora_target_regex(targets), bias="none")
        self.model = wrap_peft(model, self._config, slot_name(0))
        self._slots = [0]
        self._names = {0: self._param_names(0)}
        self.slot_size = sum(p.numel() for p in self._params(0))

    # --- slots --------------------------------------------------------------------------------
    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(self._slots)

    def ensure_slot(self, index: int) -> None:
        if not 0 <= index < self.max_slots:
            raise ConfigError(f"slot {index} is outside 0..{self.max_slots - 1} (max_slots)")
        if index not in self._slots:
            self.model.add_adapter(slot_name(index), self._config)
            self._slots.append(index)
            self._names[index] = self._param_names(index)
        self._freeze_all()

    def _param_names(self, index: int) -> list[str]:
        pattern = re.compile(rf"\.lora_[AB]\.{slot_name(index)}\.weight$")
        names = sorted(n for n, _ in self.model.named_parameters() if pattern.search(n))
        if not names:
            raise ConfigError("no LoRA parameters found for the slot; check the target regex")
        return names

    def _params(self, index: int) -> list[torch.nn.Parameter]:
        named = dict(self.model.named_parameters())
        names = self._names.get(index) or self._param_names(index)
        return [named[n] for n in names]

    def _freeze_all(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def slot_vector(self, index: int) -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in self._params(index)]).float().cpu().numpy().copy()

    def trainable_index(self, freeze_a: bool = False) -> np.ndarray:
        """Positions in a slot vector of the parameters `training` yields (all, or with
        ``freeze_a`` the lora_B weights only), in the order they are flattened there."""
        index = self._slots[0] if self._slots else 0
        self.ensure_slot(index)
        out, offset = [], 0
        for name, p in zip(self._names[index], self._params(index), strict=True):
            if not freeze_a or ".lora_B." in name:
                out.append(np.arange(offset, offset + p.numel()))
            offset += p.numel()
        return np.concatenate(out)

    def load_slot(self, index: int, vector: np.ndarray) -> None:
        self.ensure_slot(index)
        vec = torch.as_tensor(np.asarray(vector, dtype=np.float32))
        if vec.ndim != 1 or vec.numel() != self.slot_size:
            raise ConfigError(f"slot vector has {vec.numel()} values; a slot has {self.slot_size}")
        if not torch.isfinite(vec).all():
            raise ConfigError("slot vector holds non-finite values")
        offset = 0
        with torch.no_grad():
            for p in self._params(index):
                n = p.numel()
                p.copy_(vec[offset : offset + n].view_as(p))
                offset += n

    def initial_vector(self, seed: int) -> np.ndarray:
        """A fresh slot (A random, B = 0, peft's init) drawn from ``seed``: same seed, same vector."""
        gen = torch.Generator().manual_seed(seed)
        parts = []
        for name, p in zip(self._names[self._slots[0]], self._params(self._slots[0]), strict=True):
            if ".lora_A." in name:
                bound = 1.0 / np.sqrt(p.shape[1])
                parts.append((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                parts.append(torch.zeros(p.shape))
        return torch.cat([t.reshape(-1) for t in parts]).numpy().astype(np.float32)

    # --- modes ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training(self, index: int, freeze_a: bool = False) -> Iterator[list[torch.nn.Parameter]]:
        """Only slot ``index`` active and trainable; yields its trainable parameters (with
        ``freeze_a``, FFA-LoRA: its lora_B weights only, A kept as it is)."""
        self.ensure_slot(index)
        self.model.base_model.set_adapter(slot_name(index))
        self._freeze_all()
        params = self._params(index)
        if freeze_a:
            params = [p for n, p in zip(self._names[index], params, strict=True) if ".lora_B." in n]
        for p in params:
            p.requires_grad_(True)
        try:
            yield params
        finally:
            self._freeze_all()
            self.model.eval()

    @contextlib.contextmanager
    def routed(self, alpha: torch.Tensor, slots: list[int]) -> Iterator[None]:
        """SSA: all ``slots`` active, slot ``slots[j]`` scaled per sample by ``alpha[:, j]``."""
        if alpha.ndim != 2 or alpha.shape[1] != len(slots):
            raise ConfigError(f"alpha must be (batch, {len(slots)}), got {tuple(alpha.shape)}")
        names = [slot_name(s) for s in slots]
        for s in slots:
            self.ensure_slot(s)
        self.model.base_model.set_adapter(names)
        self._freeze_all()
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        saved = [dict(m.scaling) for m in layers]
        device = model_device(self.model)
        try:
            for m, base in zip(layers, saved, strict=True):
                for j, name in enumerate(names):
                    if name in m.scaling:
                        m.scaling[name] = alpha[:, j].view(-1, 1, 1).to(device, torch.float32) * base[name]
            yield
        finally:
            for m, s in zip(layers, saved, strict=True):
                m.scaling.clear()
                m.scaling.update(s)
            self._freeze_all()
