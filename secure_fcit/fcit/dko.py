"""Dynamic Knowledge Organization (DISCO) computed from secure sums only.

The organizer never sees a client's token or update: every method that uses client data takes an
``Aggregate``, which only a secure aggregator can build, and refuses anything else.

Token phase: the sum of the workers' token vectors (layout in ``protocols.layout``) gives, per
block, sum(n_k * mu_k), sum(n_k) and the client count. Blocks 0..n_slots-1 hold the clients whose
token matched that slot's broadcast token at tau on their side: each updates its slot's token as
the sample-weighted running mean and makes the slot active. The other blocks are SimHash buckets
of the tokens that matched no slot; a bucket's mean is sum/count. A bucket mean whose cosine with
an existing global token is >= tau counts as matched too; unmatched bucket means that match each
other merge into one new slot
(if at least ``min_open_samples`` samples, and at least ``min_open_share`` of the samples behind the
stage's usable buckets, stand behind it; the clients of a smaller group train their nearest slot).
The stage's active slots are those matched or opened.

Rounds: per active slot, sum(n_k * delta_k) / sum(n_k) is added to the slot's weights (FedAvg on
deltas). A slot or token block with 1 <= clients < k_min is a small-cohort release: the ``policy``
decides (``refuse``: withheld; ``allow-with-dp``: applied only if the round ran DP; ``allow``:
applied), and every such release is logged in ``releases``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols.aggregation import Aggregate
from secure_fcit.protocols.interfaces import RoundOutcome, StagePlan
from secure_fcit.protocols.layout import cosine, split_token_sum, split_update_sum, token_vector_length

__all__ = ["POLICIES", "DKOConfig", "Release", "DKOOrganizer"]

POLICIES: tuple[str, ...] = ("refuse", "allow-with-dp", "allow")
_STAGE = "dko"
_COUNT_TOLERANCE = 1e-6


def _int_at_least(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class DistributedStep:
    """The coordinator's side of distributed DP (``dp.mode = "distributed"``): how to decode a
    round's sum and the step it takes. All public: the encoding's dimensions and count weight, the
    trained coordinates of a slot vector (all, or lora_B with FFA-LoRA), and the server optimizer.
    The step is post-processing of the noisy sum: w -= lr * (noisy gradient sum / noisy count)."""

    federation_id: str
    #: positions in a slot vector of the trained coordinates, in encoding order
    trainable_index: np.ndarray
    count_scale: float
    server_lr: float
    momentum: float = 0.0
    #: Adam at the coordinator (Reddi et al. 2021, "Adaptive federated optimization"): per-coordinate
    #: first and second moments of the decoded mean gradient, with bias correction (post-processing)
    adam: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    #: the noisy count is floored here before it divides (it can come out tiny or negative)
    min_count: float = 1.0

    @property
    def dim(self) -> int:
        return int(self.trainable_index.size)

    def direction(self, state: np.ndarray | None, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The server optimizer's direction for the decoded mean gradient (the step is
        w -= server_lr * direction) and the optimizer state it leaves for the next round: momentum's
        velocity; Adam's first moment, second moment and step count in one vector, with bias
        correction; None for plain SGD. ``state`` is what the previous round left (None at first)."""
        if self.adam:
            b1, b2 = self.adam_betas
            dim = mean.size
            if state is None or state.size != 2 * dim + 1:
                state = np.zeros(2 * dim + 1)
            m, v, t = state[:dim], state[dim:2 * dim], state[-1] + 1
            m = b1 * m + (1 - b1) * mean
            v = b2 * v + (1 - b2) * mean * mean
            return (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + self.adam_eps), np.concatenate([m, v, [t]])
        if self.momentum:
            velocity = (np.zeros(mean.size) if state is None else state) * self.momentum + mean
            return velocity, velocity
        return mean, None

    @property
    def padded(self) -> int:
        from ..dp.distributed import padded_length

        return padded_length(self.dim)


@dataclass(frozen=True)
class DKOConfig:
    """DKO parameters; ``n_buckets`` (a power of two) trades sum length for fewer SimHash collisions."""

    tau: float = 0.9
    max_slots: int = 64
    k_min: int = 2
    policy: str = "refuse"
    n_buckets: int = 1024
    #: An unmatched group of buckets opens a slot only with at least this many samples behind it: a
    #: token from a handful of instructions is too noisy to found a task (its clients still train
    #: the nearest active slot). 1 opens a slot for any unmatched bucket.
    min_open_samples: int = 1
    #: ... and at least this share of the samples behind the stage's usable buckets. A client
    #: token is the mean of a few instructions, so a handful of clients of a task already present
    #: can land below tau from the rest of their task; without a share floor their small group
    #: founds a duplicate slot. A new task held by fewer than this share of the stage's samples is
    #: folded into the nearest slot instead. 0 disables the floor.
    min_open_share: float = 0.0

    def __post_init__(self) -> None:
        tau = self.tau
        if (
            isinstance(tau, bool)
            or not isinstance(tau, numbers.Real)
            or not math.isfinite(tau)
            or not 0 < tau <= 1
        ):
            raise ConfigError(f"tau must be a number in (0, 1], got {tau!r}")
        _int_at_least("max_slots", self.max_slots, 1)
        _int_at_least("k_min", self.k_min, 1)
        _int_at_least("min_open_samples", self.min_open_samples, 1)
        share = self.min_open_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise ConfigError(f"min_open_share must be a number in [0, 1), got {share!r}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        n = _int_at_least("n_buckets", self.n_buckets, 2)
        if n & (n - 1):
            raise ConfigError(f"n_buckets must be a power of two, got {n}")


@dataclass(frozen=True)
class Release:
    """A small-cohort release: ``index`` is a slot (phase "update") or a block of the token sum
    (phase "token": a known slot's block below the stage's starting slot count, else that count
    plus the SimHash bucket; ``protocols.layout``)."""

    stage: int
    round: int
    phase: str
    index: int
    clients: int
    policy: str
    applied: bool


class DKOOrganizer:
    """Global identity tokens and slot weights, updated from aggregates only."""

    def __init__(
        self,
        dim: int,
        slot_size: int,
        config: DKOConfig | None = None,
        slot_init: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self._dim = _int_at_least("dim", dim, 1)
        self._slot_size = _int_at_least("slot_size", slot_size, 1)
        self.config = config if config is not None else DKOConfig()
        if not isinstance(self.config, DKOConfig):
            raise ConfigError("config must be a DKOConfig")
        # New slots start from slot_init(index); real LoRA needs a non-zero A (B = 0), so the model
        # side passes a seeded initializer. Zeros are only right for fakes.
        self._slot_init = slot_init
        self._tokens = np.zeros((0, self._dim), dtype=np.float64)
        self._counts = np.zeros(0, dtype=np.float64)  # cumulative samples behind each token
        self._weights = np.zeros((0, self._slot_size), dtype=np.float32)
        self._stage = -1
        self._active: tuple[int, ...] = ()
        self._releases: list[Release] = []
        #: Distributed DP: set by `use_distributed`; ``apply`` then decodes noisy gradient sums.
        self.distributed: DistributedStep | None = None
        self._velocity: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------- read-only views
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def slot_size(self) -> int:
        return self._slot_size

    @property
    def n_buckets(self) -> int:
        return self.config.n_buckets

    @property
    def tau(self) -> float:
        return float(self.config.tau)

    @property
    def n_slots(self) -> int:
        return self._tokens.shape[0]

    @property
    def tokens(self) -> np.ndarray:
        """Global identity tokens, (n_slots, d) float32."""
        return self._tokens.astype(np.float32)

    @property
    def active(self) -> tuple[int, ...]:
        return self._active

    @property
    def releases(self) -> tuple[Release, ...]:
        return tuple(self._releases)

    def global_weights(self, slots: Sequence[int]) -> np.ndarray:
        """Weights of ``slots``, (len(slots), p) float32 copy."""
        index = [int(s) for s in slots]
        if any(not 0 <= s < self.n_slots for s in index):
            raise LocalProtocolError(f"slots {index} out of range for {self.n_slots} slots", stage=_STAGE)
        return self._weights[index].copy()

    # ----------------------------------------------------------------- token phase
    def plan(self, stage: int, aggregate: Aggregate, *, dp: bool = False) -> StagePlan:
        """Organize slots from the token-phase sum of ``stage`` (see module docstring)."""
        stage = _int_at_least("stage", stage, 0)
        n_known = self.n_slots
        sums, samples, counts = self._token_sums(stage, aggregate)
        tau = float(self.config.tau)
        usable, withheld, incoherent, releases = [], [], [], []
        matched: dict[int, list[int]] = {}
        for b in np.flatnonzero(counts):
            b = int(b)
            release = self._release(stage, -1, "token", b, int(counts[b]), dp)
            releases += [release] if release else []
            if release is not None and not release.applied:
                withheld.append(b)
                continue
            if b < n_known:  # its clients matched slot b's token at tau themselves
                usable.append(b)
                matched[b] = [b]
                continue
            mean = sums[b] / samples[b]
            # Unit tokens with pairwise cosine >= tau have a mean of squared norm >= tau; below
            # that the bucket mixed dissimilar tokens (a SimHash collision) and its mean is no task.
            if float(mean @ mean) < tau - 1e-9:
                incoherent.append(b)
                continue
            usable.append(b)

        unmatched: list[int] = []
        for b in usable:
            if b < n_known:
                continue
            best = -1
            if self.n_slots:
                scores = cosine(sums[b], self._tokens)[0]
                best = int(np.argmax(scores)) if scores.max() >= tau else -1
            if best >= 0:
                matched.setdefault(best, []).append(b)
            else:
                unmatched.append(b)
        clusters: list[list[int]] = []
        # Largest buckets first: the best-estimated means found the clusters the others join.
        unmatched.sort(key=lambda b: (-float(samples[b]), b))
        for b in unmatched:
            centres = [sums[c].sum(axis=0) for c in clusters]
            scores = cosine(sums[b], np.array(centres))[0] if centres else np.zeros(0)
            if scores.size and scores.max() >= tau:
                clusters[int(np.argmax(scores))].append(b)
            else:
                clusters.append([b])
        floor = max(float(self.config.min_open_samples), self.config.min_open_share * float(samples[usable].sum()))
        undersized = [b for c in clusters if samples[c].sum() < floor for b in c]
        clusters = [c for c in clusters if samples[c].sum() >= floor]
        if self.n_slots + len(clusters) > self.config.max_slots:
            raise LocalProtocolError(
                f"stage {stage} needs {self.n_slots + len(clusters)} slots, more than max_slots="
                f"{self.config.max_slots}; raise max_slots (or tau) in the DKO config",
                stage=_STAGE,
            )

        opened = []
        new_weights = [self._new_slot_weights(self.n_slots + i) for i in range(len(clusters))]
        for slot, buckets in matched.items():
            total = self._counts[slot] * self._tokens[slot] + sums[buckets].sum(axis=0)
            self._counts[slot] += samples[buckets].sum()
            self._tokens[slot] = total / self._counts[slot]
        for buckets, weights in zip(clusters, new_weights, strict=True):
            opened.append(self.n_slots)
            token = sums[buckets].sum(axis=0) / samples[buckets].sum()
            self._tokens = np.vstack([self._tokens, token[None, :]])
            self._counts = np.append(self._counts, samples[buckets].sum())
            self._weights = np.vstack([self._weights, weights[None, :]])
        self._stage = stage
        self._active = tuple(sorted(set(matched) | set(opened)))
        self._releases += releases
        return StagePlan(
            tokens=self.tokens,
            active=self._active,
            opened=tuple(opened),
            withheld_buckets=tuple(withheld),
            incoherent_buckets=tuple(incoherent),
            undersized_buckets=tuple(sorted(undersized)),
        )

    def _token_sums(self, stage: int, aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-block token sums, sample counts and checked client counts of a token-phase aggregate:
        a block per known slot, then the SimHash buckets (``protocols.layout``)."""
        n_blocks = self.n_slots + self.n_buckets
        _require_aggregate(aggregate, "token", stage, -1, token_vector_length(n_blocks, self._dim))
        sums, samples, clients = split_token_sum(aggregate.vector, n_blocks, self._dim)
        return sums, samples, _client_counts(clients, samples, aggregate.n_contributors, "token")

    def update_length(self, n_active: int) -> int:
        """The update sum's length: ``n_active * (slot_size + 2)``, or with distributed DP
        ``n_active * (P + 1)`` (`protocols.layout`)."""
        from ..protocols.layout import distributed_vector_length

        if self.distributed is not None:
            return distributed_vector_length(n_active, self.distributed.padded)
        return n_active * (self._slot_size + 2)

    def use_distributed(self, step: DistributedStep) -> None:
        if step.trainable_index.size < 1 or int(step.trainable_index.max()) >= self._slot_size:
            raise ConfigError(f"distributed DP: {step.trainable_index.size} trained coordinates do not fit a slot "
                              f"of {self._slot_size}")
        self.distributed = step

    def _apply_distributed(self, stage: int, round: int, aggregate: Aggregate, dp: bool) -> RoundOutcome:
        """Decode each active slot's noisy encoded sum (`dp.distributed.decode_sum` with the round's
        public rotation) and take the server step; the noise came with the sum (nothing added here)."""
        from ..dp.distributed import decode_sum, rotation_signs
        from ..protocols.layout import distributed_vector_length, rotation_seed, split_distributed_sum

        step = self.distributed
        n_active = len(self._active)
        _require_aggregate(aggregate, "update", stage, round, distributed_vector_length(n_active, step.padded))
        blocks, clients = split_distributed_sum(aggregate.vector, n_active, step.padded)
        counts = np.rint(clients)
        if (counts < 0).any() or counts.sum() != aggregate.n_contributors:
            raise LocalProtocolError(f"update sum: client counts {counts.tolist()} do not add up to the "
                                     f"{aggregate.n_contributors} contributors", stage=_STAGE)
        rid = aggregate.round_id
        applied, withheld, per_slot = [], [], {}
        for j, slot in self._released_slots(stage, round, counts, dp, withheld, per_slot):
            signs = rotation_signs(rotation_seed(step.federation_id, stage, round, rid.attempt, j), step.padded)
            grad, count = decode_sum(blocks[j], signs, step.dim, step.count_scale)
            direction, state = step.direction(self._velocity.get(slot), grad / max(count, step.min_count))
            if state is not None:
                self._velocity[slot] = state
            w = self._weights[slot].astype(np.float64)
            w[step.trainable_index] -= step.server_lr * direction
            self._weights[slot] = w.astype(np.float32)
            applied.append(slot)
        return RoundOutcome(applied=tuple(applied), withheld=tuple(withheld), clients=per_slot)

    def _adam_direction(self, slot: int, grad: np.ndarray, step: DistributedStep) -> np.ndarray:
        """Adam's bias-corrected step direction for ``slot`` (`DistributedStep.direction`; its
        moments live in ``_velocity``)."""
        if not step.adam:
            raise ConfigError("the Adam direction needs a DistributedStep with adam=True")
        direction, self._velocity[slot] = step.direction(self._velocity.get(slot), grad)
        return direction

    def _released_slots(self, stage: int, round: int, counts: np.ndarray, dp: bool, withheld: list[int],
                        per_slot: dict[int, int]):
        """(block, slot) of each active slot some client trained whose release the policy lets
        through; records the clients per slot, the releases, and the withheld slots on the way."""
        for j, slot in enumerate(self._active):
            if counts[j] == 0:
                continue  # nobody trained this slot: unchanged
            per_slot[slot] = int(counts[j])
            release = self._release(stage, round, "update", slot, int(counts[j]), dp)
            if release is not None:
                self._releases.append(release)
                if not release.applied:
                    withheld.append(slot)
                    continue
            yield j, slot

    # ----------------------------------------------------------------- rounds
    def apply(self, stage: int, round: int, aggregate: Aggregate, *, dp: bool = False) -> RoundOutcome:
        """FedAvg the round's per-slot mean deltas into the active slots (see module docstring)."""
        stage = _int_at_least("stage", stage, 0)
        round = _int_at_least("round", round, 0)
        if stage != self._stage:
            raise LocalProtocolError(
                f"apply() for stage {stage} but the last plan was for {self._stage}", stage=_STAGE
            )
        n_active = len(self._active)
        if not n_active:
            raise LocalProtocolError(f"stage {stage} has no active slot to update", stage=_STAGE)
        if self.distributed is not None:
            return self._apply_distributed(stage, round, aggregate, dp)
        length = self.update_length(n_active)
        _require_aggregate(aggregate, "update", stage, round, length)
        sums, samples, clients = split_update_sum(aggregate.vector, n_active, self._slot_size)
        counts = _client_counts(clients, samples, aggregate.n_contributors, "update")
        applied, withheld, per_slot = [], [], {}
        for j, slot in self._released_slots(stage, round, counts, dp, withheld, per_slot):
            mean_delta = sums[j] / samples[j]
            self._weights[slot] = (self._weights[slot].astype(np.float64) + mean_delta).astype(np.float32)
            applied.append(slot)
        return RoundOutcome(applied=tuple(applied), withheld=tuple(withheld), clients=per_slot)

    # ----------------------------------------------------------------- checkpoints
    def snapshot(self) -> dict[str, Any]:
        return {
            "dim": self._dim,
            "slot_size": self._slot_size,
            "config": asdict(self.config),
            "tokens": self._tokens.copy(),
            "counts": self._counts.copy(),
            "weights": self._weights.copy(),
            "stage": self._stage,
            "active": list(self._active),
            "releases": [asdict(r) for r in self._releases],
            "velocity": {str(k): v.copy() for k, v in self._velocity.items()},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        try:
            same = (snapshot["dim"], snapshot["slot_size"], snapshot["config"]) == (
                self._dim,
                self._slot_size,
                asdict(self.config),
            )
            tokens = np.array(snapshot["tokens"], dtype=np.float64)
            counts = np.array(snapshot["counts"], dtype=np.float64)
            weights = np.array(snapshot["weights"], dtype=np.float32)
            releases = [Release(**r) for r in snapshot["releases"]]
            stage, active = int(snapshot["stage"]), tuple(int(s) for s in snapshot["active"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a DKO snapshot: {exc}") from None
        n = tokens.shape[0]
        if (
            not same
            or tokens.shape != (n, self._dim)
            or counts.shape != (n,)
            or weights.shape != (n, self._slot_size)
        ):
            raise ConfigError("DKO snapshot does not match this organizer's dim, slot_size or config")
        self._tokens, self._counts, self._weights = tokens, counts, weights
        self._stage, self._active, self._releases = stage, active, copy.deepcopy(releases)
        self._velocity = {int(k): np.array(v, dtype=np.float64) for k, v in snapshot.get("velocity", {}).items()}

    # ----------------------------------------------------------------- helpers
    def _release(
        self, stage: int, round: int, phase: str, index: int, clients: int, dp: bool
    ) -> Release | None:
        """The log record of a small-cohort release (None if clients >= k_min), per the policy."""
        if clients >= self.config.k_min:
            return None
        policy = self.config.policy
        allowed = policy == "allow" or (policy == "allow-with-dp" and dp is True)
        return Release(stage, round, phase, index, clients, policy, allowed)

    def _new_slot_weights(self, slot: int) -> np.ndarray:
        if self._slot_init is None:
            return np.zeros(self._slot_size, dtype=np.float32)
        weights = np.asarray(self._slot_init(slot), dtype=np.float32)
        if weights.shape != (self._slot_size,) or not np.isfinite(weights).all():
            raise LocalProtocolError(
                f"slot_init({slot}) must return {self._slot_size} finite values, got shape {weights.shape}",
                stage=_STAGE,
            )
        return weights


def _require_aggregate(aggregate: object, phase: str, stage: int, round: int, length: int) -> None:
    """The organizer's gate: an ``Aggregate`` of the expected phase, stage, round and length."""
    if not isinstance(aggregate, Aggregate):
        raise LocalProtocolError(
            f"the organizer accepts only an Aggregate built by a secure aggregator, got "
            f"{type(aggregate).__name__}; a single client's vector never reaches it",
            stage=_STAGE,
        )
    rid = aggregate.round_id
    if (rid.phase, rid.stage, rid.round) != (phase, stage, round):
        raise LocalProtocolError(
            f"aggregate is for {rid.phase} phase stage {rid.stage} round {rid.round}, expected "
            f"{phase} phase stage {stage} round {round}",
            stage=_STAGE,
        )
    if aggregate.vector.size != length:
        raise LocalProtocolError(
            f"aggregate has {aggregate.vector.size} values, expected {length}", stage=_STAGE
        )


def _client_counts(clients: np.ndarray, samples: np.ndarray, contributors: int, phase: str) -> np.ndarray:
    """Integer client counts, after checking the sum is one honest contributors could produce.

    Each contributor adds exactly one 1 to the count part and n_k >= 1 samples beside it, so the
    counts are non-negative integers summing to the number of contributors, with at least as many
    samples as clients. A sum breaking that has a malformed contribution; nothing of it is used.
    """
    rounded = np.rint(clients)
    bad = (
        np.abs(clients - rounded).max(initial=0.0) > _COUNT_TOLERANCE
        or (rounded < 0).any()
        or int(rounded.sum()) != contributors
        or (samples < rounded - _COUNT_TOLERANCE).any()
        or ((rounded == 0) & (np.abs(samples) > _COUNT_TOLERANCE)).any()
    )
    if bad:
        raise RemoteProtocolError(
            f"the {phase} sum is inconsistent with {contributors} well-formed contributions "
            "(client or sample counts off); a contributor broke the vector layout",
            stage=_STAGE,
        )
    return rounded.astype(np.int64)
