"""The committed local-DP run under the neighbouring relation its mechanism actually had.

    .venv/bin/python benchmarks/relation_audit.py [--run benchmarks/results/fcit/hom-task/b1/disco-dp8-s0]
        [--out benchmarks/results/relation_audit.json]

Runs made before the add/remove-one relation was made consistent (issue 20, finding 1) drew each
client's DP-SGD steps at q = B / n_k with round(E / q) steps: the mechanism depended on the
client's sample count, so adding or removing a sample was visible and the journaled add/remove-one
epsilon does not hold. What those runs do guarantee is replace-one DP (n_k fixed, one sample
swapped). This script recomputes every client's epsilon of such a run under replace-one neighbours
with Google's ``dp-accounting`` PLD accountant (a test-only dependency: ``pip install -e .[dev]``),
composing all of the client's DP-SGD entries (those runs had one accountant per client), and
prints the largest epsilon and the clients over the run's cap. Runs from the current code need
none of this: q, the step count and the divisor are public constants, and ``audit`` recomputes
their add/remove-one epsilon.

Output: a JSON with, per client, the journaled add/remove epsilon, the replace-one PLD epsilon and
their ratio, and the summary (largest, clients over the cap).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from secure_fcit.dp.accounting import rdp_epsilon

DEFAULT_RUN = "benchmarks/results/fcit/hom-task/b1/disco-dp8-s0"


def _history(journal: Path) -> tuple[list[tuple[float, float, int]], float, float]:
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    dp = [e for e in entries if e.get("kind") == "dp-sgd"]
    if not dp:
        return [], 0.0, 0.0
    return [(e["sigma"], e["q"], e["steps"]) for e in dp], dp[0]["delta"], dp[0]["epsilon_max"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=DEFAULT_RUN, help="a run folder with privacy/<client>/journal.jsonl")
    ap.add_argument("--out", default="benchmarks/results/relation_audit.json")
    args = ap.parse_args()
    try:
        import dp_accounting
        from dp_accounting import pld
    except ImportError:
        print("dp-accounting is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(logging.ERROR)
    journals = sorted(Path(args.run, "privacy").glob("*/journal.jsonl"))
    if not journals:
        print(f"no journals under {args.run}/privacy", file=sys.stderr)
        return 2
    rows, cap = [], None
    for journal in journals:
        history, delta, epsilon_max = _history(journal)
        if not history:
            continue
        cap = epsilon_max
        event = dp_accounting.ComposedDpEvent([
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
            for sigma, q, steps in history])
        acct = pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
                                 value_discretization_interval=1e-3)
        acct.compose(event)
        replace = float(acct.get_epsilon(delta))
        add_remove = rdp_epsilon(history, delta)
        rows.append({"client": journal.parent.name, "entries": len(history), "delta": delta,
                     "epsilon_add_remove_rdp": round(add_remove, 4), "epsilon_replace_one_pld": round(replace, 4),
                     "ratio": round(replace / add_remove, 4)})
        print(f"{journal.parent.name}: add/remove (journaled, RDP) {add_remove:.3f}, replace-one (PLD) {replace:.3f}",
              flush=True)
    worst = max(rows, key=lambda r: r["epsilon_replace_one_pld"])
    over = [r["client"] for r in rows if r["epsilon_replace_one_pld"] > cap]
    ratios = [r["ratio"] for r in rows]
    summary = {"run": args.run, "cap": cap, "clients": len(rows), "largest_replace_one": worst["epsilon_replace_one_pld"],
               "largest_client": worst["client"], "largest_add_remove": max(r["epsilon_add_remove_rdp"] for r in rows),
               "over_cap": over, "ratio_min": min(ratios), "ratio_max": max(ratios)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "clients": rows}, indent=2))
    print(f"largest replace-one epsilon {summary['largest_replace_one']:.2f} ({summary['largest_client']}), "
          f"largest journaled {summary['largest_add_remove']:.2f}; {len(over)} of {len(rows)} clients over the cap "
          f"{cap:g}; ratio {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
