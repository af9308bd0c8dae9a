"""The FCIT results table: strategies x settings x beta x seeds, one in-process stream each.

    python benchmarks/fcit_table.py [--settings hom-task het-task hom-cap het-cap] [--betas 0.5 1.0 5.0]
        [--seeds 0] [--strategies disco finetune fedprox ewc olora] [--rounds N] [--out benchmarks/results/fcit]

Each run is ``python -m secure_fcit simulate --config configs/<setting>.toml --strategy S --beta B
--seed N`` (same code, called in process) and writes ``<out>/<setting>/b<beta>/<strategy>-s<seed>/``.
Runs whose ``metrics.json`` already exists are reused, so an interrupted table resumes. The table
(``<out>/table.md`` and ``table.json``) gives Last / Avg (mean ± std over seeds) and the wall time
per run; the zero-shot and centralized multi-task rows come from ``benchmarks/results/validity.json``
when it exists (same model and data).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from secure_fcit.config import load_config
from secure_fcit.fcit.simulate import run_simulation, write_simulation

SETTINGS = ("hom-task", "het-task", "hom-cap", "het-cap")
STRATEGIES = ("disco", "finetune", "fedprox", "ewc", "olora")


def _run_dir(out: Path, setting: str, beta: float, strategy: str, seed: int) -> Path:
    return out / setting / f"b{beta:g}" / f"{strategy}-s{seed}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--betas", nargs="+", type=float, default=[0.5, 1.0, 5.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--rounds", type=int, help="override fcit.rounds_per_stage")
    ap.add_argument("--configs", default="configs", help="directory of <setting>.toml")
    ap.add_argument("--out", default="benchmarks/results/fcit")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--existing", action="store_true",
                    help="tabulate the runs already under --out and run nothing (missing runs are listed)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for setting in args.settings:
        rounds = {"fcit.rounds_per_stage": args.rounds} if args.rounds else {}
        for beta in args.betas:
            for strategy in args.strategies:
                for seed in args.seeds:
                    run = _run_dir(out, setting, beta, strategy, seed)
                    if args.existing and not (run / "metrics.json").is_file():
                        print(f"not run yet: {run}", file=sys.stderr)
                        continue
                    if not (run / "metrics.json").is_file():
                        cfg = load_config(Path(args.configs) / f"{setting}.toml",
                                          {**rounds, "fcit.strategy": strategy, "scenario.beta": beta, "seed": seed})
                        t0 = time.perf_counter()
                        result = run_simulation(cfg, progress=not args.no_progress,
                                                log=lambda m: print(m, file=sys.stderr))
                        write_simulation(result, cfg, run)
                        print(f"{setting} beta={beta:g} {strategy} seed={seed}: Last {result.summary['last']:.2f} "
                              f"Avg {result.summary['avg']:.2f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                    m = json.loads((run / "metrics.json").read_text())
                    rows.append({"setting": setting, "beta": beta, "strategy": strategy, "seed": seed,
                                 "last": m["last"], "avg": m["avg"], "forgetting": m["forgetting"],
                                 "slots_opened": m["slots_opened"], "seconds": m["seconds"],
                                 # runs from before the field existed all ran on this machine's CPU
                                 "device": m.get("device", "cpu")})
    table = _table(rows)
    (out / "table.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "table.md").write_text(table)
    print(table)
    return 0


def _table(rows: list[dict]) -> str:
    lines = [
        "# FCIT results (percentages 0-100; mean ± std over seeds)",
        "",
        "Regenerate: `python benchmarks/fcit_table.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| setting | beta | method | seeds | Last | Avg | Forgetting | slots | s/run | run on |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    validity = Path("benchmarks/results/validity.json")
    keys = sorted({(r["setting"], r["beta"], r["strategy"]) for r in rows},
                  key=lambda k: (SETTINGS.index(k[0]), k[1], STRATEGIES.index(k[2])))
    for setting, beta, strategy in keys:
        group = [r for r in rows if (r["setting"], r["beta"], r["strategy"]) == (setting, beta, strategy)]

        def stat(key: str, group=group) -> str:
            v = np.array([r[key] for r in group], dtype=float)
            return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")

        lines.append(f"| {setting} | {beta:g} | {strategy} | {len(group)} | {stat('last')} | {stat('avg')} | "
                     f"{stat('forgetting')} | {stat('slots_opened') if strategy == 'disco' else '–'} | {np.mean([r['seconds'] for r in group]):.0f} | "
                     f"{', '.join(sorted({_device(r['device']) for r in group}))} |")
    if validity.is_file():
        v = json.loads(validity.read_text())
        lines += ["", f"Reference points (task-related tasks, `benchmarks/validity.py`): zero-shot {v['zero_shot']:.2f}, "
                  f"centralized multi-task LoRA (upper bound) {v['upper_bound']:.2f}."]
    return "\n".join(lines) + "\n"


def _device(name: str) -> str:
    """"cpu (1 threads)" and older runs' bare "cpu" are this machine's CPU; else the GPU's name."""
    return "CPU" if name.startswith("cpu") else name


if __name__ == "__main__":
    sys.exit(main())
