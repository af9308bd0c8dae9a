"""The empirical controls: a one-run canary audit of the accounted epsilon, and membership inference
against the three views an adversary may hold (``compliance.empirical``, ``compliance.membership``).

Both run on the micro model through the project's own DP-SGD and masking; ``--full`` runs them at
the benchmark's setting (``benchmarks/canary_audit.py`` writes the committed figures).
"""

from __future__ import annotations

import math

from .catalogue import control, failed, not_applicable, passed
from .live import _micro
from .policy import Target

__all__ = ["chance_interval"]


def chance_interval(members: int, nonmembers: int, z: float = 2.576) -> tuple[float, float]:
    """The 99 % interval of a random score's AUC (Mann-Whitney: variance (m + n + 1) / (12 m n))."""
    half = z * math.sqrt((members + nonmembers + 1) / (12 * members * nonmembers))
    return 0.5 - half, 0.5 + half


@control("EMP-1", "audit", "The accounted epsilon is not an under-estimate: a one-run canary audit stays below it.",
         "Steinke, Nasr, Jagielski (NeurIPS 2023): m canaries in one client's data, each included with probability "
         "1/2, one DP-SGD training run at the config's epsilon; membership guessed from what the coordinator sees "
         "(the release and the global state, scored by least squares); the 95 % lower bound on epsilon must not exceed the accounted epsilon. "
         "Without DP the same audit finds a large lower bound (the positive control, benchmarks/canary_audit.py).",
         ("NIST SP 800-226 eps-delta", "NIST SP 800-226 pitfalls", "GDPR Art. 32"))
def empirical_audit(t: Target) -> object:
    from .empirical import canary_audit

    dp = t.config.dp
    if not dp.enabled:
        return not_applicable("DP is off: there is no accounted epsilon to audit (see DP-1)")
    r = canary_audit(epsilon=dp.epsilon, delta=dp.delta, model_dir=_micro(t), fast=t.fast)
    evidence = (f"epsilon lower bound {r['epsilon_lower']:.3f} (confidence {r['confidence']:g}) against the "
                f"accounted {r['epsilon_accounted']:.3f}",
                f"{r['m']} canaries, {r['guesses']} guesses, {r['correct']} correct; sigma {r['sigma']:.3f}, "
                f"{r['steps']} steps; the auditor sees {r['what_the_auditor_sees']}")
    if r["epsilon_lower"] <= r["epsilon_accounted"] + 1e-9 and not math.isinf(r["epsilon_accounted"]):
        return passed(*evidence, **r)
    return failed("the empirical lower bound exceeds the accounted epsilon: the accounting under-counts this "
                  "installation's leakage; do not rely on its epsilon", *evidence, **r)


@control("MI-1", "audit", "Membership inference on the coordinator's masked transcript is at chance.",
         "A white-box membership attack (a least-squares estimate of each candidate's inclusion from its clipped "
         "gradient at the global state and the release) against three views: one client's plaintext update, the coordinator's masked transcript of the "
         "real masking protocol, and the unmasked aggregate. AUC and TPR at 1 % FPR are reported; the masked "
         "transcript's AUC must lie within the chance interval.",
         ("GDPR Art. 32", "HIPAA 164.312(a)(2)(iv)", "NIST SP 800-53 SC-13"))
def membership_inference(t: Target) -> object:
    from .membership import membership_table

    eps = t.config.dp.epsilon if t.config.dp.enabled else None
    rows = membership_table(epsilon=eps, model_dir=_micro(t), fast=t.fast)
    table = ["| view | AUC | TPR at 1 % FPR | members / non-members |", "|---|---:|---:|---:|"]
    table += [f"| {r['view']} | {r['auc']:.3f} | {r['tpr_at_1pct_fpr']:.3f} | {r['members']} / {r['nonmembers']} |"
              for r in rows]
    masked = next(r for r in rows if r["view"] == "masked transcript")
    lo, hi = chance_interval(masked["members"], masked["nonmembers"])
    evidence = [f"{r['view']}: AUC {r['auc']:.3f}, TPR@1%FPR {r['tpr_at_1pct_fpr']:.3f}" for r in rows]
    evidence.append(f"chance interval for the masked transcript's AUC (99 %): [{lo:.3f}, {hi:.3f}]; "
                    f"epsilon {'none (no DP)' if eps is None else f'{eps:g}'}")
    if lo <= masked["auc"] <= hi:
        return passed(*evidence, tables=[table], rows=rows)
    return failed("membership is inferable from the masked transcript: the masking leaks; do not deploy",
                  *evidence, tables=[table], rows=rows)
