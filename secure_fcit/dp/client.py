"""A client's DP side as a learner sees it: refuse or plan a round, journal it, then run DP-SGD.

`ClientPrivacy` owns the client's `PrivacyLedger`. A journal that fails verification when the
ledger opens does not stop the process: the client refuses every round with the reason (so the
federation goes on without it) until an operator restores the journal — see threat_model.md.
Every entry is signed with ``signing_key`` (the deployment passes the client's certificate key;
without one the ledger makes an in-memory key, see `PrivacyLedger`).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import Config, DPConfig
from ..crypto.prg import ChaCha20PRG
from ..errors import ConfigError, JournalError, PrivacyError
from ..model.chat import EncodedSample
from .accounting import STREAM_PARTITION
from .ledger import PrivacyLedger, ReleasePlan, RoundPlan
from .sgd import DPStepResult, clipped_per_sample_grads, dp_train_steps

if TYPE_CHECKING:
    from ..model.train import FeatureCache

__all__ = ["ClientPrivacy", "planned_rounds", "planned_by_task", "stages_by_task", "noisy_token", "noisy_sum"]


def planned_rounds(config: Config, n_stages: int) -> int:
    """``dp.planned_rounds``, or expected participations + 2 standard deviations when it is 0."""
    if config.dp.planned_rounds:
        return config.dp.planned_rounds
    n = n_stages * config.fcit.rounds_per_stage
    p = config.scenario.clients_per_round / config.scenario.n_clients
    return max(1, math.ceil(n * p + 2 * math.sqrt(n * p * (1 - p))))


def planned_by_task(config: Config, tasks: dict[int, tuple[str, ...]], n_stages: int) -> dict[str, int]:
    """`planned_rounds` per task: a task held in m stages plans the participation of m stages.
    Stages without a task label count for `accounting.STREAM_PARTITION`, which composes them all."""
    stages = stages_by_task(tasks.get(stage) for stage in range(n_stages))
    return {task: planned_rounds(config, m) for task, m in stages.items()}


def stages_by_task(labels_per_stage) -> dict[str, int]:
    """How many stages hold each task, from each stage's task labels (none: `STREAM_PARTITION`)."""
    stages: dict[str, int] = {}
    for labels in labels_per_stage:
        for task in labels or (STREAM_PARTITION,):
            stages[task] = stages.get(task, 0) + 1
    return stages


def noisy_token(embeddings: np.ndarray, token_sigma: float, count_sigma: float,
                prg: ChaCha20PRG) -> tuple[np.ndarray, float]:
    """The token mechanism (``dp.token_sigma``, ``dp.token_count_sigma``): (unit token, count).

    Each row of ``embeddings`` (one per sample) is clipped to norm 1; S is their sum and n their
    number, so one sample more or less moves (S / token_sigma, n / count_sigma) by at most
    sqrt(1/token_sigma^2 + 1/count_sigma^2) in L2. Gaussian noise of these standard deviations is
    added to S and n; the token is the noisy S normalised, the count the noisy n floored at 1.
    Both are post-processing of that one Gaussian mechanism, and so is everything computed from
    them (the token block, the slot choice of every round)."""
    s, n = noisy_sum(embeddings, token_sigma, count_sigma, prg)
    norm = float(np.linalg.norm(s))
    if not norm > 0:  # probability zero; the direction is then any unit vector
        s, norm = np.eye(1, s.size).ravel(), 1.0
    return s / norm, max(n, 1.0)


def noisy_sum(embeddings: np.ndarray, token_sigma: float, count_sigma: float,
              prg: ChaCha20PRG) -> tuple[np.ndarray, float]:
    """The token mechanism's raw output (`noisy_token`): (S + N(0, token_sigma^2 I), n + N(0, count_sigma^2)),
    S the sum of the rows of ``embeddings`` clipped to norm 1."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or not len(emb) or not np.isfinite(emb).all():
        raise PrivacyError(f"the token mechanism needs finite (n >= 1, d) embeddings, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    clipped = emb / np.maximum(norms, 1.0)
    noise = prg.normal(emb.shape[1] + 1)
    return (clipped.sum(axis=0) + float(token_sigma) * noise[:-1],
            float(len(emb)) + float(count_sigma) * float(noise[-1]))


class ClientPrivacy:
    """Per-task accounting: ``tasks`` maps each stage to the tasks of the client's samples in it
    (public labels fixed before training); a round charges each of its tasks, and the client's
    epsilon is the maximum over tasks. ``planned_rounds`` is one number, or one per task.

    ``noise_prg`` is for equality tests only: ``noise_prg(stage, round)`` gives the round's
    ChaCha20 stream (batch sampling and noise). No config or command line reaches it; without it
    (always, in production) every round draws a fresh key from ``os.urandom``."""

    def __init__(self, root: Path, client_id: str, dp: DPConfig, *, batch_size: int, local_epochs: float,
                 lr: float, planned_rounds: int | dict[str, int],
                 tasks: dict[int, tuple[str, ...]] | None = None,
                 noise_prg: Callable[[int, int], ChaCha20PRG] | None = None,
                 signing_key: Ed25519PrivateKey | None = None, public_rounds: int = 0,
                 token_stages: int | None = None) -> None:
        self.dp = dp
        #: Distributed DP: the releases per task the public noise is sized for (same for every
        #: client: `planned_rounds` of one stage unless ``dp.planned_rounds`` says otherwise).
        self.public_rounds = public_rounds or (planned_rounds if isinstance(planned_rounds, int)
                                               else max(planned_rounds.values(), default=1))
        self._noise_prg = noise_prg
        self.client_id = client_id
        self.batch_size, self.local_epochs, self.lr = batch_size, local_epochs, lr
        self.planned_rounds = planned_rounds
        self.tasks = dict(tasks or {})
        self.error: str | None = None
        self.ledger: PrivacyLedger | None = None
        try:
            self.ledger = PrivacyLedger(root, client_id, dp, signing_key=signing_key)
        except JournalError as exc:
            self.error = str(exc)
        self._plans: dict[tuple[int, int], RoundPlan] = {}
        self.last_release: ReleasePlan | None = None
        # The token releases each task plans: one per stage that holds it (local DP-SGD sizes sigma
        # for them); distributed DP sizes the public variance for one stage's, like its rounds.
        # ``token_stages`` (one account over the stream): the stages the client holds data in.
        self.token_stages: int | dict[str, int] = (
            token_stages if token_stages is not None else (stages_by_task(self.tasks.values()) or 1))

    def close(self) -> None:
        """Release the ledger folder's lock (a restarted client in this process can then open it)."""
        if self.ledger is not None:
            self.ledger.close()

    def _plan(self, stage: int, round: int, n_samples: int) -> RoundPlan:
        if self.ledger is None:
            raise JournalError(self.journal_error())
        return self.ledger.plan(stage, round, n_samples, self.batch_size, self.local_epochs, self.planned_rounds,
                                self.tasks.get(stage) or (STREAM_PARTITION,), token_stages=self.token_stages)

    def journal_error(self) -> str | None:
        if self.ledger is None:
            return f"the spend journal failed verification; no training until an operator restores it: {self.error}"
        return None

    def refuse_reason(self, stage: int, round: int, n_samples: int) -> str | None:
        if self.dp.mode == "distributed" or self.dp.noise == "skellam":  # planned with the slot's size
            return self.journal_error()
        try:
            self._plans[(stage, round)] = self._plan(stage, round, n_samples)
        except PrivacyError as exc:
            return str(exc)
        return None

    def train(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], samples: Sequence[EncodedSample],
              stage: int, round: int, pad_id: int, extra_loss: Callable[[], torch.Tensor] | None = None,
              grad_masks: Sequence[torch.Tensor] | None = None, collect_sq: bool = False) -> DPStepResult:
        if self.dp.noise == "skellam":
            return self._train_skellam(model, params, samples, stage, round, pad_id, extra_loss=extra_loss,
                                       grad_masks=grad_masks, collect_sq=collect_sq)
        plan = self._plans.pop((stage, round), None) or self._plan(stage, round, len(samples))
        self.ledger.charge(plan)  # journaled and fsynced before the first step
        return dp_train_steps(model, params, samples, noise_multiplier=plan.sigma, max_grad_norm=plan.max_grad_norm,
                              sample_rate=plan.q, steps=plan.steps, lr=self.dp.lr or self.lr, pad_id=pad_id,
                              divisor=float(plan.batch_size),
                              optimizer=self.dp.optimizer,
                              extra_loss=extra_loss, grad_masks=grad_masks, collect_sq=collect_sq,
                              prg=None if self._noise_prg is None else self._noise_prg(stage, round))

    def _train_skellam(self, model, params, samples, stage, round, pad_id, **kw) -> DPStepResult:
        """Local DP-SGD with integer Skellam noise (``dp.noise = "skellam"``): each step's clipped
        gradient sum is scaled by gamma = 2^scale_bits (16 when 0), rounded once (stochastically) and
        noised with Skellam of variance mu, all in integers; mu is derived from public values like
        a distributed release (`skellam.sensitivity` of the slot's size), and the round is journaled
        as one Skellam release of its steps before the first step."""
        from . import skellam

        if self.ledger is None:
            raise JournalError(self.journal_error())
        dim = sum(p.numel() for p in params)
        bits = self.dp.scale_bits or 16
        gamma = float(1 << bits)
        l2, l1 = skellam.sensitivity(gamma, self.dp.max_grad_norm, dim)
        q = float(self.dp.sample_rate)
        steps = max(1, int(builtins.round(self.local_epochs / q)))
        plan = self.ledger.plan_release(stage, round, len(samples), l2, l1, q, self.planned_rounds,
                                        self.tasks.get(stage) or (STREAM_PARTITION,), steps=steps,
                                        token_stages=self.token_stages)
        self.ledger.charge_release(plan, noise="skellam-local", scale_bits=bits, dim=dim)  # fsynced first
        self.last_release = plan
        return dp_train_steps(model, params, samples, noise_multiplier=0.0, max_grad_norm=self.dp.max_grad_norm,
                              sample_rate=q, steps=steps, lr=self.dp.lr or self.lr, pad_id=pad_id,
                              optimizer=self.dp.optimizer, divisor=float(self.batch_size),
                              skellam=(plan.mu, gamma),
                              prg=None if self._noise_prg is None else self._noise_prg(stage, round), **kw)

    # --- distributed DP -------------------------------------------------------------------------
    def _encoding(self, dim: int, frac_bits: int):
        from .distributed import DistributedEncoding

        bits = self.dp.scale_bits or frac_bits
        if bits > frac_bits:
            raise PrivacyError(f"dp.scale_bits = {bits} exceeds the {frac_bits} fractional bits of this round's "
                               "masking fixed point: the encoding would not be exact")
        return DistributedEncoding(dim=dim, clip=self.dp.max_grad_norm, count_scale=self.dp.count_scale,
                                   scale_bits=bits)

    def plan_distributed(self, stage: int, round: int, n_samples: int, *, dim: int, cohort_size: int, t: int,
                         colluders: int, frac_bits: int, bound: float):
        """(encoding, release plan, per-client share variance) of a distributed-DP round.

        Everything that sizes the noise is public, so every cohort member adds the same share: the
        scale 2^s (``dp.scale_bits``, or the fractional bits of the round's masking fixed point, a
        function of the cohort size and ``privacy.bound``) and the variance mu, derived from the
        config alone (`public_rounds` releases spend the budget from a fresh ledger). This client's
        own ledger then checks its actual history: over the cap, `BudgetExhausted`. An encoding that
        could leave ``privacy.bound`` (`distributed.wrap_check`): `PrivacyError` with the numbers."""
        from .distributed import client_budget, share_variance, wrap_check

        if self.ledger is None:
            raise JournalError(self.journal_error())
        enc = self._encoding(dim, frac_bits)
        l2, l1 = enc.sensitivity()
        plan = self.ledger.plan_release(stage, round, n_samples, l2, l1, self.dp.sample_rate, self.public_rounds,
                                        self.tasks.get(stage) or (STREAM_PARTITION,), public=True, token_stages=1)
        share = share_variance(plan.mu, cohort_size, t, colluders)
        try:
            wrap_check(enc, n_samples, share, client_budget(bound, enc.scale_bits))
        except ConfigError:  # the refusal reaches the coordinator: it does not name n_k
            raise PrivacyError("distributed DP: this client's stage data could wrap the secure sum at this "
                               "round's encoding; raise privacy.bound, or lower dp.max_grad_norm or dp.scale_bits "
                               "(`python -m secure_fcit simulate` checks the config's bound at load)") from None
        return enc, plan, share

    def distributed_contribution(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter],
                                 samples: Sequence[EncodedSample], stage: int, round: int, pad_id: int, *,
                                 position: int, n_active: int, cohort_size: int, t: int, colluders: int,
                                 frac_bits: int, bound: float, rotation_seed: bytes,
                                 features: FeatureCache | None = None) -> np.ndarray:
        """This client's input to a distributed-DP update sum (layout: `protocols.layout`): the
        integer encoding of its per-sample clipped gradients over a Poisson sample (rate
        ``dp.sample_rate``) of the stage's data in block ``position``, a Skellam share of variance
        mu / (t - c) in every block, divided by 2^scale_bits; the release is journaled first.
        ``features``: the samples' image features (`model.train.FeatureCache`: each computed the
        first time a round samples it), or None."""
        from ..protocols.layout import distributed_vector_length
        from .distributed import encode_samples, noise_share, rotation_signs
        from .skellam import SkellamSampler

        dim = sum(p.numel() for p in params)
        enc, plan, share = self.plan_distributed(stage, round, len(samples), dim=dim, cohort_size=cohort_size,
                                                 t=t, colluders=colluders, frac_bits=frac_bits, bound=bound)
        self.ledger.charge_release(plan, share_variance=share, cohort=cohort_size, t=t, colluders=colluders,
                                   scale_bits=enc.scale_bits)  # journaled and fsynced before any gradient
        self.last_release = plan
        prg = ChaCha20PRG() if self._noise_prg is None else self._noise_prg(stage, round)
        chosen = np.flatnonzero(prg.uniform(len(samples)) < plan.q)
        grads, _ = clipped_per_sample_grads(model, params, [samples[i] for i in chosen],
                                            max_grad_norm=self.dp.max_grad_norm, pad_id=pad_id,
                                            features=None if features is None else features.take(chosen))
        z = encode_samples(enc, grads, rotation_signs(rotation_seed, enc.padded), prg)
        sampler = SkellamSampler()
        out = np.zeros(distributed_vector_length(n_active, enc.padded), dtype=np.float64)
        for j in range(n_active):
            block = noise_share(share, enc.padded, sampler)
            if j == position:
                block = block + z
            out[j * enc.padded : (j + 1) * enc.padded] = block.astype(np.float64) / enc.gamma
        out[n_active * enc.padded + position] = 1.0
        return out

    def noisy_token(self, stage: int, embeddings: np.ndarray) -> tuple[np.ndarray, float]:
        """This stage's identity token under DP (`noisy_token`): the mechanism is journaled and
        fsynced on the stage's tasks first (`PrivacyLedger.charge_token`; `BudgetExhausted` over
        the cap), then its noise is drawn from a fresh ChaCha20 key. Called again for the same stage
        (a restarted client), it is charged again: nothing is reused from an earlier draw."""
        if self.ledger is None:
            raise JournalError(self.journal_error())
        self.ledger.charge_token(stage, len(embeddings), self.tasks.get(stage) or (STREAM_PARTITION,))
        prg = ChaCha20PRG() if self._noise_prg is None else self._noise_prg(stage, -1)
        return noisy_token(embeddings, self.dp.token_sigma, self.dp.token_count_sigma, prg)
