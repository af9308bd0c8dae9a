"""Typed configuration: dataclasses with validation, loaded from TOML.

Unknown keys are refused with their dotted path (``lora.rnak``), values are type-checked, and each
section validates its own ranges in ``__post_init__``. Nothing here silently changes a value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DPConfig",
    "PrivacyConfig",
    "FCITConfig",
    "STRATEGIES",
    "ModelConfig",
    "DataConfig",
    "LoraConfigSection",
    "TrainConfig",
    "EvalConfig",
    "ScenarioConfig",
    "DeployConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "parse_sets",
    "LORA_TARGETS",
]

#: LoRA target sets: the language model's projections each name adapts (`model.lora`).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "mlp": ("gate_proj", "up_proj", "down_proj"),  # the paper's choice
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "vo": ("v_proj", "o_proj"),  # the densest per-sample gradient signal on the embedded model (DP)
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


@dataclass(frozen=True)
class ModelConfig:
    #: "embedded" (the tiny LLaVA shipped with the package, copied to the cache) or a local HF LLaVA
    #: checkpoint directory.
    path: str = "embedded"
    #: cache directory for the embedded model and generated data ("" = $SECURE_FCIT_CACHE or ~/.cache).
    cache_dir: str = ""
    #: seed of the embedded model's tokenizer, initialisation and pre-training (0 with 800
    #: ``pretrain_steps`` is the shipped build; any other is pre-trained locally, about 20 min on 2 cores).
    seed: int = 0
    #: pre-training steps of the embedded model.
    pretrain_steps: int = 800
    #: "cpu", "cuda" or "auto" (cuda when available).
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.pretrain_steps < 1:
            raise ConfigError(f"model.pretrain_steps must be >= 1, got {self.pretrain_steps}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"model.device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")


@dataclass(frozen=True)
class DataConfig:
    #: "synthetic" (generated offline) or a directory holding <task>/train.json and <task>/test.jsonl
    #: (or test.json); images resolve next to the JSON or in its images/ folder.
    root: str = "synthetic"
    #: synthetic data: training samples generated per task (split across the clients).
    n_train: int = 1000
    #: synthetic data: test questions per task (each task's test set, scored after every stage).
    n_test: int = 100
    #: synthetic data: the generator's seed (the same seed gives byte-identical files).
    seed: int = 0
    #: synthetic data: image side in pixels (>= 16).
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 1:
            raise ConfigError(f"data.n_train and data.n_test must be >= 1, got {self.n_train}, {self.n_test}")
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be >= 16, got {self.image_size}")


@dataclass(frozen=True)
class LoraConfigSection:
    #: rank of the single LoRA of the validity runs (zero-shot, upper bound, sequential fine-tuning).
    rank: int = 16
    #: its scaling alpha (the update is scaled by alpha / rank).
    alpha: float = 32.0
    #: "mlp" (gate/up/down, the paper's choice), "attn", "vo" (v/o_proj) or "all". The embedded tiny model defaults to
    #: "all" at rank 16: measured on figure_mcq alone, "all"/16 leaves the loss plateau after ~50
    #: steps, "mlp"/8 after ~120 (both reach 100% after 10 epochs).
    targets: str = "all"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if self.targets not in LORA_TARGETS:
            raise ConfigError(f"lora.targets must be one of {', '.join(map(repr, LORA_TARGETS))}, got {self.targets!r}")


@dataclass(frozen=True)
class TrainConfig:
    #: validity runs: epochs of sequential fine-tuning per task.
    epochs: float = 10.0
    #: validity runs: batch size (AdamW).
    batch_size: int = 32
    #: validity runs: AdamW learning rate.
    lr: float = 3e-3
    #: Epochs of the centralized multi-task upper bound (8 tasks pooled). Measured mean at lr 3e-3:
    #: 60.8 at 5 epochs, 68.3 at 10, 53.5 at 15 (icon_qa 100 -> 24, ocr 30 -> 11;
    #: `benchmarks/results/validity_upper_bound_15_epochs.json`); at lr 2e-3, 12 epochs: 73.6.
    upper_bound_epochs: float = 12.0
    #: Learning rate of the upper bound's pooled LoRA; 0 = ``train.lr``.
    upper_bound_lr: float = 0.002

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs must be > 0, got {self.epochs}")
        if self.upper_bound_epochs <= 0:
            raise ConfigError(f"train.upper_bound_epochs must be > 0, got {self.upper_bound_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"train.lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.upper_bound_lr < 1:
            raise ConfigError(f"train.upper_bound_lr must be in [0, 1) (0 = train.lr), got {self.upper_bound_lr}")


@dataclass(frozen=True)
class EvalConfig:
    #: test questions answered per batch (greedy decoding).
    batch_size: int = 64
    #: the most tokens an answer may have (capped per task at its longest reference + 2).
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("eval.batch_size and eval.max_new_tokens must be >= 1")


@dataclass(frozen=True)
class ScenarioConfig:
    #: "hom" or "het".
    setting: str = "hom"
    #: "task" (8 stages, one task each) or "cap" (4 stages of capability groups).
    kind: str = "task"
    #: clients (sites) in the federation.
    n_clients: int = 50
    #: clients drawn uniformly at random for each round's cohort.
    clients_per_round: int = 5
    #: Dirichlet(beta) concentration of each task's quantity split over the clients (small = skewed).
    beta: float = 1.0
    #: run only the first N stages of the stream (0 = all): short demos and tests.
    max_stages: int = 0

    def __post_init__(self) -> None:
        if self.max_stages < 0:
            raise ConfigError(f"scenario.max_stages must be >= 0 (0 = every stage), got {self.max_stages}")
        if self.setting not in ("hom", "het"):
            raise ConfigError(f"scenario.setting must be 'hom' or 'het', got {self.setting!r}")
        if self.kind not in ("task", "cap"):
            raise ConfigError(f"scenario.kind must be 'task' or 'cap', got {self.kind!r}")
        if self.n_clients < 1 or not 1 <= self.clients_per_round <= self.n_clients:
            raise ConfigError(
                f"scenario needs 1 <= clients_per_round <= n_clients, got {self.clients_per_round} "
                f"and {self.n_clients}"
            )
        if self.beta <= 0:
            raise ConfigError(f"scenario.beta must be > 0, got {self.beta}")


DP_OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd", "momentum")
DP_MODES: tuple[str, ...] = ("local", "distributed")
STRATEGIES: tuple[str, ...] = ("disco", "finetune", "fedprox", "ewc", "olora")


@dataclass(frozen=True)
class FCITConfig:
    """The federated stream: strategy, rounds, local training, LoRA slots, DKO and SSA."""

    #: "disco" (DKO + SSA), or a baseline on the same round machines: "finetune" (FedAvg of one
    #: LoRA), "fedprox", "ewc" (federated Fisher), "olora" (orthogonal subspace per stage).
    strategy: str = "disco"
    #: federated rounds per stage (under distributed DP: noisy gradient steps per stage).
    rounds_per_stage: int = 5
    #: local training per round: epochs over the client's stage data (local DP-SGD: round(E / q) steps).
    local_epochs: float = 5.0
    #: local batch size (local DP-SGD: the public divisor of each noisy gradient sum).
    local_batch_size: int = 16
    #: local learning rate (AdamW; local DP-SGD uses ``dp.lr`` when set).
    lr: float = 3e-3
    #: Each slot is a rank-``slot_rank`` LoRA on the language model's MLP (gate/up/down).
    slot_rank: int = 8
    #: each slot's LoRA scaling alpha.
    slot_alpha: float = 16.0
    #: the slots' target modules: "mlp", "attn", "vo" or "all" (as ``lora.targets``). "vo" (v_proj and
    #: o_proj) is the DP choice: on the embedded model they carry 59-74 % of the per-sample gradient
    #: signal in 19 % of the coordinates (benchmarks/dp_targets.py), so the same noise hides less of it.
    slot_targets: str = "mlp"
    #: the most LoRA slots DISCO may open over a stream (one more is refused, nothing changes).
    max_slots: int = 16
    #: DKO: a client's identity token matches a known slot at cosine >= tau (else it is bucketed).
    tau: float = 0.9
    #: the fewest clients a slot or bucket sum may come from before ``policy`` applies.
    k_min: int = 2
    #: Small-cohort releases (a slot or bucket summed over fewer than k_min clients): "refuse",
    #: "allow-with-dp", "allow", or "auto" (= "allow" for plaintext aggregation, "allow-with-dp"
    #: for secure sums; see ``privacy.aggregation``).
    policy: str = "auto"
    #: DKO: SimHash buckets for unmatched identity tokens (a power of two).
    n_buckets: int = 16
    #: An unmatched token bucket opens a new slot only with this many samples behind it.
    min_open_samples: int = 10
    #: ... and at least this share of the stage's token-phase samples (0 disables; see
    #: ``fcit.dko.DKOConfig.min_open_share``).
    min_open_share: float = 0.0
    #: SSA: softmax temperature of the routing weights over slot tokens at inference.
    ssa_temperature: float = 0.05
    #: "embedded" (the LLaVA checkpoint's own embeddings) or a local HF text-encoder directory.
    encoder: str = "embedded"
    #: FedProx: weight of the proximal term mu/2 ||w - w_global||^2.
    fedprox_mu: float = 0.01
    #: EWC: weight of the federated-Fisher penalty.
    ewc_lambda: float = 1.0
    #: O-LoRA: weight of the orthogonality penalty between stage blocks.
    olora_lambda: float = 0.5
    #: FFA-LoRA (Sun et al., ICLR 2024): every slot's A stays at its public random initialisation
    #: and only B trains. Under DP it halves the noised parameters, and averaging B alone is exact
    #: (the mean of B_k A equals (mean B_k) A).
    freeze_lora_a: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"fcit.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("rounds_per_stage", "local_batch_size", "slot_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fcit.{name} must be >= 1, got {getattr(self, name)}")
        if self.local_epochs <= 0 or not 0 < self.lr < 1 or self.slot_alpha <= 0:
            raise ConfigError("fcit.local_epochs and fcit.slot_alpha must be > 0 and fcit.lr in (0, 1)")
        if self.slot_targets not in LORA_TARGETS:
            raise ConfigError(f"fcit.slot_targets must be one of {', '.join(map(repr, LORA_TARGETS))}, "
                              f"got {self.slot_targets!r}")
        if self.policy != "auto":
            from .fcit.dko import POLICIES

            if self.policy not in POLICIES:
                raise ConfigError(f"fcit.policy must be 'auto', {', '.join(map(repr, POLICIES))}, got {self.policy!r}")
        self.dko()  # DKO's own checks (tau, k_min, max_slots, n_buckets, ...), named under fcit.
        if self.ssa_temperature <= 0:
            raise ConfigError(f"fcit.ssa_temperature must be > 0, got {self.ssa_temperature}")
        if self.freeze_lora_a and self.strategy in ("ewc", "olora"):
            raise ConfigError(f"fcit.freeze_lora_a (FFA-LoRA) works with disco, finetune and fedprox; "
                              f"{self.strategy} trains its own parts of A")
        if min(self.fedprox_mu, self.ewc_lambda, self.olora_lambda) < 0:
            raise ConfigError("fcit.fedprox_mu, fcit.ewc_lambda and fcit.olora_lambda must be >= 0")

    def dko(self, aggregation: str = "masking"):
        """The ``fcit.dko.DKOConfig`` these settings give under ``aggregation``."""
        from .fcit.dko import DKOConfig

        try:
            return DKOConfig(tau=self.tau, max_slots=self.max_slots, k_min=self.k_min,
                             policy=self.release_policy(aggregation), n_buckets=self.n_buckets,
                             min_open_samples=self.min_open_samples, min_open_share=self.min_open_share)
        except ConfigError as exc:
            raise ConfigError(f"fcit: {exc}") from None

    def release_policy(self, aggregation: str) -> str:
        """The k_min policy in force: "auto" resolved for the aggregation in use."""
        if self.policy != "auto":
            return self.policy
        return "allow" if aggregation == "plaintext" else "allow-with-dp"


AGGREGATIONS: tuple[str, ...] = ("masking", "ckks", "plaintext")


@dataclass(frozen=True)
class PrivacyConfig:
    """How client vectors are protected on their way to the coordinator (secure aggregation)."""

    #: "masking" (pairwise masks, the default), "ckks" (TenSEAL homomorphic encryption), or
    #: "plaintext": the INSECURE research aggregator, where the coordinator sees every vector.
    aggregation: str = "masking"
    #: Masking: t = floor(threshold x neighbourhood) + 1 shares rebuild a secret.
    threshold: float = 2 / 3
    #: Masking: 0 = complete neighbour graph; an even k = random k-regular (Harary) graph.
    degree: int = 0
    #: Masking: fixed-point clip range of every contributed value (weights, counts included).
    bound: float = 32768.0
    #: Masking: the fewest fractional bits a round may use; larger cohorts are refused.
    min_frac_bits: int = 8
    #: Every client's own floor: it refuses to contribute to a cohort smaller than this, whatever
    #: the coordinator asks (a cohort of a target and a colluder would give the target's input).
    min_cohort: int = 5
    #: Masking: c, the most clients assumed to collude with a malicious coordinator; every
    #: neighbourhood N needs t > (|N| + c)/2 (a split view would otherwise rebuild both secrets).
    colluders: int = 1
    #: The highest attempt number a client accepts for one phase (retries and coordinator
    #: restarts); a coordinator re-running a phase more often is refused.
    max_attempt: int = 4
    #: CKKS: folder of ``keys init`` (``ckks-secret.ctx`` for clients, ``ckks-public.ctx`` for the
    #: coordinator); empty = the simulation makes a fresh pair in memory.
    ckks_keys: str = ""
    #: CKKS: every client refuses to confirm or decrypt a sum of fewer contributions (its own
    #: floor; with 2, a cohort of a target and a colluder would give the target's input).
    ckks_k_min: int = 5
    #: CKKS: decryption noise flooding, std = 2^bits x the estimated CKKS error.
    ckks_flood_bits: int = 2
    #: CKKS: every contributed value must satisfy |x| <= ckks_bound (a client refuses to encrypt
    #: more); bound x the largest cohort must stay within the plaintext range, 370727, or the sum
    #: would wrap around silently: refused at load.
    ckks_bound: float = 4096.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"privacy.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if self.min_cohort < 2:
            raise ConfigError(f"privacy.min_cohort must be >= 2, got {self.min_cohort}")
        if not 0 <= self.max_attempt <= 100:
            raise ConfigError(f"privacy.max_attempt must be in 0..100, got {self.max_attempt}")
        self.masking()
        self.ckks()

    def masking(self):
        """The ``protocols.secagg.MaskingParams`` of these settings."""
        from .protocols.secagg import MaskingParams

        return MaskingParams(threshold=self.threshold, degree=self.degree, bound=self.bound,
                             min_frac_bits=self.min_frac_bits, colluders=self.colluders)

    def ckks(self):
        """The ``protocols.ckks.CKKSParams`` of these settings."""
        from .protocols.ckks import CKKSParams

        return CKKSParams(k_min=self.ckks_k_min, flood_bits=self.ckks_flood_bits, bound=self.ckks_bound)


ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")


@functools.lru_cache(maxsize=64)
def _token_noise_multiplier(epsilon: float, delta: float) -> float:
    from .dp.accounting import derive_noise_multiplier

    z = derive_noise_multiplier([], (0.0, 1.0, 1), epsilon, delta)
    if z is None:
        raise ConfigError(f"no token noise multiplier up to 100 keeps one release within epsilon {epsilon:g} "
                          f"(delta {delta:g}): raise dp.epsilon or dp.token_epsilon_share")
    return z


@dataclass(frozen=True)
class DPConfig:
    """Sample-level DP-SGD per client (Opacus) with a persistent accountant and a hard budget."""

    #: The smallest nonzero sigma accepted. Below it the PRV accountant's domain for even one step
    #: at q = 1 passes float64's exp range (measured with Opacus 1.6, eps_error 0.05, delta 1e-5:
    #: half-width 769 at sigma 0.03, and "Discrete mean differs significantly from continuous mean"
    #: at sigma <= 0.025; 475 at 0.04). Such a sigma buys no privacy anyway (one step: epsilon > 400).
    MIN_NOISE_MULTIPLIER: typing.ClassVar[float] = 0.04

    #: sample-level DP on every client's releases (off: no noise, no journal).
    enabled: bool = False
    #: The hard cap (epsilon_max, delta) per client dataset, over the whole stream. With no
    #: ``noise_multiplier`` it is also the target: sigma is derived each round so that the planned
    #: participation spends exactly this budget.
    epsilon: float = 8.0
    #: delta of the (epsilon, delta) cap, per client dataset (a client refuses a round whose task data
    #: has n samples with delta >= 1/n).
    delta: float = 1e-5
    #: A fixed sigma instead of deriving it from the target (0 = clipping only, no privacy).
    noise_multiplier: float | None = None
    #: Per-sample clipping norm C.
    max_grad_norm: float = 1.0
    #: The accountant that enforces the cap and derives sigma; both RDP and PRV are reported.
    accountant: str = "rdp"
    #: Rounds a client plans to take part in; 0 = expected participation + 2 standard deviations
    #: under uniform cohort sampling of the configured scenario (per task with ``per_task``).
    planned_rounds: int = 0
    #: Per-task accounting (parallel composition): one account per (client, task), a task being a
    #: public label of the client's samples fixed before training; the client's epsilon is the
    #: maximum over its tasks. False: one account over the whole stream.
    per_task: bool = True
    #: The DP-SGD step: "adamw" (the non-private recipe), "sgd", or "momentum" (SGD, momentum 0.9).
    optimizer: str = "adamw"
    #: The DP-SGD learning rate; 0 = ``fcit.lr``.
    lr: float = 0.0
    #: "local": each client runs DP-SGD and carries the whole noise alone. "distributed": each
    #: cohort client releases, inside the masking secure sum, only the integer-encoded sum of its
    #: per-sample clipped gradients (one Poisson sample per round) plus a Skellam noise share; any
    #: t surviving contributions carry the accounted noise, and the coordinator applies the step
    #: (`dp.distributed`, threat_model.md).
    mode: str = "local"
    #: The public Poisson rate q of each DP step's sample of the client's task data (both modes).
    #: Local DP-SGD runs round(local_epochs / q) steps and divides each noisy gradient sum by
    #: ``fcit.local_batch_size``: nothing of the mechanism depends on the client's sample count, as
    #: add/remove-one neighbours require (threat_model.md §1).
    sample_rate: float = 1.0
    #: Distributed: the coordinator's step, w -= server_lr * (noisy gradient sum / noisy count).
    server_lr: float = 0.05
    #: Distributed: the coordinator's optimizer on the decoded mean gradient: "sgd", "momentum"
    #: (``server_momentum``) or "adam" (betas 0.9, 0.999; server_lr is then Adam's step size).
    server_optimizer: str = "sgd"
    #: Distributed, "momentum": the velocity's decay. At a fixed server_lr / (1 - momentum) the
    #: noise reaching the weights is the same; a lower decay reaches full speed in fewer rounds.
    server_momentum: float = 0.9
    #: Distributed: each sample adds this constant in one extra coordinate, so the noisy sum carries
    #: a noisy count (the divisor) inside the same mechanism; the sensitivity is sqrt(C^2 + a^2).
    count_scale: float = 0.25
    #: Distributed: the scale gamma = 2^scale_bits of the integer encoding; 0 = the largest the
    #: masking fixed point and the wrap-around bound allow at each round. Local Skellam noise: 0 = 16.
    scale_bits: int = 0
    #: Local DP-SGD's noise: "gaussian" (Opacus' Gaussian, float64 Box-Muller on ChaCha20; open to
    #: floating-point attacks, Mironov 2012) or "skellam" (each step's clipped gradient sum scaled
    #: by 2^scale_bits, rounded once and noised with integer Skellam noise, accounted with Skellam
    #: RDP: no floating-point noise). Distributed DP is always Skellam.
    noise: str = "gaussian"
    #: Token-phase DP (both modes): a client's identity token is built from S, the sum of its stage
    #: instructions' unit embeddings, and n, their count. One Gaussian mechanism noises (S, n); its
    #: noise multiplier is the smallest with which one release alone spends at most this share of
    #: ``epsilon`` (at ``delta``). The task's sigma (or Skellam variance) is then derived with the
    #: token releases in its schedule, so the total stays within ``epsilon``.
    token_epsilon_share: float = 0.3
    #: The count's noise over the token's: std(n noise) = token_count_ratio * std(S noise per coordinate).
    token_count_ratio: float = 2.5

    @property
    def token_noise_multiplier(self) -> float:
        """z of the token mechanism: (S / token_sigma, n / token_count_sigma) has L2 sensitivity
        sqrt(1/token_sigma^2 + 1/token_count_sigma^2) = 1/z under add/remove one sample, and unit
        Gaussian noise; one release at z spends ``token_epsilon_share * epsilon``."""
        return _token_noise_multiplier(self.token_epsilon_share * self.epsilon, self.delta)

    @property
    def token_sigma(self) -> float:
        """Noise std per coordinate of S, in units of one sample's unit embedding."""
        return self.token_noise_multiplier * math.sqrt(1.0 + 1.0 / self.token_count_ratio**2)

    @property
    def token_count_sigma(self) -> float:
        """Noise std of the count n."""
        return self.token_count_ratio * self.token_sigma

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"dp.epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ConfigError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.noise_multiplier is not None and 0 < self.noise_multiplier < self.MIN_NOISE_MULTIPLIER:
            raise ConfigError(f"dp.noise_multiplier = {self.noise_multiplier:g} is below the accountants' bound "
                              f"{self.MIN_NOISE_MULTIPLIER:g} (the PRV accountant cannot discretise it; one step "
                              "would cost epsilon > 400): use sigma >= that bound, or 0 for clipping only")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"dp.accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.planned_rounds < 0:
            raise ConfigError(f"dp.planned_rounds must be >= 0, got {self.planned_rounds}")
        if self.optimizer not in DP_OPTIMIZERS:
            raise ConfigError(f"dp.optimizer must be one of {', '.join(DP_OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.lr < 100:
            raise ConfigError(f"dp.lr must be in [0, 100) (0: fcit.lr), got {self.lr}")
        if self.mode not in DP_MODES:
            raise ConfigError(f"dp.mode must be one of {', '.join(DP_MODES)}, got {self.mode!r}")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"dp.sample_rate must be in (0, 1], got {self.sample_rate}")
        if not 0 < self.server_lr < 1000:
            raise ConfigError(f"dp.server_lr must be in (0, 1000), got {self.server_lr}")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"dp.server_momentum must be in [0, 1), got {self.server_momentum}")
        if self.server_optimizer not in ("sgd", "momentum", "adam"):
            raise ConfigError(f"dp.server_optimizer must be 'sgd', 'momentum' or 'adam', got {self.server_optimizer!r}")
        if not 0 < self.count_scale <= self.max_grad_norm:
            raise ConfigError(f"dp.count_scale must be in (0, dp.max_grad_norm = {self.max_grad_norm:g}], "
                              f"got {self.count_scale}")
        if not 0 <= self.scale_bits <= 30:
            raise ConfigError(f"dp.scale_bits must be in 0..30 (0: automatic), got {self.scale_bits}")
        if self.noise not in ("gaussian", "skellam"):
            raise ConfigError(f"dp.noise must be 'gaussian' or 'skellam', got {self.noise!r}")
        if self.noise == "skellam" and self.accountant != "rdp":
            raise ConfigError("dp.noise = 'skellam' is accounted with RDP (the Skellam mechanism has no PRV analysis "
                              f"here); set dp.accountant = 'rdp', not {self.accountant!r}")
        share = self.token_epsilon_share
        if not (isinstance(share, int | float) and math.isfinite(share) and 0.01 <= share <= 0.9):
            raise ConfigError(f"dp.token_epsilon_share must be in [0.01, 0.9] (the share of epsilon one identity-token "
                              f"release may spend; token-phase DP cannot be turned off), got {share!r}")
        ratio = self.token_count_ratio
        if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0.1 <= ratio <= 100):
            raise ConfigError(f"dp.token_count_ratio must be in [0.1, 100], got {ratio!r}")
        if self.enabled:
            self.token_noise_multiplier  # noqa: B018  (refused at load when no z up to 100 fits the share)
        if self.mode == "distributed" and self.accountant != "rdp":
            raise ConfigError("dp.mode = 'distributed' is accounted with RDP (the Skellam mechanism has no PRV "
                              f"analysis here); set dp.accountant = 'rdp', not {self.accountant!r}")


@dataclass(frozen=True)
class StreamConfig:
    """Your own tasks and their order (``data.root`` folders); empty: the benchmark's stream."""

    #: The stages in order. ``scenario.setting = "hom"``: each stage is a task folder name, or a list
    #: of them, that every client learns. "het": each stage is a list of ``scenario.clients_per_round``
    #: entries, entry p what client group p learns (a task name or a list). Tasks may return in later
    #: stages. Empty: the synthetic benchmark's stream of ``scenario.setting`` and ``scenario.kind``.
    stages: list = field(default_factory=list)
    #: The scoring of each task outside the synthetic benchmark: "exact" (normalised exact match),
    #: "option" (multiple-choice letter), "caption" (ROUGE-L) or "iou" (box IoU > 0.5).
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .data.spec import METRICS

        if not isinstance(self.stages, list | tuple):
            raise ConfigError(f"stream.stages must be a list of stages, got {self.stages!r}")
        for t, stage in enumerate(self.stages):
            for names in _stage_entries(stage):
                if not names or not all(isinstance(n, str) and n.strip() and "/" not in n for n in names):
                    raise ConfigError(f"stream.stages[{t}]: {stage!r} must name task folders (non-empty strings "
                                      "without '/'), one per entry or a list per entry")
        if not isinstance(self.metrics, dict):
            raise ConfigError(f"stream.metrics must be a table of task = metric, got {self.metrics!r}")
        for task, metric in self.metrics.items():
            if metric not in METRICS:
                raise ConfigError(f"stream.metrics.{task} = {metric!r}: valid metrics are {', '.join(METRICS)}")

    def plans(self, setting: str, clients_per_round: int) -> list[tuple[tuple[str, ...], ...]]:
        """Per stage, the tasks of each client group (Hom: one group of every client)."""
        plans = []
        for t, stage in enumerate(self.stages):
            entries = _stage_entries(stage)
            if setting == "hom":
                plans.append((tuple(dict.fromkeys(n for names in entries for n in names)),))
                continue
            if not isinstance(stage, list | tuple) or len(stage) != clients_per_round:
                raise ConfigError(f"stream.stages[{t}]: a het stage lists one entry per client group, "
                                  f"{clients_per_round} (scenario.clients_per_round); got {stage!r}")
            plans.append(entries)
        return plans

    def tasks(self) -> tuple[str, ...]:
        """Every task of the stream in order of first appearance."""
        return tuple(dict.fromkeys(n for stage in self.stages for names in _stage_entries(stage) for n in names))


def _stage_entries(stage: object) -> tuple[tuple, ...]:
    """A ``stream.stages`` item as its entries, each a tuple of task names: ``"a"`` is one entry,
    ``["a", ["b", "c"]]`` two (``("a",)`` and ``("b", "c")``)."""
    items = stage if isinstance(stage, list | tuple) else [stage]
    return tuple(tuple(e) if isinstance(e, list | tuple) else (e,) for e in items)


@dataclass(frozen=True)
class DeployConfig:
    """``python -m secure_fcit.server`` / ``.client`` over mutual TLS 1.3 (see ``secure_fcit.deploy``)."""

    #: the server's listening address, and the address clients connect to.
    host: str = "127.0.0.1"
    #: the server's TCP port.
    port: int = 8443
    #: folder of ``certs init|issue`` (ca.pem, server.pem/.key, clients/<id>.pem/.key).
    certs: str = ""
    #: largest frame either side accepts; a longer length prefix is refused before it is read.
    max_message_size: int = 256 << 20
    #: seconds a started frame (or the opening hello) has to arrive completely.
    read_timeout: float = 30.0
    #: seconds a secure-sum step waits for the peers it needs; then they are dropped as dropouts.
    phase_timeout: float = 900.0
    #: seconds the server waits for clients before the first stage (then it starts with those present).
    join_timeout: float = 600.0
    #: clients that must be connected before the stream starts (0 = every client of the roster),
    #: and, when above a round's cohort, before each later phase (up to ``join_timeout`` each).
    min_clients: int = 0
    #: a client's reconnect backoff doubles from 0.5 s up to this many seconds.
    backoff_max: float = 30.0
    #: seconds a client keeps trying to reach the server before it gives up (0 = forever).
    give_up_after: float = 0.0
    #: seconds a new TLS connection has to complete its hello (4 KiB at most); then it is cut off.
    hello_timeout: float = 10.0
    #: connections one certificate (or address) may open per ``connect_window`` seconds.
    connect_rate: int = 30
    #: the window of ``connect_rate``, in seconds.
    connect_window: float = 60.0
    #: seconds of silence before TCP keepalive probes check that a connected peer is still there.
    keepalive: float = 60.0
    #: frames queued for one peer before it is cut off as a reader too slow to keep up.
    send_queue: int = 256
    #: the server's checkpoint MAC key file (HMAC-SHA256, 0600; created if missing). Empty:
    #: ``<state>/checkpoint.key``, beside (never inside) ``<state>/checkpoints``.
    checkpoint_key: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"deploy.port must be in 1..65535, got {self.port}")
        if self.max_message_size < 1024:
            raise ConfigError(f"deploy.max_message_size must be >= 1024 bytes, got {self.max_message_size}")
        for name in ("read_timeout", "phase_timeout", "join_timeout", "backoff_max", "hello_timeout",
                     "connect_window", "keepalive"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"deploy.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.min_clients < 0 or self.give_up_after < 0:
            raise ConfigError("deploy.min_clients and deploy.give_up_after must be >= 0")
        for name in ("connect_rate", "send_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"deploy.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    fcit: FCITConfig = field(default_factory=FCITConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    #: the run's seed: data split, cohorts, initialisations (secrets and noise never come from it).
    seed: int = 0

    def _check_distributed(self) -> None:
        _distributed_checks(self)

    def __post_init__(self) -> None:
        # Settings that are fine alone but cannot work together are refused at load.
        sc, fc = self.scenario, self.fcit
        if fc.k_min > sc.clients_per_round:
            raise ConfigError(
                f"fcit.k_min ({fc.k_min}) exceeds scenario.clients_per_round ({sc.clients_per_round}): "
                "no round could ever release a slot"
            )
        if self.privacy.aggregation != "plaintext" and self.privacy.min_cohort > sc.clients_per_round:
            raise ConfigError(
                f"privacy.min_cohort ({self.privacy.min_cohort}) exceeds scenario.clients_per_round "
                f"({sc.clients_per_round}): every client would refuse every round"
            )
        if self.privacy.aggregation == "masking":
            masking = self.privacy.masking()
            try:  # the largest sum: a stage's token phase over every client
                masking.check_cohort(sc.n_clients)
            except ConfigError as exc:
                raise ConfigError(f"privacy: {exc}") from None
            if masking.degree == 0:  # complete graph: every cohort size a round can have
                for n in range(self.privacy.min_cohort, sc.clients_per_round + 1):
                    if (why := masking.unsafe(n)) is not None:
                        raise ConfigError(f"privacy: {why}")
        if self.privacy.aggregation == "ckks" and sc.clients_per_round < self.privacy.ckks_k_min:
            raise ConfigError(
                f"privacy.ckks_k_min ({self.privacy.ckks_k_min}) exceeds scenario.clients_per_round "
                f"({sc.clients_per_round}): no round could be decrypted"
            )
        if self.privacy.aggregation == "ckks":
            try:  # the largest sum: a stage's token phase over every client
                self.privacy.ckks().check_cohort(sc.n_clients)
            except ConfigError as exc:
                raise ConfigError(f"privacy (scenario.n_clients = {sc.n_clients}): {exc}") from None
        if self.stream.stages:
            self.stream.plans(sc.setting, sc.clients_per_round)  # a het stage's entries match the groups
            from .data.spec import METRICS
            from .data.tasks import TASKS

            unscored = [t for t in self.stream.tasks() if t not in TASKS and t not in self.stream.metrics]
            if unscored:
                raise ConfigError(f"stream: task(s) {', '.join(unscored)} are not benchmark tasks: give each its "
                                  f"metric, [stream] metrics = {{ {unscored[0]} = \"exact\" }} (one of "
                                  f"{', '.join(METRICS)})")
        self.fcit.dko(self.privacy.aggregation)
        if self.dp.enabled and self.dp.mode == "distributed":
            self._check_distributed()
        units = 8 if sc.kind == "task" else 4
        units = min(units, sc.max_stages) if sc.max_stages else units
        if fc.strategy == "disco" and fc.max_slots < units:
            raise ConfigError(
                f"fcit.max_slots ({fc.max_slots}) is below the {units} {sc.kind} units of the "
                f"{sc.setting}-{sc.kind} stream: more tasks than slots"
            )


def _distributed_checks(cfg: Config) -> None:
    dp, pv, sc = cfg.dp, cfg.privacy, cfg.scenario
    if pv.aggregation != "masking":
        raise ConfigError(
            f"dp.mode = 'distributed' needs privacy.aggregation = 'masking', got {pv.aggregation!r}: the noise "
            "is shared across the cohort, so only a secure sum keeps each client's share-noised input "
            + ("from the coordinator (the plaintext aggregator shows each input with 1/(t - c) of the noise)"
               if pv.aggregation == "plaintext" else "hidden (CKKS distributed DP is not built)"))
    if cfg.fcit.strategy not in ("disco", "finetune"):
        raise ConfigError(f"dp.mode = 'distributed' trains plain LoRA slots with one gradient step per round "
                          f"(disco, finetune); fcit.strategy = {cfg.fcit.strategy!r} needs local training")
    masking = pv.masking()
    from .protocols.secagg import threshold

    for n in range(pv.min_cohort, sc.clients_per_round + 1):
        size = n if masking.degree == 0 else min(n, masking.degree + 1)
        t, c = threshold(masking.threshold, size), min(masking.colluders, size - 1)
        if t - c < 1:
            raise ConfigError(f"dp.mode = 'distributed': a cohort of {n} has t = {t} with {c} colluder(s), so "
                              "t - c < 1 honest shares would carry the noise; raise privacy.threshold")
    fp = masking.check_cohort(sc.clients_per_round)
    if dp.scale_bits and dp.scale_bits > fp.frac_bits:
        raise ConfigError(
            f"dp.scale_bits = {dp.scale_bits} exceeds the {fp.frac_bits} fractional bits the masking fixed point "
            f"has for a cohort of {sc.clients_per_round} (privacy.bound {pv.bound:g}): the encoding would not be "
            "exact; lower dp.scale_bits (or privacy.bound)")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _check_type(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if isinstance(value, bool) != (hint is bool) or not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} ({value!r})")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"unknown config key {where}; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        where = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where + ".")
        else:
            kwargs[name] = _check_type(value, hint, where)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML file; ``overrides`` maps dotted keys (``scenario.beta``) to values."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` command-line overrides (VALUE in TOML: ``fcit.policy='"allow"'``)."""
    overrides: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (a TOML value), got {item!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--set {key}: {raw!r} is not a TOML value (quote strings: key='\"text\"')") from None
    return overrides
