"""Empirical privacy of one client's round: the one-run canary audit and membership inference.

    .venv/bin/python benchmarks/canary_audit.py [--fast] [--seeds 0 1 2] [--epsilons 1 8 inf]
        [--mi-epsilons inf 8] [--out benchmarks/results/canary_audit.json]
        [--mi-out benchmarks/results/membership_inference.json]

1. ``canary_audit.json``: `compliance.empirical.canary_audit` (Steinke, Nasr, Jagielski 2023) on
   the micro model at each epsilon (inf: no DP, sigma 0, the positive control) and seed: m
   canaries (2000; ``--fast``: 500) in one client's data, one DP-SGD round through the shipping
   client code, the coordinator's white-box guesses from the plaintext update and the global state;
   per run the accounted epsilon (the journal's RDP, and PRV), the lower bound at 95% after the
   k sweep, the uncorrected one, the cap that perfect guessing of m canaries would give, guesses,
   correct, AUC, sigma, seconds.
2. ``membership_inference.json``: `compliance.membership.membership_table` at each of
   ``--mi-epsilons``: AUC and TPR at 1% FPR of the same white-box attack on the target client's
   plaintext update, its masked upload from the real masking transcript, and the cohort's sum.

Each seed is a separate valid audit; their maximum is not one (it would need another correction).
Infinite epsilons are written as the string "inf".
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from secure_fcit.compliance.empirical import canary_audit
from secure_fcit.compliance.membership import membership_table


def _eps(text: str) -> float | None:
    return None if text.lower() in ("inf", "none") else float(text)


def _json(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "inf"
    return "inf" if isinstance(value, float) and math.isinf(value) else f"{value:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="the fast settings (m = 500; 200 MI candidates)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epsilons", nargs="+", default=["1", "8", "inf"], help="audit epsilons (inf: no DP)")
    ap.add_argument("--mi-epsilons", nargs="+", default=["inf", "8"], help="membership-inference epsilons")
    ap.add_argument("--m", type=int, default=None, help="canaries (default: the setting's)")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the cached micro model")
    ap.add_argument("--out", default="benchmarks/results/canary_audit.json")
    ap.add_argument("--mi-out", default="benchmarks/results/membership_inference.json")
    args = ap.parse_args()
    setting = "fast" if args.fast else "benchmark"
    meta = {"command": " ".join(["benchmarks/canary_audit.py", *sys.argv[1:]]), "setting": setting,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__}
    runs = []
    print(f"{'eps':>5} {'seed':>4} {'m':>5} {'accounted':>9} {'prv':>6} {'lower':>6} {'uncorr':>6} {'cap':>5} "
          f"{'r':>5} {'v':>5} {'auc':>5} {'sigma':>6} {'s':>6}", flush=True)
    for text in args.epsilons:
        for seed in args.seeds:
            r = canary_audit(epsilon=_eps(text), m=args.m, seed=seed, model_dir=args.model_dir, setting=setting)
            runs.append(r)
            print(f"{_fmt(r['epsilon'], 0):>5} {seed:>4} {r['m']:>5} {_fmt(r['epsilon_accounted']):>9} "
                  f"{_fmt(r['epsilon_accounted_prv']):>6} {_fmt(r['epsilon_lower']):>6} "
                  f"{_fmt(r['epsilon_lower_uncorrected']):>6} {_fmt(r['epsilon_cap']):>5} {r['guesses']:>5} "
                  f"{r['correct']:>5} {r['auc']:.3f} {r['sigma']:>6.3f} {r['seconds']:>6.1f}", flush=True)
    bad = [r for r in runs if r["epsilon_lower"] > r["epsilon_accounted"]]
    summary = {"violations": len(bad), "runs": len(runs),
               "largest_lower_by_epsilon": {_fmt(e, 0): max(r["epsilon_lower"] for r in runs if r["epsilon"] == e)
                                            for e in dict.fromkeys(r["epsilon"] for r in runs)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json({"meta": meta, "summary": summary, "runs": runs}), indent=2) + "\n")
    print(f"{len(bad)} of {len(runs)} runs with a lower bound above the accounted epsilon; wrote {out}", flush=True)

    tables = []
    print(f"\n{'eps':>5} {'view':<27} {'auc':>6} {'tpr@1%':>7} {'members':>7} {'null sd':>7} {'s':>6}", flush=True)
    for text in args.mi_epsilons:
        t0 = time.perf_counter()
        rows = membership_table(epsilon=_eps(text), seed=args.seeds[0], model_dir=args.model_dir,
                                setting="fast" if args.fast else "default")
        for row in rows:
            print(f"{_fmt(row['epsilon']):>5} {row['view']:<27} {row['auc']:>6.3f} {row['tpr_at_1pct_fpr']:>7.3f} "
                  f"{row['members']:>7} {row['auc_null_std']:>7.3f} {time.perf_counter() - t0:>6.1f}", flush=True)
        tables.extend(rows)
    mi_out = Path(args.mi_out)
    mi_out.parent.mkdir(parents=True, exist_ok=True)
    mi_out.write_text(json.dumps(_json({"meta": meta, "rows": tables}), indent=2) + "\n")
    print(f"wrote {mi_out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
