"""An empirical lower bound on a client's epsilon from one training run (Steinke, Nasr, Jagielski 2023).

`canary_audit` puts m canaries into one client's stage data, each included independently with
probability 1/2, runs the client's round once through the code that ships (`fcit.SlotLearner` with
`dp.ClientPrivacy`: the ledger derives sigma for the target epsilon, journals the spend, and
`dp.sgd.dp_train_steps` clips, noises with ChaCha20 and steps), and then plays the coordinator: it
sees the released slot update (plaintext, as without secure aggregation) and the global state
(base weights and the slot's weights before the round), and guesses which canaries were in.

The auditor is white-box: it computes each canary's clipped gradient at the global state
(`candidate_gradients`, Opacus through `dp.sgd.clipped_per_sample_grads`). A canary is a real
micro-benchmark image and instruction with a unique random answer string. The plain inner product
of the update with each canary's gradient is the usual score, but on the micro model canary
gradients are far from orthogonal (mean cosine about 0.3, a few hundred effective dimensions), so
the other canaries drown it (AUC about 0.52 even without noise). The default score is the linear
MMSE estimate of the inclusion vector (`lmmse_scores`): it decorrelates the canaries, and with the
noise level as its ridge it is the best linear guess under DP. The auditor measures that level from
the update itself (`residual_noise`: what the gradients do not span) rather than trusting the
sigma the client journaled, so an under-noised mechanism is scored as what it is; any score is post-processing of
what the coordinator holds, so the bound stays valid whichever is used. The client's other data
(``n_base`` real samples) is unknown to the auditor; gradients of public task samples (the task
generators are public) at the same state serve as nuisance directions for it (``n_proxy``).

The bound (`epsilon_lower_bound`: the paper's main theorem with its delta term, computed as its
appendix's algorithm does): guessing "in" for the
k highest scores and "out" for the k lowest (r = 2k guesses, v correct), a mechanism that is
(eps, delta)-DP gives P[v or more correct] <= P[Binomial(r, e^eps/(1+e^eps)) >= v] + 2 m delta alpha;
the largest eps whose p-value stays below 1 - confidence is the lower bound. k is swept over a
fixed grid and the confidence split over the grid (Bonferroni), so ``epsilon_lower`` is a valid
bound at ``confidence`` after the sweep; ``epsilon_lower_uncorrected`` is the best k at the nominal
level, without the correction (it overstates the confidence). ``epsilon_cap`` is the bound perfect guessing of all
m canaries would give: the most any audit with this m can show (4.57 at m = 500, 5.23 at 1000,
5.83 at 2000, at 95% with the sweep and delta = 1e-5). Above the cap an audit cannot contradict
the accountant: at epsilon 8 none of these m can fail, at epsilon 1 each can.

The audit's randomness (canaries, their inclusion, the round's DP noise) is seeded from ``seed``:
an audit is reproducible, not secret. Production rounds draw their noise from ``os.urandom``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg, stats

from ..errors import ConfigError

__all__ = ["AuditSettings", "SETTINGS", "AuditModel", "Release", "canary_audit", "p_value", "epsilon_lower_bound",
           "guess_bound", "k_grid", "settings", "load_audit_model", "task_samples", "global_weights",
           "client_release", "candidate_gradients", "released_gradient_sum", "residual_noise", "lmmse_scores",
           "inner_scores", "roc_auc", "WHAT_THE_AUDITOR_SEES"]

WHAT_THE_AUDITOR_SEES = ("the client's released slot update (plaintext, as without secure aggregation) and the "
                         "global state (base weights + slot weights before the round); white-box: it computes each "
                         "canary's clipped gradient at that state")


# ----------------------------------------------------------------------------- the bound (pure)
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under the null "(epsilon, delta)-DP", m canaries each in
    with probability 1/2 (Steinke et al. 2023; with delta, their bound's 2 m delta alpha term)."""
    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= correct <= guesses <= canaries, got v={v}, r={r}, m={m}")
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ConfigError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0  # randomised response's accuracy
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(1.0, beta)
    # alpha = max over i in 1..v of P[v - i <= Binomial(r, q) < v] / i: the price of delta.
    tail = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(tail / np.arange(1, v + 1)))
    return min(1.0, beta + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The largest epsilon that v correct of r guesses on m canaries rejects at ``confidence``: with
    that probability the mechanism is not (eps', delta)-DP for any eps' below it. 0 when the
    guesses reject nothing (random guessing, or no guess at all)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < alpha and hi < 1e3:
        lo, hi = hi, 2 * hi
    for _ in range(60):  # p_value grows with epsilon: bisect the crossing
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def k_grid(m: int) -> list[int]:
    """The guess counts per side swept: m/2 down by halves to 1/64 of it (fixed before the run)."""
    return sorted({max(1, (m // 2) >> s) for s in range(7)})


def guess_bound(scores: np.ndarray, included: np.ndarray, *, delta: float, confidence: float = 0.95,
                ks: Sequence[int] | None = None) -> dict:
    """Guess "in" for the k highest ``scores`` and "out" for the k lowest, for each k of ``ks``
    (default `k_grid`); the bound at each k uses confidence 1 - (1 - confidence)/len(ks)
    (Bonferroni), so the best of them is a valid bound at ``confidence``."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = scores.size
    if included.shape != scores.shape or m < 2:
        raise ConfigError("one inclusion bit per score, and at least 2 canaries, are needed")
    ks = list(ks or k_grid(m))
    if any(not 1 <= k <= m // 2 for k in ks):
        raise ConfigError(f"each k must be in 1..m/2 = {m // 2}, got {ks}")
    order = np.argsort(-scores, kind="stable")
    each = 1.0 - (1.0 - confidence) / len(ks)
    best = {"epsilon_lower": -1.0}
    uncorrected = 0.0
    for k in ks:
        v = int(included[order[:k]].sum() + (~included[order[-k:]]).sum())
        eps = epsilon_lower_bound(m, 2 * k, v, delta, each)
        uncorrected = max(uncorrected, epsilon_lower_bound(m, 2 * k, v, delta, confidence))
        if eps > best["epsilon_lower"]:
            best = {"epsilon_lower": eps, "k": k, "guesses": 2 * k, "correct": v}
    cap = max(epsilon_lower_bound(m, 2 * k, 2 * k, delta, each) for k in ks)
    return {**best, "epsilon_lower_uncorrected": uncorrected, "epsilon_cap": cap, "k_grid": ks}


# ----------------------------------------------------------------------------- training and scoring
@dataclass(frozen=True)
class AuditSettings:
    """What one audit trains and guesses on (the DP parameters are the project's: ``dp.*``)."""

    #: Canaries (``m`` of `canary_audit`).
    m: int = 1000
    #: The client's other stage samples (real task examples, unknown to the auditor).
    n_base: int = 16
    #: Public task samples (the generators are public) whose gradients at the global state the
    #: auditor uses as nuisance directions for the client's unknown data (`lmmse_scores`).
    n_proxy: int = 64
    #: LoRA slot rank on every projection of the language model.
    rank: int = 4
    #: dp.sample_rate q and the DP-SGD steps of the round (local_epochs = steps * q).
    sample_rate: float = 1.0
    steps: int = 1
    #: dp.max_grad_norm C, dp.lr and dp.optimizer. SGD makes the released update linear in the
    #: mechanism's output (Adam would only post-process it further): the auditor's best case.
    max_grad_norm: float = 1.0
    lr: float = 0.05
    optimizer: str = "sgd"
    #: fcit.local_batch_size: the public divisor of each step's noisy gradient sum.
    batch_size: int = 16
    #: "lmmse" (decorrelated, the default) or "inner" (the plain inner product).
    score: str = "lmmse"

    def __post_init__(self) -> None:
        if (self.m < 2 or self.n_base < 0 or self.n_proxy < 0 or self.rank < 1 or self.steps < 1
                or self.batch_size < 1):
            raise ConfigError(f"audit settings need m >= 2, n_base, n_proxy >= 0, rank, steps, batch_size >= 1: "
                              f"{self}")
        if self.score not in ("lmmse", "inner"):
            raise ConfigError(f"score must be 'lmmse' or 'inner', got {self.score!r}")


#: ``fast``: a live control of a short compliance run; ``default``; ``benchmark``.
SETTINGS = {"fast": AuditSettings(m=500), "default": AuditSettings(), "benchmark": AuditSettings(m=2000)}


def settings(fast: bool = False, setting: str | None = None, **knobs) -> AuditSettings:
    """The named setting (``fast`` picks "fast") with ``knobs`` overriding its fields; an unknown
    knob is refused with its name."""
    name = setting or ("fast" if fast else "default")
    if name not in SETTINGS:
        raise ConfigError(f"unknown audit setting {name!r}; valid: {', '.join(SETTINGS)}")
    fields = {f.name for f in dataclasses.fields(AuditSettings)}
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise ConfigError(f"unknown audit knob(s) {', '.join(unknown)}; "
                          f"valid: fast, setting, {', '.join(sorted(fields))}")
    return dataclasses.replace(SETTINGS[name], **knobs)


@dataclass
class AuditModel:
    """The micro model with one LoRA slot (slot 0), its processor and pad id."""

    slots: object  # model.SlotLoRA
    processor: object
    pad_id: int
    image_size: int


def load_audit_model(model_dir: Path | None, rank: int) -> AuditModel:
    from ..model.loading import load_llava
    from ..model.slots import SlotLoRA
    from .micro import micro_model

    model, processor = load_llava(model_dir or micro_model())
    slots = SlotLoRA(model, rank=rank, alpha=2.0 * rank, targets="all", max_slots=1)
    size = int(model.config.vision_config.image_size)
    return AuditModel(slots, processor, processor.tokenizer.pad_token_id, size)


def task_samples(am: AuditModel, n: int, *, seed: int, stream: int, answers: str) -> list:
    """``n`` encoded samples of the registered tasks in turn (images at the model's size).
    ``answers="natural"``: the task's reference answer; ``"random"``: a unique random 6-letter
    string per sample (a canary: nothing else in the data says it)."""
    from ..data import TASK_NAMES, get_task, task_rng
    from ..model.chat import encode_sample

    rng = np.random.default_rng([seed, stream, 0xCA4A])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    seen: set[str] = set()
    out = []
    for i in range(n):
        name = TASK_NAMES[i % len(TASK_NAMES)]
        ex = get_task(name).generate(task_rng(seed, name, 100 + stream, i), am.image_size)
        answer = ex.answer
        if answers == "random":
            while (answer := "".join(rng.choice(letters, 6))) in seen:
                pass
            seen.add(answer)
        out.append(encode_sample(am.processor, ex.image, [(ex.instruction, answer)]))
    return out


def global_weights(am: AuditModel, seed: int) -> np.ndarray:
    """The slot before the round, as after earlier rounds: peft's init plus a small random B (with
    B = 0 every lora_A gradient is zero)."""
    rng = np.random.default_rng([seed, 0x61])
    vec = am.slots.initial_vector(seed) + 0.05 * rng.standard_normal(am.slots.slot_size)
    return vec.astype(np.float32)


@dataclass(frozen=True)
class Release:
    """One client's released round: its update and the public parameters of the mechanism."""

    delta: np.ndarray  # float64, the slot update as `SlotLearner.train` returns it
    weight: int  # its FedAvg weight (`SlotLearner.update_weight`: 1 under DP)
    sigma: float
    epsilon_rdp: float  # the ledger's journaled epsilon (inf without DP)
    epsilon_prv: float
    steps: int
    lr_factors: tuple[float, ...]  # the step's learning-rate schedule factors


def _noise_prg(seed: int, client: str):
    from ..crypto.prg import ChaCha20PRG

    key = hashlib.sha256(f"secure_fcit/v1/audit-noise|{seed}|{client}".encode()).digest()
    return lambda stage, round: ChaCha20PRG(key)


def client_release(am: AuditModel, samples: Sequence, weights: np.ndarray, st: AuditSettings, *,
                   epsilon: float | None, delta: float, seed: int, client: str = "client-000") -> Release:
    """Run one client's round on ``samples`` from the global ``weights`` and return what leaves it.

    With ``epsilon``: the shipping client (`SlotLearner` + `ClientPrivacy`, one planned round, its
    journal in a temporary folder). Without: the same `dp_train_steps` call at sigma = 0 (clipping
    only; the ledger refuses to journal an unbounded spend)."""
    from ..config import DPConfig
    from ..dp.client import ClientPrivacy
    from ..dp.sgd import dp_train_steps
    from ..fcit.learner import SlotLearner
    from ..model.train import TrainSpec

    slots = am.slots
    samples = list(samples)
    factors = _lr_factors(st.steps)
    if epsilon is None:
        slots.load_slot(0, weights)
        with slots.training(0) as params:
            dp_train_steps(slots.model, params, samples, noise_multiplier=0.0, max_grad_norm=st.max_grad_norm,
                           sample_rate=st.sample_rate, steps=st.steps, lr=st.lr, pad_id=am.pad_id,
                           prg=_noise_prg(seed, client)(0, 0), optimizer=st.optimizer, divisor=float(st.batch_size))
        delta_vec = slots.slot_vector(0) - weights
        return Release(delta_vec.astype(np.float64), len(samples), 0.0, math.inf, math.inf, st.steps, factors)
    dp = DPConfig(enabled=True, epsilon=float(epsilon), delta=delta, max_grad_norm=st.max_grad_norm,
                  optimizer=st.optimizer, lr=st.lr, sample_rate=st.sample_rate, planned_rounds=1)
    with tempfile.TemporaryDirectory(prefix="secure-fcit-audit-") as root:
        privacy = ClientPrivacy(Path(root), client, dp, batch_size=st.batch_size,
                                local_epochs=st.steps * st.sample_rate, lr=st.lr, planned_rounds=1,
                                noise_prg=_noise_prg(seed, client))
        try:
            # The encoder only makes identity tokens, which a training round does not touch.
            learner = SlotLearner(client, slots, None, {0: samples}, {0: []},
                                  TrainSpec(epochs=1, batch_size=st.batch_size, lr=st.lr), am.pad_id, seed,
                                  privacy=privacy)
            delta_vec = learner.train(0, 0, 0, weights)
            (entry,) = [e for e in privacy.ledger.journal.entries if e.get("kind") == "dp-sgd"]
            weight = learner.update_weight(0)
        finally:
            privacy.close()
    prv = entry["eps_prv"]
    return Release(np.asarray(delta_vec, dtype=np.float64), weight, float(entry["sigma"]), float(entry["eps_rdp"]),
                   float(prv) if isinstance(prv, int | float) else math.nan, int(entry["steps"]), factors)


def _lr_factors(steps: int) -> tuple[float, ...]:
    """The learning-rate factor of each DP-SGD step (`model.train.warmup_linear_decay`, as used)."""
    from ..model.train import warmup_linear_decay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_decay(opt, steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return tuple(out)


def candidate_gradients(am: AuditModel, weights: np.ndarray, samples: Sequence, max_grad_norm: float) -> np.ndarray:
    """Each sample's clipped per-sample gradient at the global ``weights``: (n, slot size) float64."""
    from ..dp.sgd import clipped_per_sample_grads

    am.slots.load_slot(0, weights)
    with am.slots.training(0) as params:
        grads, _ = clipped_per_sample_grads(am.slots.model, params, list(samples), max_grad_norm=max_grad_norm,
                                            pad_id=am.pad_id, chunk=64)
    return grads.numpy()


def released_gradient_sum(update: np.ndarray, st: AuditSettings, factors: Sequence[float],
                          sigma: float, clients: int = 1) -> tuple[np.ndarray, float]:
    """(y, tau): the released slot update turned back into the clipped-gradient sum it carries,
    y = -update * divisor / (lr * sum of the schedule's factors), exact for one SGD step and the
    linearisation at the global state for more; tau is the noise's std per coordinate of y
    (``clients`` independently noised updates summed)."""
    total = st.lr * float(sum(factors))
    y = -np.asarray(update, dtype=np.float64) * st.batch_size / total
    tau = sigma * st.max_grad_norm * math.sqrt(clients * sum(f * f for f in factors)) / float(sum(factors))
    return y, tau


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P[a member's score > a non-member's] (ties count 1/2): the Mann-Whitney AUC."""
    members, nonmembers = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if not members.size or not nonmembers.size:
        raise ConfigError("the AUC needs at least one member and one non-member")
    ranks = stats.rankdata(np.concatenate([members, nonmembers]))
    n1 = members.size
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * nonmembers.size))


def inner_scores(grads: np.ndarray, y: np.ndarray) -> np.ndarray:
    """<y, g_i>: the plain white-box score."""
    return grads @ y


def _stack(grads: np.ndarray, nuisance: np.ndarray | None) -> np.ndarray:
    grads = np.asarray(grads, dtype=np.float64)
    return grads if nuisance is None or not len(nuisance) else np.vstack([grads, nuisance])


def residual_noise(grads: np.ndarray, y: np.ndarray, nuisance: np.ndarray | None = None) -> float | None:
    """The noise std per coordinate of y estimated from y itself: the part of y outside the span of
    the candidates' and the nuisance gradients is noise (and unexplained data), spread over
    d - rank coordinates. None when the gradients span too much of the space to leave a residual.
    The auditor measures the noise instead of trusting the sigma the client claims."""
    rows = _stack(grads, nuisance)
    d, k = rows.shape[1], len(rows)
    if d - k < max(64, d // 8):
        return None
    gram = rows @ rows.T
    ay = rows @ y
    floor = 1e-12 * float(np.trace(gram)) / k
    explained = float(ay @ linalg.solve(gram + floor * np.eye(k), ay, assume_a="pos"))
    return math.sqrt(max(float(y @ y) - explained, 0.0) / (d - k))


def lmmse_scores(grads: np.ndarray, y: np.ndarray, tau: float, *, nuisance: np.ndarray | None = None,
                 prior: float = 0.5, nuisance_var: float = 1.0) -> np.ndarray:
    """The linear MMSE estimate of the inclusion bits s in y = G^T s + P^T c + tau z, with
    s_i ~ Bernoulli(prior) and c_j of mean 0 and variance ``nuisance_var``: the ``nuisance`` rows P
    are gradients of public task samples at the same state, standing in for the client's other
    data the auditor does not know. Coefficient space: mu + (A A^T + tau^2 V^-1)^-1 (A y - A A^T mu),
    A = [G; P], V the prior variances (a tiny floor on tau keeps the solve stable without noise)."""
    rows = _stack(grads, nuisance)
    n, extra = len(grads), len(rows) - len(grads)
    mu = np.concatenate([np.full(n, prior), np.zeros(extra)])
    inv_var = np.concatenate([np.full(n, 1.0 / (prior * (1 - prior))), np.full(extra, 1.0 / nuisance_var)])
    gram = rows @ rows.T
    noise = max(tau * tau, 1e-9 * float(np.trace(gram)) / len(gram))
    coef = mu + linalg.solve(gram + noise * np.diag(inv_var), rows @ y - gram @ mu, assume_a="pos")
    return coef[:n]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[canary audit] {text}", file=sys.stderr, flush=True)


def canary_audit(*, epsilon: float | None, delta: float = 1e-5, m: int | None = None, seed: int = 0,
                 model_dir: Path | None = None, progress: bool = False, confidence: float = 0.95,
                 **knobs) -> dict:
    """One training run, one lower bound on the client's epsilon (see the module docstring).

    ``epsilon=None``: no DP (sigma = 0), the positive control. ``m``: canaries; None takes the
    setting's (1000; ``fast=True``: 500; ``setting="benchmark"``: 2000). ``knobs``: ``fast``,
    ``setting`` and any `AuditSettings` field. Under DP, ``epsilon_lower <= epsilon_accounted``
    with probability at least ``confidence`` whatever the code does right; a bound above it means
    the accounting or the mechanism is wrong."""
    t0 = time.perf_counter()
    st = settings(**knobs) if m is None else settings(m=m, **knobs)
    if epsilon is not None and not epsilon > 0:
        raise ConfigError(f"epsilon must be > 0 or None (no DP), got {epsilon}")
    _say(progress, f"loading the micro model; {st.m} canaries, {st.n_base} other samples")
    am = load_audit_model(model_dir, st.rank)
    canaries = task_samples(am, st.m, seed=seed, stream=1, answers="random")
    base = task_samples(am, st.n_base, seed=seed, stream=2, answers="natural")
    included = np.random.default_rng([seed, 0x1C]).uniform(size=st.m) < 0.5
    weights = global_weights(am, seed)
    _say(progress, f"training once ({int(included.sum())} canaries in), epsilon {epsilon}")
    release = client_release(am, base + [c for c, s in zip(canaries, included, strict=True) if s], weights, st,
                             epsilon=epsilon, delta=delta, seed=seed)
    _say(progress, "the auditor's gradients at the global state")
    grads = candidate_gradients(am, weights, canaries, st.max_grad_norm)
    proxies = task_samples(am, st.n_proxy, seed=seed, stream=3, answers="natural")
    nuisance = candidate_gradients(am, weights, proxies, st.max_grad_norm) if proxies else None
    y, tau_claimed = released_gradient_sum(release.delta, st, release.lr_factors, release.sigma)
    tau = residual_noise(grads, y, nuisance)
    tau = tau_claimed if tau is None else tau
    scores = lmmse_scores(grads, y, tau, nuisance=nuisance) if st.score == "lmmse" else inner_scores(grads, y)
    bound = guess_bound(scores, included, delta=delta, confidence=confidence)
    return {
        "epsilon": epsilon, "epsilon_accounted": release.epsilon_rdp, "epsilon_accounted_prv": release.epsilon_prv,
        "epsilon_lower": bound["epsilon_lower"], "epsilon_lower_uncorrected": bound["epsilon_lower_uncorrected"],
        "epsilon_cap": bound["epsilon_cap"], "delta": delta, "m": st.m, "included": int(included.sum()),
        "guesses": bound["guesses"], "correct": bound["correct"], "k": bound["k"], "k_grid": bound["k_grid"],
        "auc": roc_auc(scores[included], scores[~included]), "confidence": confidence,
        "sigma": release.sigma, "q": st.sample_rate, "steps": release.steps, "max_grad_norm": st.max_grad_norm,
        "lr": st.lr, "optimizer": st.optimizer, "divisor": st.batch_size, "rank": st.rank,
        "slot_size": int(grads.shape[1]), "n_base": st.n_base, "n_proxy": st.n_proxy, "score": st.score,
        "noise_std_claimed": tau_claimed, "noise_std_measured": tau, "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2), "what_the_auditor_sees": WHAT_THE_AUDITOR_SEES,
    }
