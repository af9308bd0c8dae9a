"""Benchmark validity figures: zero-shot ≤ 25, multi-task upper bound ≥ 70, sequential FT forgetting ≥ 20.

    python benchmarks/validity.py [--config FILE] [--seed N] [--out benchmarks/results/validity.json]
                                  [--only zero_shot|upper_bound|finetune ...]

Prints the three figures as JSON (percentages 0–100) with the wall time of each run on this
machine, and writes the full result (per-task scores, accuracy matrix) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secure_fcit.config import Config, config_from_dict, load_config
from secure_fcit.fcit.validity import PARTS, run_validity, write_outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config (default: built-in defaults)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/validity.json")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                    help="run only these parts; the others are kept from --out (same weights and settings)")
    args = ap.parse_args()
    overrides = {} if args.seed is None else {"seed": args.seed}
    cfg: Config = load_config(args.config, overrides) if args.config else config_from_dict(overrides)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if set(args.only) != set(PARTS) else None
    result = run_validity(cfg, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                          parts=args.only, previous=previous)
    write_outputs(result, out.parent, json_name=out.name)
    keys = ("zero_shot", "upper_bound", "finetune_forgetting", "seconds", "pass")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return 0 if all(result["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
