"""One client's privacy ledger: the spend journal, the accountant state, and the hard budget.

The journal is the record of truth; ``accountant.json`` (saved atomically after each append) holds
the accountant history for a fast start and anchors the journal's length and head hash, so a
journal cut short is caught too. A spend is journaled and fsynced *before* the steps it pays for:
a crash in between over-counts, never under-counts.
"""

from __future__ import annotations

import builtins
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DPConfig
from ..errors import BudgetExhausted, PrivacyError
from .accounting import Mechanism, derive_noise_multiplier, epsilon, prv_epsilon, rdp_epsilon
from .journal import SpendJournal, atomic_write_json, check_anchor

__all__ = ["RoundPlan", "PrivacyLedger", "client_dir"]


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


def client_dir(root: Path, client_id: str) -> Path:
    if not client_id or any(c in client_id for c in "/\\\0") or client_id in (".", ".."):
        raise PrivacyError(f"client id {client_id!r} cannot name a ledger folder")
    return Path(root) / client_id


class PrivacyLedger:
    """Journal + accountant + cap for one client dataset, under ``root/<client_id>/``."""

    def __init__(self, root: Path, client_id: str, dp: DPConfig) -> None:
        self.dp = dp
        self.client_id = client_id
        self.dir = client_dir(root, client_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "accountant.json"
        self.journal = SpendJournal(self.dir / "journal.jsonl", client_id)
        self._check_anchor()

    # --- state ---------------------------------------------------------------------------------
    def _check_anchor(self) -> None:
        n = check_anchor(self.state_path, self.journal.path, self.journal.entries, self.client_id)
        # No state file (a crash before the first save, or a deleted one) or fewer entries in it
        # (a crash after an append, before the save): the journal is the truth; catch up.
        if len(self.journal) > (n or 0):
            self._save_state()

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, {
            "client": self.client_id, "entries": len(self.journal), "head": self.journal.head,
            "accountant": self.dp.accountant, "delta": self.dp.delta, "epsilon_max": self.dp.epsilon,
            "history": [list(m) for m in self.history],
        })

    @property
    def history(self) -> list[Mechanism]:
        return [(e["sigma"], e["q"], e["steps"]) for e in self.journal if e["kind"] == "dp-sgd"]

    @property
    def rounds_charged(self) -> int:
        return sum(1 for e in self.journal if e["kind"] == "dp-sgd")

    def spent(self) -> dict[str, float]:
        h = self.history
        return {"rdp": rdp_epsilon(h, self.dp.delta), "prv": prv_epsilon(h, self.dp.delta)}

    # --- planning and charging -----------------------------------------------------------------
    def plan(self, stage: int, round: int, n_samples: int, batch_size: int, local_epochs: float,
             planned_rounds: int) -> RoundPlan:
        """The round's (sigma, q, steps); raises `BudgetExhausted` or `PrivacyError` with the reason."""
        dp = self.dp
        if n_samples < 1:
            raise PrivacyError("no samples to train on")
        if dp.delta >= 1.0 / n_samples:
            raise PrivacyError(f"dp.delta = {dp.delta:g} is not < 1/|D_k| = 1/{n_samples} for this client's "
                               "stage data: the guarantee would allow releasing a whole sample")
        q = min(1.0, batch_size / n_samples)
        steps = max(1, int(builtins.round(local_epochs / q)))
        history = self.history
        if dp.noise_multiplier is not None:
            sigma = float(dp.noise_multiplier)
        else:
            left = max(1, planned_rounds - self.rounds_charged)
            derived = derive_noise_multiplier(history, (0.0, q, steps * left), dp.epsilon, dp.delta)
            if derived is None:
                raise BudgetExhausted(self._exhausted(q, steps))
            sigma = derived
        after = epsilon([*history, (sigma, q, steps)], dp.delta, dp.accountant)
        if after > dp.epsilon:
            raise BudgetExhausted(self._exhausted(q, steps, sigma, after))
        return RoundPlan(stage, round, sigma, dp.max_grad_norm, q, steps, batch_size, after)

    def _exhausted(self, q: float, steps: int, sigma: float | None = None, after: float | None = None) -> str:
        now = epsilon(self.history, self.dp.delta, self.dp.accountant)
        what = (f"sigma={sigma:.4g} would bring epsilon to {after:.3f}" if sigma is not None
                else "no noise multiplier up to 100 keeps it in budget")
        return (f"privacy budget: {self.dp.accountant.upper()} epsilon spent {now:.3f} of {self.dp.epsilon:g} "
                f"(delta {self.dp.delta:g}); a round of {steps} steps at q={q:.4g}: {what}")

    def charge(self, plan: RoundPlan) -> dict[str, Any]:
        """Journal the plan's spend (fsynced) before any step runs; returns the entry."""
        history = [*self.history, (plan.sigma, plan.q, plan.steps)]
        eps_rdp = rdp_epsilon(history, self.dp.delta)
        eps_prv = prv_epsilon(history, self.dp.delta)
        capped = eps_rdp if self.dp.accountant == "rdp" else eps_prv
        if capped > self.dp.epsilon:
            raise BudgetExhausted(self._exhausted(plan.q, plan.steps, plan.sigma, capped))
        entry = self.journal.append({
            "time": _now(), "stage": plan.stage, "round": plan.round, "kind": "dp-sgd",
            "sigma": plan.sigma, "C": plan.max_grad_norm, "q": plan.q, "steps": plan.steps,
            "batch_size": plan.batch_size, "delta": self.dp.delta, "accountant": self.dp.accountant,
            "epsilon_max": self.dp.epsilon, "eps_rdp": _finite(eps_rdp), "eps_prv": _finite(eps_prv),
        })
        self._save_state()
        return entry

    def record_release(self, stage: int, round: int, what: str, **detail: Any) -> dict[str, Any]:
        """Journal a release of something derived from the client's data that DP does not cover."""
        entry = self.journal.append({"time": _now(), "stage": stage, "round": round, "kind": "release",
                                     "what": what, "dp": False, **detail})
        self._save_state()
        return entry


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

