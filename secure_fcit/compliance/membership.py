"""Membership inference against three views of one round: the client's update, its masked upload, the sum.

`membership_table` gives one client 2N candidate samples (real task examples), trains it on N of
them (the members) next to a cohort of other clients with their own data, all from the same global
state and through the same client code as the canary audit (`empirical.client_release`: the
shipping `SlotLearner` + `ClientPrivacy` under DP). Each client's update leaves as the worker's
upload vector (`protocols.layout.update_vector`), and the cohort runs the real masking protocol
(`protocols.secagg`, driven in memory through the wire codec by `protocols.drive.run_secure_sum`),
whose transcript holds every byte the coordinator received. The attacker scores each candidate with
the white-box score of the canary audit (`empirical.lmmse_scores`: the candidates' clipped
gradients at the global state, public task samples as nuisance directions, the noise level
measured from the view itself by `empirical.residual_noise`) on three views:

- ``client update (plaintext)``: the target's upload vector as it would leave without secure
  aggregation (its slot block divided by its public weight);
- ``masked transcript``: the target's ``UpdateUpload`` as the coordinator received it, decoded with
  the public fixed-point decoder and scored as if it were the plaintext: the attacker's best try
  without the pairwise masks. Masks are uniform over Z_2^32, so this must come out at chance;
- ``aggregate``: the unmasked cohort sum the coordinator ends with.

Each row reports the AUC, the TPR at 1% FPR and the target's accounted epsilon (the journal's, inf
without DP). ``auc_null_std`` is the AUC's standard deviation for a score independent of
membership (Mann-Whitney: sqrt((M + N + 1) / (12 M N))), the yardstick for "at chance".
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .empirical import (
    AuditSettings,
    candidate_gradients,
    client_release,
    global_weights,
    inner_scores,
    lmmse_scores,
    load_audit_model,
    released_gradient_sum,
    residual_noise,
    roc_auc,
    task_samples,
)

__all__ = ["MembershipSettings", "MEMBERSHIP_SETTINGS", "VIEWS", "membership_table", "tpr_at_fpr",
           "auc_null_std"]

VIEWS = ("client update (plaintext)", "masked transcript", "aggregate")


@dataclass(frozen=True)
class MembershipSettings:
    """The cohort of a membership-inference round; ``train`` is the clients' DP-SGD round."""

    #: The target's candidates; half of them (exactly) are its training data.
    candidates: int = 400
    #: Samples of each other cohort client.
    others: int = 100
    #: Cohort size (the target included).
    clients: int = 4
    #: privacy.bound of the masking round: every uploaded value must satisfy |x| <= bound.
    bound: float = 1024.0
    #: Public task samples whose gradients serve as nuisance directions (`empirical.lmmse_scores`).
    n_proxy: int = 64
    train: AuditSettings = AuditSettings(m=2, n_base=0)

    def __post_init__(self) -> None:
        if self.candidates < 4 or self.candidates % 2 or self.others < 1 or self.clients < 2:
            raise ConfigError("membership inference needs an even number >= 4 of candidates, others >= 1 and a "
                              f"cohort of at least 2: {self.candidates}, {self.others}, {self.clients}")


MEMBERSHIP_SETTINGS = {"fast": MembershipSettings(candidates=200, others=48), "default": MembershipSettings()}


def membership_settings(fast: bool = False, setting: str | None = None, **knobs) -> MembershipSettings:
    """The named setting with ``knobs`` overriding its fields or its training's (`AuditSettings`);
    an unknown knob is refused with its name."""
    name = setting or ("fast" if fast else "default")
    if name not in MEMBERSHIP_SETTINGS:
        raise ConfigError(f"unknown membership setting {name!r}; valid: {', '.join(MEMBERSHIP_SETTINGS)}")
    base = MEMBERSHIP_SETTINGS[name]
    own = {f.name for f in dataclasses.fields(MembershipSettings)} - {"train"}
    training = {f.name for f in dataclasses.fields(AuditSettings)} - {"m", "n_base", "n_proxy"}
    unknown = sorted(set(knobs) - own - training)
    if unknown:
        raise ConfigError(f"unknown membership knob(s) {', '.join(unknown)}; valid: fast, setting, "
                          f"{', '.join(sorted(own | training))}")
    train = dataclasses.replace(base.train, **{k: v for k, v in knobs.items() if k in training})
    return dataclasses.replace(base, train=train, **{k: v for k, v in knobs.items() if k in own})


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """The fraction of members scored above a threshold that at most floor(fpr * N) of the N
    non-members pass."""
    members, nonmembers = np.asarray(members, dtype=np.float64), np.sort(np.asarray(nonmembers, dtype=np.float64))
    allowed = int(math.floor(fpr * nonmembers.size + 1e-9))
    threshold = nonmembers[nonmembers.size - 1 - allowed] if allowed < nonmembers.size else -np.inf
    return float(np.mean(members > threshold))


def auc_null_std(members: int, nonmembers: int) -> float:
    """The AUC's standard deviation when scores do not depend on membership."""
    return math.sqrt((members + nonmembers + 1) / (12.0 * members * nonmembers))


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[membership] {text}", file=sys.stderr, flush=True)


def _secure_sum(ms: MembershipSettings, vectors: dict[str, np.ndarray]):
    """The cohort's masking sum: (the aggregate's vector, the transcript's messages, the fixed point)."""
    from ..protocols import AggregationRound, decode
    from ..protocols.drive import run_secure_sum
    from ..protocols.secagg import MaskingAggregator, MaskingClient, MaskingParams, make_identities

    params = MaskingParams(bound=ms.bound)
    ids = sorted(vectors)
    identities, directory = make_identities(ids)
    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
    transcript: list[bytes] = []
    run = run_secure_sum(MaskingAggregator(directory, params), clients, vectors,
                         AggregationRound("mi-audit", 0, 0, 0, "update"), transcript=transcript)
    if run.aggregate is None:
        raise ConfigError(f"the masking sum failed: {run.failure}")
    return run.aggregate.vector, [decode(data, 1 << 30) for data in transcript], params.check_cohort(len(ids))


def membership_table(*, epsilon: float | None, seed: int = 0, model_dir: Path | None = None, progress: bool = False,
                     **knobs) -> list[dict]:
    """One row per view in `VIEWS` (see the module docstring). ``epsilon=None``: no DP (sigma 0).
    ``knobs``: ``fast`` (a table in about 10 s), ``setting``, and any field of `MembershipSettings`
    or of its training's `empirical.AuditSettings` (``rank``, ``lr``, ``score``, ...)."""
    from ..protocols.layout import split_update_sum, update_vector
    from ..protocols.messages import UpdateUpload

    t0 = time.perf_counter()
    ms = membership_settings(**knobs)
    st = ms.train
    if epsilon is not None and not epsilon > 0:
        raise ConfigError(f"epsilon must be > 0 or None (no DP), got {epsilon}")
    _say(progress, f"{ms.candidates} candidates, {ms.clients - 1} other clients of {ms.others} samples")
    am = load_audit_model(model_dir, st.rank)
    candidates = task_samples(am, ms.candidates, seed=seed, stream=11, answers="natural")
    member = np.zeros(ms.candidates, dtype=bool)
    member[np.random.default_rng([seed, 0x3E]).permutation(ms.candidates)[: ms.candidates // 2]] = True
    weights = global_weights(am, seed)
    ids = [f"client-{k:03d}" for k in range(ms.clients)]
    target = ids[0]
    data = {target: [c for c, s in zip(candidates, member, strict=True) if s]}
    for k, cid in enumerate(ids[1:], start=1):
        data[cid] = task_samples(am, ms.others, seed=seed, stream=20 + k, answers="natural")
    releases = {}
    for cid in ids:
        _say(progress, f"{cid} trains ({len(data[cid])} samples), epsilon {epsilon}")
        releases[cid] = client_release(am, data[cid], weights, st, epsilon=epsilon, delta=1e-5, seed=seed, client=cid)
    vectors = {cid: update_vector(r.delta, r.weight, 0, 1) for cid, r in releases.items()}
    _say(progress, "the cohort's masking sum")
    aggregate, received, fp = _secure_sum(ms, vectors)
    (masked,) = [m for m in received if isinstance(m, UpdateUpload) and m.sender == target]
    p = am.slots.slot_size
    rel = releases[target]

    def block(vector: np.ndarray) -> tuple[np.ndarray, float, float]:
        sums, counts, clients = split_update_sum(np.asarray(vector, dtype=np.float64), 1, p)
        return sums[0], float(counts[0]), float(clients[0])

    plain, w, _ = block(vectors[target])
    guessed, w_masked, _ = block(fp.decode_sum(masked.payload, 1))  # the attacker's try: decode as plaintext
    summed, total, n_clients = block(aggregate)
    w_guess = w_masked if math.isfinite(w_masked) and w_masked > 0 else float(rel.weight)
    views = {
        VIEWS[0]: (plain / w, 1),
        VIEWS[1]: (guessed / w_guess, 1),
        # the target's weight is not in the sum: the mean weight (1 under DP, where every weight is 1)
        VIEWS[2]: (summed / (total / n_clients), ms.clients),
    }
    _say(progress, "the attacker's gradients at the global state")
    grads = candidate_gradients(am, weights, candidates, st.max_grad_norm)
    proxies = task_samples(am, ms.n_proxy, seed=seed, stream=3, answers="natural")
    nuisance = candidate_gradients(am, weights, proxies, st.max_grad_norm) if proxies else None
    rows = []
    for view, (update, cohort) in views.items():
        y, tau = released_gradient_sum(update, st, rel.lr_factors, rel.sigma, clients=cohort)
        measured = residual_noise(grads, y, nuisance)  # the attacker measures the noise (empirical)
        tau = tau if measured is None else measured
        scores = lmmse_scores(grads, y, tau, nuisance=nuisance) if st.score == "lmmse" else inner_scores(grads, y)
        rows.append({
            "view": view, "auc": roc_auc(scores[member], scores[~member]),
            "tpr_at_1pct_fpr": tpr_at_fpr(scores[member], scores[~member]),
            "members": int(member.sum()), "nonmembers": int((~member).sum()), "epsilon": rel.epsilon_rdp,
            "epsilon_target": epsilon, "sigma": rel.sigma, "clients": ms.clients,
            "auc_null_std": auc_null_std(int(member.sum()), int((~member).sum())), "score": st.score,
        })
    seconds = round(time.perf_counter() - t0, 2)
    for row in rows:
        row["seconds"] = seconds
    return rows
