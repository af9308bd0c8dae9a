"""The privacy-utility curve of DISCO: Last / Avg at each epsilon, local vs distributed DP, two scales.

    python benchmarks/privacy_utility.py [--scales hom-50 cross-silo] [--epsilons 1 2 4 8 16]
        [--modes local distributed] [--seeds 0] [--max-stages N] [--rounds N] [--out benchmarks/results]

Each cell is one in-process ``simulate`` run (the same code as ``python -m secure_fcit simulate``)
with masking secure aggregation, delta 1e-5 per client (sample-level), per-task accounting:

* ``hom-50``: ``configs/hom-task.toml`` (50 clients, 5 per round, ~20 samples per client and task);
* ``cross-silo``: ``configs/cross-silo-hom-task.toml`` (8 sites x 500 samples per task, all per round);
* ``cross-silo-1k``: ``configs/cross-silo-hom-task-1k.toml`` (the same sites with 1,000 samples each);
* ``dp_mode`` ``local``: DP-SGD on each client with the recipe of ``--local-set`` (the config's
  ``[fcit]`` local training otherwise); ``distributed``: Skellam shares in the masked sum, one noisy
  gradient step per round at the coordinator (the config's ``[dp]`` server step);
* the non-private cell of each scale and seed (``epsilon`` null) trains with the config's local
  recipe and no DP (``--nonprivate-set`` overrides keys in it alone, e.g. its rounds); ``ratio`` =
  last / nonprivate_last. ``--modes`` with no mode runs the non-private cell alone.

``--max-stages N`` shortens the stream to its first N stages; the cells then carry
``stream = "hom-task-first<N>"`` (the full stream: ``"hom-task"``); ``--variant NAME`` appends
``+NAME`` for a recipe other than the config's, so its cells never mix with the config's (its
ratio is against the config's non-private cell). A cell whose ``cell.json`` exists under
``<out>/privacy_utility/`` is reused, so an interrupted curve resumes. Output:
``<out>/privacy_utility.json`` (a list of cells: scale, stream, dp_mode, epsilon, seed, last, avg,
nonprivate_last, ratio, seconds, device, config overrides) and ``<out>/privacy_utility.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from secure_fcit.config import load_config, parse_sets
from secure_fcit.fcit.simulate import run_simulation, write_simulation

SCALES = {"hom-50": "configs/hom-task.toml", "cross-silo": "configs/cross-silo-hom-task.toml",
          "cross-silo-1k": "configs/cross-silo-hom-task-1k.toml"}


def _cell_dir(out: Path, scale: str, stream: str, mode: str, eps: float | None, seed: int) -> Path:
    return out / "privacy_utility" / scale / stream / (f"{mode}-eps{eps:g}" if eps is not None else "nonprivate") / f"s{seed}"


def _run(config_path: str, overrides: dict, run_dir: Path, progress: bool) -> dict:
    cell = run_dir / "cell.json"
    if cell.exists():
        return json.loads(cell.read_text())
    cfg = load_config(config_path, overrides)
    t0 = time.perf_counter()
    result = run_simulation(cfg, progress=progress, log=lambda m: print(f"  {m}", flush=True),
                            privacy_dir=run_dir / "privacy" if cfg.dp.enabled else None)
    write_simulation(result, cfg, run_dir)
    if result.shortfalls:
        print(f"  shortfalls: {result.shortfalls}", flush=True)
    data = {"last": result.summary["last"], "avg": result.summary["avg"], "seconds": round(time.perf_counter() - t0, 1),
            "device": result.device, "shortfalls": result.shortfalls, "overrides": overrides}
    run_dir.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(data, indent=2))
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1, 2, 4, 8, 16])
    ap.add_argument("--modes", nargs="*", default=["local", "distributed"], choices=["local", "distributed"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max-stages", type=int, default=0, help="shorten the stream to its first N stages")
    ap.add_argument("--rounds", type=int, help="override fcit.rounds_per_stage (every cell)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every cell")
    ap.add_argument("--local-set", action="append", metavar="KEY=VALUE", help="override a key in local-DP cells")
    ap.add_argument("--distributed-set", action="append", metavar="KEY=VALUE",
                    help="override a key in distributed-DP cells")
    ap.add_argument("--nonprivate-set", action="append", metavar="KEY=VALUE",
                    help="override a key in the non-private cell")
    ap.add_argument("--skip-nonprivate", action="store_true",
                    help="run only the DP cells; the ratio uses a non-private cell already under --out, else null")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--variant", default="",
                    help="name a recipe other than the config's (with --set/--distributed-set): the cells carry "
                         "stream '<stream>+<variant>' and live in their own folders")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    common = {"privacy.aggregation": "masking", **parse_sets(args.set)}
    if args.max_stages:
        common["scenario.max_stages"] = args.max_stages
    if args.rounds:
        common["fcit.rounds_per_stage"] = args.rounds
    stream = base_stream = f"hom-task-first{args.max_stages}" if args.max_stages else "hom-task"
    if args.variant:  # a recipe other than the config's: its own cells, its own curve
        if not args.variant.replace("-", "").replace("_", "").isalnum():
            ap.error(f"--variant must be letters, digits, - or _, got {args.variant!r}")
        stream = f"{stream}+{args.variant}"
    per_mode = {"local": {"dp.mode": "local", **parse_sets(args.local_set)},
                "distributed": {"dp.mode": "distributed", **parse_sets(args.distributed_set)}}
    nonprivate = {"dp.enabled": False, "dp.mode": "local", **parse_sets(args.nonprivate_set)}
    cells = []
    for scale in args.scales:
        for seed in args.seeds:
            base = {**common, "seed": seed}
            # with --skip-nonprivate, a variant's DP cells are measured against the config's own reference
            run_dir = _cell_dir(out, scale, base_stream if args.skip_nonprivate else stream, "none", None, seed)
            if args.skip_nonprivate:
                ref_file = run_dir / "cell.json"
                ref = json.loads(ref_file.read_text()) if ref_file.exists() else {"last": None}
                if ref["last"] is not None:
                    cells.append(_cell(scale, stream, None, None, seed, ref, ref["last"]))
            else:
                print(f"[{scale} {stream} seed {seed}] non-private", flush=True)
                ref = _run(SCALES[scale], {**base, **nonprivate}, run_dir, not args.no_progress)
                cells.append(_cell(scale, stream, None, None, seed, ref, ref["last"]))
            for mode in args.modes:
                for eps in args.epsilons:
                    run_dir = _cell_dir(out, scale, stream, mode, eps, seed)
                    print(f"[{scale} {stream} seed {seed}] {mode} DP, epsilon {eps:g}", flush=True)
                    got = _run(SCALES[scale], {**base, "dp.enabled": True, "dp.epsilon": eps, **per_mode[mode]},
                               run_dir, not args.no_progress)
                    cells.append(_cell(scale, stream, mode, eps, seed, got, ref["last"]))
                    ref_text = "n/a" if ref["last"] is None else f"{ref['last']:.2f}"
                    print(f"  last {got['last']:.2f} (non-private {ref_text}), {got['seconds']:.0f} s", flush=True)
    path = out / "privacy_utility.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keep = [c for c in old if (c["scale"], c.get("stream"), c["dp_mode"], c["epsilon"], c["seed"])
            not in {(c["scale"], c["stream"], c["dp_mode"], c["epsilon"], c["seed"]) for c in cells}]
    merged = keep + cells
    path.write_text(json.dumps(merged, indent=2))
    _plot(merged, out / "privacy_utility.png")
    print(f"wrote {path} ({len(merged)} cells) and {out / 'privacy_utility.png'} on {platform.node()}")
    return 0


def _cell(scale, stream, mode, eps, seed, got, nonprivate_last) -> dict:
    return {"scale": scale, "stream": stream, "dp_mode": mode, "epsilon": eps, "seed": seed,
            "last": got["last"], "avg": got["avg"], "nonprivate_last": nonprivate_last,
            "ratio": None if not nonprivate_last else round(got["last"] / nonprivate_last, 4),
            "seconds": got["seconds"], "device": got["device"], "shortfalls": got.get("shortfalls", []),
            "overrides": got.get("overrides", {})}


def _plot(cells: list[dict], path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c["scale"], c["stream"]) for c in cells})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (scale, stream) in zip(axes[0], groups, strict=True):
        mine = [c for c in cells if c["scale"] == scale and c["stream"] == stream]
        for mode, marker in (("local", "o"), ("distributed", "s")):
            by_eps: dict[float, list[float]] = {}
            for c in mine:
                if c["dp_mode"] == mode:
                    by_eps.setdefault(c["epsilon"], []).append(c["last"])
            if not by_eps:
                continue
            eps = sorted(by_eps)
            # one point per epsilon: the mean over seeds, the seeds' spread as an error bar, each
            # seed as a faint dot, so several seeds at one epsilon do not draw a zig-zag
            means = [float(np.mean(by_eps[e])) for e in eps]
            spread = [float(np.std(by_eps[e])) for e in eps]
            line = ax.errorbar(eps, means, yerr=spread, marker=marker, capsize=3, label=f"{mode} DP")
            for e in eps:
                if len(by_eps[e]) > 1:
                    ax.scatter([e] * len(by_eps[e]), by_eps[e], s=10, alpha=0.4, color=line[0].get_color())
                    ax.annotate(f"{len(by_eps[e])} seeds", (e, max(by_eps[e])), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
        ref = [c["last"] for c in mine if c["dp_mode"] is None]
        if ref:
            ref_mean = sum(ref) / len(ref)
            ax.axhline(ref_mean, color="grey", linestyle="--", label="non-private")
            ax.axhline(0.8 * ref_mean, color="grey", linestyle=":", label="80 % of non-private")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epsilon (delta 1e-5 per client)")
        ax.set_ylabel("DISCO Last")
        ax.set_ylim(0, 100)  # accuracy: the whole scale, so a gap reads as its size
        ax.set_title(f"{scale} ({stream})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
