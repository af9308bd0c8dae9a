"""The client's local side: identity tokens from its instructions, training of one LoRA slot.

``SlotLearner`` is DISCO's (and Finetune's) learner; ``FedProxLearner``, ``EWCLearner`` and
``OLoRALearner`` add the baselines' local terms on the same slot machinery. All implement the
`protocols.Learner` interface on a `model.SlotLoRA`. In the in-process simulation
many learners share one `SlotLoRA` (one model in memory): a learner loads the global weights of
its slot before training and returns only the change, so sharing leaks nothing between clients.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError, PrivacyError
from ..model.chat import EncodedSample, collate_train, model_device, per_sequence_loss
from ..model.encoder import InstructionEncoder, mean_token
from ..model.slots import SlotLoRA
from ..model.train import FeatureCache, TrainSpec, train_steps

if TYPE_CHECKING:
    from ..dp.client import ClientPrivacy

__all__ = ["SlotLearner", "FedProxLearner", "EWCLearner", "OLoRALearner"]


class SlotLearner:
    """One client's data per stage, its identity tokens, and local LoRA-slot training."""

    def __init__(
        self,
        client_id: str,
        slots: SlotLoRA,
        encoder: InstructionEncoder,
        samples: Mapping[int, Sequence[EncodedSample]],
        instructions: Mapping[int, Sequence[str]],
        train: TrainSpec,
        pad_id: int,
        seed: int,
        privacy: ClientPrivacy | None = None,
        freeze_a: bool = False,
    ) -> None:
        self.client_id = client_id
        #: FFA-LoRA: train the slot's lora_B only (``fcit.freeze_lora_a``).
        self.freeze_a = freeze_a
        #: DP-SGD, its ledger and budget (None: non-private training).
        self.privacy = privacy
        self._last_sq: list[torch.Tensor] | None = None
        self.slots = slots
        self.encoder = encoder
        self.samples = samples
        self.instructions = instructions
        self.spec = train
        self.pad_id = pad_id
        self.seed = seed
        self._tokens: dict[int, np.ndarray] = {}
        self._token_counts: dict[int, float] = {}
        #: distributed DP: the current stage's image features (the frozen tower's, each computed once,
        #: when a round first samples it)
        self._features: dict[int, FeatureCache] = {}

    @property
    def fresh_randomness(self) -> bool:
        """Whether every ``train`` call draws fresh DP noise (ChaCha20 keyed by ``os.urandom``) and
        is charged to the ledger again: only then may a retried round get a second, fresh update."""
        return self.privacy is not None

    @property
    def distributed(self) -> bool:
        """Whether this learner's rounds are distributed-DP releases (``dp.mode = "distributed"``):
        the worker then asks `distributed_contribution` for the whole vector instead of a delta."""
        return self.privacy is not None and self.privacy.dp.mode == "distributed"

    def distributed_contribution(self, stage: int, round: int, slot: int, weights: np.ndarray, **round_info):
        """The slot's per-sample clipped gradients at the global ``weights``, encoded with a noise
        share (`dp.client.ClientPrivacy.distributed_contribution`); nothing is trained here."""
        self.slots.load_slot(slot, np.asarray(weights, dtype=np.float32))
        samples = list(self.samples[stage])
        with self.slots.training(slot, freeze_a=self.freeze_a) as params:
            if stage not in self._features:  # the frozen tower's output: the same every round; one stage kept
                self._features = {stage: FeatureCache(self.slots.model, samples)}
            return self.privacy.distributed_contribution(self.slots.model, params, samples, stage, round,
                                                         self.pad_id, features=self._features[stage], **round_info)

    def identity_token(self, stage: int) -> np.ndarray:
        """The stage's unit token: the normalised mean instruction embedding, or under DP the token
        mechanism's noisy direction (`dp.client.noisy_token`, charged before it is drawn, once per
        stage in this process); the worker computes the token block and every slot choice from it."""
        if stage not in self._tokens:
            if self.privacy is not None:
                embeddings = self.encoder.encode(list(self.instructions[stage]))
                self._tokens[stage], self._token_counts[stage] = self.privacy.noisy_token(stage, embeddings)
            else:
                self._tokens[stage] = mean_token(self.encoder, list(self.instructions[stage]))
        return self._tokens[stage]

    def token_weight(self, stage: int) -> float:
        """The count written beside the token in the token-phase sum: n_k, or under DP the token
        mechanism's noisy count (the exact n_k is not released)."""
        if self.privacy is None:
            return float(self.num_samples(stage))
        self.identity_token(stage)
        return self._token_counts[stage]

    def num_samples(self, stage: int) -> int:
        return len(self.samples.get(stage, ()))

    def update_weight(self, stage: int) -> int:
        """The weight of this client's update in the FedAvg sum: its sample count, or 1 under DP,
        where the exact count is not released (add/remove-one neighbours, threat_model.md §1)."""
        return 1 if self.privacy is not None else self.num_samples(stage)

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float32)
        self.slots.load_slot(slot, weights)
        self._local_training(stage, round, slot, weights)
        return self.slots.slot_vector(slot) - weights

    def _local_training(self, stage: int, round: int, slot: int, weights: np.ndarray, extra_loss=None,
                        grad_masks: list[torch.Tensor] | None = None, collect_sq: bool = False) -> None:
        """Train slot ``slot`` on this stage's samples; ``grad_masks`` (one per slot parameter)
        zero the gradient outside the entries allowed to learn. With ``privacy`` set this is
        DP-SGD, journaled before the first step; ``collect_sq`` keeps the mean squared noised
        gradient (``_last_sq``)."""
        if self.privacy is not None:
            with self.slots.training(slot, freeze_a=self.freeze_a) as params:
                result = self.privacy.train(self.slots.model, params, list(self.samples[stage]), stage, round,
                                            self.pad_id, extra_loss=extra_loss, grad_masks=grad_masks,
                                            collect_sq=collect_sq)
            self._last_sq = result.mean_sq_grad
            return
        seed = zlib.crc32(f"{self.seed}/{self.client_id}/{stage}/{round}".encode())
        with self.slots.training(slot, freeze_a=self.freeze_a) as params:
            hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in zip(params, grad_masks or [], strict=False)]
            try:
                train_steps(self.slots.model, list(self.samples[stage]), self.spec, self.pad_id, seed,
                            progress=False, extra_loss=extra_loss)
            finally:
                for h in hooks:
                    h.remove()

    def refuse_reason(self, stage: int, round: int) -> str | None:
        if self.privacy is None:
            return None
        if (error := self.privacy.journal_error()) is not None:
            return error
        try:  # the token phase's release, or (a restarted client) the token every slot choice needs
            self.identity_token(stage)
        except PrivacyError as exc:
            return str(exc)
        if round < 0:
            return None
        return self.privacy.refuse_reason(stage, round, self.num_samples(stage))


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


class FedProxLearner(SlotLearner):
    """FedProx: the local loss adds mu/2 * ||theta - theta_global||^2 over the slot's parameters."""

    def __init__(self, *args, mu: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mu = mu

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float32)
        self.slots.load_slot(slot, weights)
        params = self.slots._params(slot)
        anchor = torch.from_numpy(weights.copy()).to(params[0].device)
        self._local_training(
            stage, round, slot, weights, lambda: 0.5 * self.mu * (_flat(params) - anchor).pow(2).sum()
        )
        return self.slots.slot_vector(slot) - weights


class EWCLearner(SlotLearner):
    """EWC with a federated Fisher; the slot vector is [w | w* | F_acc | F_new] (``EWC_PARTS``).

    Local loss: task loss + lambda/2 * sum(F_acc/mean(F_acc) * (w - w*)^2). In a stage's last
    round the worker also measures its diagonal empirical Fisher F_k (mean over its samples of the
    per-sample gradient squared) and adds F_k - F_new to the last block, so the round's FedAvg
    leaves the cohort's mean Fisher there for the organizer to consolidate.
    """

    def __init__(self, *args, lam: float, rounds_per_stage: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.rounds_per_stage = rounds_per_stage

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float32)
        p = self.slots.slot_size
        w, anchor, fisher, f_new = (weights[i * p : (i + 1) * p] for i in range(4))
        self.slots.load_slot(slot, w)
        params = self.slots._params(slot)
        extra = None
        if self.lam > 0 and fisher.sum() > 0:
            importance = torch.from_numpy(fisher / fisher.mean()).to(params[0].device)
            anchor_t = torch.from_numpy(anchor.copy()).to(params[0].device)
            extra = lambda: 0.5 * self.lam * (importance * (_flat(params) - anchor_t).pow(2)).sum()  # noqa: E731
        last = round == self.rounds_per_stage - 1
        self._local_training(stage, round, slot, w, extra, collect_sq=last and self.privacy is not None)
        delta = np.zeros_like(weights)
        delta[:p] = self.slots.slot_vector(slot) - w
        if last:
            delta[3 * p :] = self._fisher(stage, slot) - f_new
        return delta

    def _fisher(self, stage: int, slot: int) -> np.ndarray:
        if self.privacy is not None:
            # Under DP the Fisher is the mean squared *noised* gradient of the round's DP-SGD
            # steps: post-processing of released values, no extra privacy spend. The per-sample
            # Fisher below would release unprotected squared gradients.
            return torch.cat([g.reshape(-1) for g in self._last_sq]).float().cpu().numpy()
        model = self.slots.model
        total = None
        samples = list(self.samples[stage])
        with self.slots.training(slot) as params:
            for sample in samples:
                batch = collate_train([sample], self.pad_id).to(model_device(model))
                loss = per_sequence_loss(model(**batch.model_inputs()).logits, batch.labels).sum()
                grads = torch.autograd.grad(loss, params)
                sq = torch.cat([g.reshape(-1) for g in grads]).pow(2)
                total = sq if total is None else total + sq
        return (total / len(samples)).float().cpu().numpy()


class OLoRALearner(SlotLearner):
    """O-LoRA: one wide slot of ``n_blocks`` rank blocks; stage s trains block s only, with
    lambda * sum ||A_s A_<s^T||_F^2 keeping it orthogonal to the earlier stages' subspaces."""

    def __init__(self, *args, lam: float, block_rank: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.r = block_rank

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=np.float32)
        self.slots.load_slot(slot, weights)
        names = self.slots._names[slot]
        params = self.slots._params(slot)
        lo, hi = stage * self.r, (stage + 1) * self.r
        if hi > params[0].shape[0 if ".lora_A." in names[0] else 1]:
            raise ConfigError(f"the O-LoRA slot has no rank block for stage {stage}")
        a_params = [p for n, p in zip(names, params, strict=True) if ".lora_A." in n]

        def orthogonality() -> torch.Tensor:
            return self.lam * sum((a[lo:hi] @ a[:lo].detach().T).pow(2).sum() for a in a_params)

        # Only block ``stage`` learns: rows lo:hi of every A, columns lo:hi of every B.
        masks = []
        for name, param in zip(names, params, strict=True):
            mask = torch.zeros_like(param)
            if ".lora_A." in name:
                mask[lo:hi, :] = 1.0
            else:
                mask[:, lo:hi] = 1.0
            masks.append(mask)
        self._local_training(stage, round, slot, weights,
                             orthogonality if stage > 0 and self.lam > 0 else None, grad_masks=masks)
        return self.slots.slot_vector(slot) - weights
