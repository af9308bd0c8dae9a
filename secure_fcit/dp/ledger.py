"""One client's privacy ledger: the spend journal, the accountant state, and the hard budget.

The journal is the record of truth; ``accountant.json`` (saved atomically after each append) holds
the accountant history for a fast start and anchors the journal's length and head hash, so a
journal cut short is caught too. A spend is journaled and fsynced *before* the steps it pays for:
a crash in between over-counts, never under-counts.

Two things live outside the ledger folder, so that someone who can write the folder cannot forge
the spend (threat model: /tmp/tm_ledger.md, docs/threat_model.md):
- the signing key: every entry is signed with the client's Ed25519 key (`signing_key`: the
  deployment's certificate key; in the in-process simulation a key generated in memory by the
  simulating process, never written anywhere);
- the roster ``root/ledger-roster.json`` (`LedgerRoster`): per client, the public keys allowed to
  sign its journal and the entry count and head hash after its last append. The ledger checks the
  journal against it when it opens (a deleted or cut-short journal is refused, not restarted at 0),
  and the audit runs against it (every client of the run, none silently left out).
The ledger folder is locked (``ledger.lock``, `fcntl.flock`) for the ledger's lifetime: a second
opener, in this process or another, is refused naming the folder and the holder's pid.
"""

from __future__ import annotations

import builtins
import fcntl
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import DPConfig
from ..errors import BudgetExhausted, JournalError, PrivacyError
from .accounting import (
    SKELLAM_KIND,
    STREAM_PARTITION,
    TOKEN_KIND,
    Mechanism,
    derive_noise_multiplier,
    epsilon,
    prv_epsilon,
    task_epsilon,
    task_histories,
    task_releases,
)
from .journal import SpendJournal, atomic_write_json, check_anchor, public_hex

__all__ = ["RoundPlan", "ReleasePlan", "PrivacyLedger", "LedgerRoster", "client_dir", "read_roster", "check_roster_record",
           "ROSTER_NAME", "LOCK_NAME"]

ROSTER_NAME = "ledger-roster.json"
LOCK_NAME = "ledger.lock"


@dataclass(frozen=True)
class RoundPlan:
    """What one round of DP-SGD will spend: sigma, sample rate q, steps, and epsilon after it."""

    stage: int
    round: int
    sigma: float
    max_grad_norm: float
    q: float
    steps: int
    batch_size: int
    eps_after: float
    #: The tasks (partitions of the client's data) the round's samples belong to: each is charged.
    tasks: tuple[str, ...] = (STREAM_PARTITION,)


@dataclass(frozen=True)
class ReleasePlan:
    """What one distributed-DP round will spend (`dp.distributed`): one Skellam release of total
    per-coordinate variance ``mu`` (integer units; what any ``t - c`` honest survivors' shares carry)
    with per-sample sensitivities ``l2``/``l1``, on a Poisson sample at rate ``q``."""

    stage: int
    round: int
    mu: float
    l2: float
    l1: float
    q: float
    max_grad_norm: float
    eps_after: float
    tasks: tuple[str, ...] = (STREAM_PARTITION,)
    #: Noised steps of the release (distributed DP: 1 per round; local Skellam DP-SGD: the round's).
    steps: int = 1

    @property
    def sigma(self) -> float:
        """The noise multiplier of a Gaussian of the same variance: sqrt(mu) / l2."""
        return math.sqrt(self.mu) / self.l2


def client_dir(root: Path, client_id: str) -> Path:
    if not client_id or any(c in client_id for c in "/\\\0") or client_id in (".", ".."):
        raise PrivacyError(f"client id {client_id!r} cannot name a ledger folder")
    return Path(root) / client_id


def read_roster(path: Path) -> dict[str, dict[str, Any]]:
    """The roster's clients: ``{client id: {"keys": [hex], "entries": n, "head": hash | None}}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JournalError(f"{path}: the ledger roster cannot be read ({exc})") from None
    clients = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(clients, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("keys"), list) and isinstance(r.get("entries"), int)
            for r in clients.values()):
        raise JournalError(f"{path}: not a ledger roster (clients with keys, entries and head)")
    return clients


def check_roster_record(record: dict[str, Any], roster: Path, journal: Path, entries: list[dict[str, Any]]) -> None:
    """Raise `JournalError` when the journal is shorter than the roster recorded, or differs there."""
    n = record.get("entries", 0)
    if len(entries) < n:
        raise JournalError(f"{journal}: {len(entries)} entries, but the roster {roster} recorded {n} "
                           "(entries removed from its end, or the journal or its folder deleted)")
    if n and entries[n - 1]["hash"] != record.get("head"):
        raise JournalError(f"{journal}: entry {n - 1} differs from the head the roster {roster} recorded "
                           "(rewritten journal)")


class LedgerRoster:
    """``root/ledger-roster.json``: outside every ledger folder, read-modify-written under a lock
    (``ledger-roster.json.lock``) so the ledgers of one run, in one process or several, share it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def clients(self) -> dict[str, dict[str, Any]]:
        return read_roster(self.path) if self.path.exists() else {}

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            clients = self.clients()
            change(clients)
            atomic_write_json(self.path, {"version": 1, "clients": clients})

    def enroll(self, client_id: str, key: str) -> None:
        def change(clients: dict[str, dict[str, Any]]) -> None:
            record = clients.setdefault(client_id, {"keys": [], "entries": 0, "head": None})
            if key not in record["keys"]:
                record["keys"].append(key)
        self._update(change)

    def record(self, client_id: str, entries: int, head: str) -> None:
        def change(clients: dict[str, dict[str, Any]]) -> None:
            clients[client_id].update(entries=entries, head=head)
        self._update(change)


def _lock_folder(folder: Path):
    """An exclusive `fcntl.flock` on ``folder/ledger.lock``, kept while the returned file is open."""
    f = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise PrivacyError(f"the ledger folder {folder} is in use by process {holder} (its ledger.lock is "
                           "held): two ledgers on one folder could each pass the cap; stop the other one "
                           "first") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class PrivacyLedger:
    """Journal + accountant + cap for one client dataset, under ``root/<client_id>/``."""

    def __init__(self, root: Path, client_id: str, dp: DPConfig, *,
                 signing_key: Ed25519PrivateKey | None = None) -> None:
        self.dp = dp
        self.client_id = client_id
        self.dir = client_dir(root, client_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.dir)  # before anything is read: the state cannot move under us
        try:
            self._open(Path(root), signing_key)
        except BaseException:
            self.close()
            raise

    def _open(self, root: Path, signing_key: Ed25519PrivateKey | None) -> None:
        # No key given (the in-process simulation, tests): one made here, in memory only. A ledger
        # continued by a later process signs with its own key; the roster lists every key used.
        key = signing_key if signing_key is not None else Ed25519PrivateKey.generate()
        self.roster = LedgerRoster(root / ROSTER_NAME)
        record = self.roster.clients().get(self.client_id, {"keys": [], "entries": 0, "head": None})
        self.state_path = self.dir / "accountant.json"
        self.journal = SpendJournal(self.dir / "journal.jsonl", self.client_id, key, record["keys"])
        check_roster_record(record, self.roster.path, self.journal.path, self.journal.entries)
        self.roster.enroll(self.client_id, public_hex(key))
        self._check_anchor()
        if len(self.journal) != record["entries"]:
            self.roster.record(self.client_id, len(self.journal), self.journal.head)

    def close(self) -> None:
        """Release the folder's lock; the ledger is not used after this."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ---------------------------------------------------------------------------------
    def _check_anchor(self) -> None:
        n = check_anchor(self.state_path, self.journal.path, self.journal.entries, self.client_id)
        # No state file (a crash before the first save, or a deleted one) or fewer entries in it
        # (a crash after an append, before the save): the journal is the truth; catch up.
        if len(self.journal) > (n or 0):
            self._save_state()

    def _append(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._lock is None:
            raise PrivacyError(f"the ledger of {self.client_id!r} was closed")
        entry = self.journal.append(fields)  # signed, written and fsynced: the record of truth
        self._save_state()
        self.roster.record(self.client_id, len(self.journal), self.journal.head)
        return entry

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, {
            "client": self.client_id, "entries": len(self.journal), "head": self.journal.head,
            "accountant": self.dp.accountant, "delta": self.dp.delta, "epsilon_max": self.dp.epsilon,
            "history": [list(m) for m in self.history],
        })

    @property
    def history(self) -> list[Mechanism]:
        """Every DP-SGD mechanism in the journal, whatever its task."""
        return [(e["sigma"], e["q"], e["steps"]) for e in self.journal if e["kind"] == "dp-sgd"]

    def task_histories(self) -> dict[str, list[Mechanism]]:
        """Per task: the mechanisms that touched its samples (`accounting.task_histories`)."""
        return task_histories(self.journal.entries)

    @property
    def rounds_charged(self) -> int:
        """DP-SGD rounds journaled, whatever their task."""
        return len(self.history)

    def spent(self) -> dict[str, float]:
        """The client's epsilon: the maximum over its tasks (parallel composition), RDP and PRV."""
        gauss, skel = self.task_histories(), task_releases(self.journal.entries)
        tasks = sorted(set(gauss) | set(skel)) or [STREAM_PARTITION]
        return {"rdp": max(task_epsilon(gauss.get(t, []), skel.get(t, []), self.dp.delta) for t in tasks),
                "prv": math.nan if skel else _max_prv([prv_epsilon(gauss.get(t, []), self.dp.delta) for t in tasks])}

    # --- planning and charging -----------------------------------------------------------------
    def plan(self, stage: int, round: int, n_samples: int, batch_size: int, local_epochs: float,
             planned_rounds: int | dict[str, int], tasks: tuple[str, ...] = (STREAM_PARTITION,),
             token_stages: int | dict[str, int] = 0) -> RoundPlan:
        """The round's (sigma, q, steps); raises `BudgetExhausted` or `PrivacyError` with the reason.

        ``tasks``: the tasks of the round's samples; each task's history is charged, and sigma is
        the largest any of them needs. ``planned_rounds``: the rounds the client plans on each task
        (one number for all, or per task), for deriving sigma from the budget; ``token_stages``:
        the token releases each task plans (one per stage that holds it), composed into that budget."""
        dp = self.dp
        tasks = tuple(dict.fromkeys(tasks)) or (STREAM_PARTITION,)
        _check_samples(n_samples, dp.delta)
        # Public parameters only (add/remove-one neighbours, threat_model.md §1): q is dp.sample_rate
        # and the step count follows from it, never from n_samples, so a neighbour (one sample more
        # or less) runs the same mechanism; n_samples is only checked (delta < 1/n).
        q = float(dp.sample_rate)
        steps = max(1, int(builtins.round(local_epochs / q)))
        histories = self.task_histories()
        if dp.noise_multiplier is not None:
            sigma = float(dp.noise_multiplier)
        else:
            # A schedule fixed in advance, not a filter: each task's sigma is derived from a fresh
            # history for its planned rounds, so every participation of the task runs the same
            # mechanism whatever was spent before; the composition is then that of a sequence fixed
            # before training, and the minimum over RDP orders applies to it (threat_model.md §1).
            sigma = 0.0
            for task in tasks:
                planned = planned_rounds[task] if isinstance(planned_rounds, dict) else planned_rounds
                derived = _public_sigma(tuple(self.token_schedule(task, token_stages)), q, steps * max(1, planned),
                                        dp.epsilon, dp.delta)
                if derived is None:
                    raise BudgetExhausted(self._exhausted(q, steps, task=task))
                sigma = max(sigma, derived)
        after = max(epsilon([*histories.get(t, []), (sigma, q, steps)], dp.delta, dp.accountant) for t in tasks)
        if after > dp.epsilon:
            raise BudgetExhausted(self._exhausted(q, steps, sigma, after))
        return RoundPlan(stage, round, sigma, dp.max_grad_norm, q, steps, batch_size, after, tasks)

    def _exhausted(self, q: float, steps: int, sigma: float | None = None, after: float | None = None,
                   task: str | None = None) -> str:
        hs = self.task_histories()
        now = (epsilon(hs.get(task, []), self.dp.delta, self.dp.accountant) if task is not None else
               max((epsilon(h, self.dp.delta, self.dp.accountant) for h in hs.values()), default=0.0))
        what = (f"sigma={sigma:.4g} would bring epsilon to {after:.3f}" if sigma is not None
                else "no noise multiplier up to 100 keeps it in budget")
        where = f" on task {task!r}" if task is not None else ""
        return (f"privacy budget: {self.dp.accountant.upper()} epsilon spent{where} {now:.3f} of {self.dp.epsilon:g} "
                f"(delta {self.dp.delta:g}); a round of {steps} steps at q={q:.4g}: {what}")

    def charge(self, plan: RoundPlan) -> dict[str, Any]:
        """Journal the plan's spend (fsynced) before any step runs; returns the entry.

        The entry's epsilons are the client's guarantee after it: the maximum over every task's
        history, the plan's tasks charged with the new mechanism."""
        eps_rdp, eps_prv, capped = self._after_gaussian(plan.tasks, (plan.sigma, plan.q, plan.steps))
        if capped > self.dp.epsilon:
            raise BudgetExhausted(self._exhausted(plan.q, plan.steps, plan.sigma, capped))
        entry = self._append({
            "time": _now(), "stage": plan.stage, "round": plan.round, "kind": "dp-sgd",
            "sigma": plan.sigma, "C": plan.max_grad_norm, "q": plan.q, "steps": plan.steps,
            "batch_size": plan.batch_size, "delta": self.dp.delta, "accountant": self.dp.accountant,
            "epsilon_max": self.dp.epsilon, "tasks": list(plan.tasks),
            "eps_rdp": _finite(eps_rdp), "eps_prv": "unavailable" if math.isnan(eps_prv) else _finite(eps_prv),
        })
        return entry

    def _after_gaussian(self, tasks: tuple[str, ...], mechanism: Mechanism) -> tuple[float, float, float]:
        """(RDP, PRV, capped) epsilon of the client after ``mechanism`` on each of ``tasks``: the
        maximum over every task's history. PRV is NaN (unavailable: Skellam releases, or noise too
        small for it, see accounting.prv_result), and RDP then enforces the cap."""
        histories = self.task_histories()
        for task in tasks:
            histories[task] = [*histories.get(task, []), mechanism]
        skel = task_releases(self.journal.entries)
        eps_rdp = max(task_epsilon(histories.get(t, []), skel.get(t, []), self.dp.delta)
                      for t in set(histories) | set(skel))
        eps_prv = math.nan if skel else _max_prv([prv_epsilon(h, self.dp.delta) for h in histories.values()])
        capped = eps_rdp if self.dp.accountant == "rdp" or math.isnan(eps_prv) else eps_prv
        return eps_rdp, eps_prv, capped

    def plan_release(self, stage: int, round: int, n_samples: int, l2: float, l1: float, q: float,
                     planned_rounds: int | dict[str, int],
                     tasks: tuple[str, ...] = (STREAM_PARTITION,), public: bool = True,
                     steps: int = 1, token_stages: int | dict[str, int] = 0) -> ReleasePlan:
        """A distributed-DP round's Skellam variance ``mu``, from public values alone: per task, the
        smallest with which ``planned_rounds`` releases (one number, or per task) spend the budget
        from a fresh history (``dp.noise_multiplier`` fixed: mu = (sigma l2)^2); the largest over the
        round's tasks. Every client derives the same mu, and every release of a task runs the same
        mechanism (a schedule fixed in advance, not a filter: threat_model.md §1); the client's own
        history is checked against the cap. `BudgetExhausted` with the numbers. ``public`` is kept
        for callers; there is no other derivation."""
        from .skellam import SkellamRelease, mixed_epsilon

        dp = self.dp
        tasks = tuple(dict.fromkeys(tasks)) or (STREAM_PARTITION,)
        _check_samples(n_samples, dp.delta)
        gauss, skel = self.task_histories(), task_releases(self.journal.entries)
        if dp.noise_multiplier is not None:
            mu = (float(dp.noise_multiplier) * l2) ** 2
        else:
            mu = 0.0
            for task in tasks:
                planned = planned_rounds[task] if isinstance(planned_rounds, dict) else planned_rounds
                derived = _public_variance(l2, l1, q, int(planned) * int(steps), dp.epsilon, dp.delta,
                                           tuple(self.token_schedule(task, token_stages)))
                if derived is None:
                    raise BudgetExhausted(self._release_exhausted(task, q))
                mu = max(mu, derived)
        release = SkellamRelease(mu, l2, l1, q, int(steps))
        after = max(mixed_epsilon(gauss.get(t, []), [*skel.get(t, []), release], dp.delta) for t in tasks)
        if after > dp.epsilon:
            raise BudgetExhausted(self._release_exhausted(tasks[0], q, after))
        return ReleasePlan(stage, round, mu, l2, l1, q, dp.max_grad_norm, after, tasks, int(steps))

    def _release_exhausted(self, task: str, q: float, after: float | None = None) -> str:
        gauss, skel = self.task_histories(), task_releases(self.journal.entries)
        now = task_epsilon(gauss.get(task, []), skel.get(task, []), self.dp.delta)
        what = (f"it would bring epsilon to {after:.3f}" if after is not None
                else "no noise up to a Gaussian-equivalent sigma of 100 keeps it in budget")
        return (f"privacy budget: RDP epsilon spent on task {task!r} {now:.3f} of {self.dp.epsilon:g} "
                f"(delta {self.dp.delta:g}); a distributed-DP release at q={q:.4g}: {what}")

    def charge_release(self, plan: ReleasePlan, **detail: Any) -> dict[str, Any]:
        """Journal a distributed-DP release (fsynced) before the contribution is computed."""
        from .skellam import SkellamRelease

        gauss, skel = self.task_histories(), task_releases(self.journal.entries)
        for task in plan.tasks:
            skel[task] = [*skel.get(task, []), SkellamRelease(plan.mu, plan.l2, plan.l1, plan.q, plan.steps)]
        eps_rdp = max(task_epsilon(gauss.get(t, []), skel.get(t, []), self.dp.delta) for t in set(gauss) | set(skel))
        if eps_rdp > self.dp.epsilon:
            raise BudgetExhausted(self._release_exhausted(plan.tasks[0], plan.q, eps_rdp))
        return self._append({
            "time": _now(), "stage": plan.stage, "round": plan.round, "kind": SKELLAM_KIND,
            "mu": plan.mu, "l2": plan.l2, "l1": plan.l1, "q": plan.q, "steps": plan.steps, "C": plan.max_grad_norm,
            "sigma": plan.sigma, "delta": self.dp.delta, "accountant": "rdp", "epsilon_max": self.dp.epsilon,
            "tasks": list(plan.tasks), "eps_rdp": _finite(eps_rdp), "eps_prv": "unavailable", **detail,
        })

    def token_schedule(self, task: str, token_stages: int | dict[str, int]) -> list[Mechanism]:
        """The token mechanisms ``task`` plans (public: the stream's stages that hold it), as the
        fresh history every sigma or Skellam variance of the task is derived against."""
        m = token_stages.get(task, 0) if isinstance(token_stages, dict) else int(token_stages)
        return [(self.dp.token_noise_multiplier, 1.0, 1)] * max(0, int(m))

    def charge_token(self, stage: int, n_samples: int, tasks: tuple[str, ...] = (STREAM_PARTITION,)) -> dict[str, Any]:
        """Journal (fsynced) one token-phase Gaussian mechanism on each of ``tasks`` before its noise
        is drawn; `BudgetExhausted` when it would cross the cap. The entry is a Gaussian
        mechanism (noise multiplier ``dp.token_noise_multiplier``, q = 1, one step)."""
        dp = self.dp
        tasks = tuple(dict.fromkeys(tasks)) or (STREAM_PARTITION,)
        _check_samples(n_samples, dp.delta)
        z = dp.token_noise_multiplier
        eps_rdp, eps_prv, capped = self._after_gaussian(tasks, (z, 1.0, 1))
        if capped > dp.epsilon:
            raise BudgetExhausted(
                f"privacy budget: the stage's identity token (a Gaussian mechanism of noise multiplier {z:.4g}) "
                f"would bring {dp.accountant.upper()} epsilon to {capped:.3f} of {dp.epsilon:g} (delta {dp.delta:g})")
        return self._append({
            "time": _now(), "stage": stage, "round": -1, "kind": TOKEN_KIND,
            "sigma": z, "C": 1.0, "q": 1.0, "steps": 1, "token_sigma": dp.token_sigma,
            "token_count_sigma": dp.token_count_sigma, "token_epsilon_share": dp.token_epsilon_share, "delta": dp.delta, "accountant": dp.accountant,
            "epsilon_max": dp.epsilon, "tasks": list(tasks),
            "eps_rdp": _finite(eps_rdp), "eps_prv": "unavailable" if math.isnan(eps_prv) else _finite(eps_prv),
        })

    def record_release(self, stage: int, round: int, what: str, **detail: Any) -> dict[str, Any]:
        """Journal a release of something derived from the client's data that DP does not cover."""
        return self._append({"time": _now(), "stage": stage, "round": round, "kind": "release",
                             "what": what, "dp": False, **detail})


@functools.lru_cache(maxsize=256)
def _public_sigma(tokens: tuple[Mechanism, ...], q: float, steps: int, epsilon: float, delta: float) -> float | None:
    """`derive_noise_multiplier` from the public schedule (cached: every round of a task asks again)."""
    return derive_noise_multiplier(list(tokens), (0.0, q, steps), epsilon, delta)


@functools.lru_cache(maxsize=256)
def _public_variance(l2: float, l1: float, q: float, rounds: int, epsilon: float, delta: float,
                     gaussian: tuple[Mechanism, ...] = ()) -> float | None:
    from .skellam import derive_skellam_variance

    return derive_skellam_variance([], l2=l2, l1=l1, q=q, steps=max(1, rounds), target_epsilon=epsilon, delta=delta,
                                   gaussian=gaussian)


def _check_samples(n_samples: int, delta: float) -> None:
    if n_samples < 1:
        raise PrivacyError("no samples to train on")
    if delta >= 1.0 / n_samples:  # the refusal reaches the coordinator: it does not name n_k
        raise PrivacyError(f"dp.delta = {delta:g} is not < 1/|D_k| for this client's stage data: the "
                           "guarantee would allow releasing a whole sample")


def _max_prv(values: list[float]) -> float:
    """The largest PRV epsilon; NaN (unavailable) when any task's is: the maximum is then unknown."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

