"""One Het-FCIT task's DISCO slot, evaluated after every round.

    python benchmarks/het_slot_rounds.py [--config configs/het-task.toml] [--task figure_mcq]
        [--beta 1.0] [--seed 0] [--set KEY=VALUE ...] [--compare KEY=VALUE[,KEY=VALUE] ...]
        [--out benchmarks/results/het_slot_rounds/<task>-b<beta>-s<seed>.json]

In Het-FCIT one group of clients learns a task in a stage, and a round draws one client per group:
each round of that task is a single client's update (5 local epochs), and tasks return in later
stages. This script runs the real ``Coordinator``, ``Worker`` s, learners, plaintext aggregator and
``DKOOrganizer`` over the stream of ``--config`` cut down to the stages and groups that learn
``--task`` (same clients, same data splits, same local training; in a capability stream a client
keeps only its samples of ``--task``), and scores the task after every
applied round with SSA over the organizer's slots. Each ``--compare`` runs the same stream again
with those config keys changed. It prints, per variant, the score after each round and each stage,
the largest drop between two consecutive rounds, and the lowest score after the task's first
stage. Results go to ``--out`` (JSON) and a plot next to it (PNG).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from secure_fcit.config import load_config, parse_sets
from secure_fcit.data.schedule import Scenario, Stage
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.simulate import (
    _evaluator,
    build_organizer,
    build_slots,
    client_id,
    global_state,
    in_memory_federation,
    learners_for,
    scenario_for,
    slot_layout,
    stream_tasks,
)
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.encoder import load_encoder
from secure_fcit.protocols import Coordinator, run_federation


def task_stream(scenario: Scenario, task: str) -> tuple[Scenario, list[int]]:
    """``scenario`` cut to the stages that learn ``task`` and, in each, to the groups learning it;
    also the original index of every kept stage."""
    stages, original = [], []
    for stage in scenario.stages:
        keep = [p for p, tasks in enumerate(stage.group_tasks) if task in tasks]
        if not keep:
            continue
        groups = tuple(stage.groups[p] for p in keep)
        members = {c for g in groups for c in g}
        data = {c: tuple(part for part in parts if part[0] == task)
                for c, parts in stage.client_data.items() if c in members}
        stages.append(Stage(index=len(stages), tasks=(task,), eval_tasks=(task,),
                            client_data={c: parts for c, parts in data.items() if parts},
                            groups=groups, group_tasks=tuple((task,) for _ in keep)))
        original.append(stage.index)
    if not stages:
        raise ConfigError(f"no stage of the {scenario.setting}-{scenario.kind} stream learns {task!r}")
    return replace(scenario, stages=tuple(stages)), original


def run_variant(label: str, cfg, ws, slots, layout, encoder, stream: Scenario, original: list[int], task: str,
                progress: bool) -> dict:
    """Run the cut-down stream under ``cfg``; the task's score after every applied round."""
    organizer = build_organizer(cfg, encoder.dim, slots, layout)
    learners = learners_for(cfg, ws, stream, slots, encoder)
    by_id = {client_id(c): learner for c, learner in learners.items()}
    coordinator, workers, _ = in_memory_federation(cfg, f"het-slot-rounds-{task}", stream, organizer, learners)
    evaluate = _evaluator(cfg, ws, slots, encoder)
    rounds: list[dict] = []
    bar = tqdm(total=len(stream.stages) * cfg.fcit.rounds_per_stage, desc=label, unit="round",
               disable=not progress)

    def on_boundary(coord: Coordinator) -> None:
        applied = [e for e in coord.events if e["event"] == "applied"]
        if len(applied) == len(rounds):
            return
        event = applied[-1]
        state = global_state(organizer, layout, slots.slot_size)
        score = evaluate(state, [task])[task]
        starts = [e for e in coord.events if e["event"] == "round-start"]
        cohort = starts[-1]["cohort"]
        samples = sum(by_id[c].num_samples(event["stage"]) for c in cohort)
        rounds.append({"stage": original[event["stage"]], "round": event["round"], "cohort": cohort,
                       "samples": samples, "applied": event["applied"], "score": score,
                       "slots": organizer.n_slots})
        bar.update(1)
        bar.set_postfix(stage=original[event["stage"]] + 1, score=f"{score:.1f}")
        if not progress:
            print(f"  {label}: stage {original[event['stage']] + 1} round {event['round'] + 1}, "
                  f"{samples} samples, {task} {score:.1f}", flush=True)

    t0 = time.perf_counter()
    run_federation(coordinator, workers, on_boundary=on_boundary)
    bar.close()
    return {"rounds": rounds, "seconds": round(time.perf_counter() - t0, 1), **summarize(rounds)}


def summarize(rounds: list[dict]) -> dict:
    scores = np.array([r["score"] for r in rounds])
    stages = list(dict.fromkeys(r["stage"] for r in rounds))
    stage_end = {s: [r["score"] for r in rounds if r["stage"] == s][-1] for s in stages}
    later = [r["score"] for r in rounds if r["stage"] != stages[0]]
    return {
        "stage_end": {str(s): v for s, v in stage_end.items()},
        "largest_round_drop": float(max(0.0, -np.diff(scores).min())) if scores.size > 1 else 0.0,
        "best": float(scores.max()),
        "lowest_after_first_stage": min(later) if later else None,
        "final": float(scores[-1]),
    }


def plot(results: dict, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for label, res in results.items():
        ax.plot(range(1, len(res["rounds"]) + 1), [r["score"] for r in res["rounds"]], marker="o", ms=3, label=label)
    any_rule = next(iter(results.values()))["rounds"]
    for i in range(1, len(any_rule)):
        if any_rule[i]["stage"] != any_rule[i - 1]["stage"]:
            ax.axvline(i + 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("applied round (dashed: a new stage of the stream)")
    ax.set_ylabel(f"{task} score")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(f"{task}: its DISCO slot after every round")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/het-task.toml")
    ap.add_argument("--task", default="figure_mcq")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also run a variant with these keys changed (repeatable)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/het_slot_rounds/...)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    overrides = {**parse_sets(args.set), "fcit.strategy": "disco", "scenario.beta": args.beta, "seed": args.seed}
    base = load_config(args.config, overrides)
    if base.scenario.setting != "het":
        raise ConfigError(f"{args.config} is a {base.scenario.setting} stream; this benchmark is about het streams")
    if base.dp.enabled:
        raise ConfigError("run this benchmark without DP (dp.enabled = false): it measures non-private local training")
    kind = base.scenario.kind
    if args.task not in stream_tasks(base):
        raise ConfigError(f"unknown task {args.task!r} for the {kind} streams; one of {', '.join(stream_tasks(base))}")
    out = Path(args.out or f"benchmarks/results/het_slot_rounds/{args.task}-b{args.beta:g}-s{args.seed}.json")
    ws = prepare_workspace(base, stream_tasks(base), progress=not args.no_progress)
    full = scenario_for(base, ws)
    stream, original = task_stream(full, args.task)
    model, _ = ws.base_model()
    torch.manual_seed(base.seed)
    layout = slot_layout(base, len(full.stages))
    slots = build_slots(model, layout)  # one model for every rule: each run loads its own slot weights
    encoder = load_encoder(base.fcit.encoder, ws.model_dir)
    print(f"{args.task}: stages {[s + 1 for s in original]} of {args.config} (beta {args.beta:g}, seed {args.seed}), "
          f"{[len(s.groups) for s in stream.stages]} client(s) per round")
    variants = {"as configured": base}
    for spec in args.compare:
        variants[spec] = load_config(args.config, {**overrides, **parse_sets(spec.split(","))})
    width = max(len(label) for label in variants)
    results = {}
    for label, cfg in variants.items():
        results[label] = run_variant(label, cfg, ws, slots, layout, encoder, stream, original, args.task,
                                     not args.no_progress)
    print(f"\n{args.task} score after every round (| marks a new stage)")
    for label, res in results.items():
        cells, last = [], None
        for r in res["rounds"]:
            cells.append(("| " if last is not None and r["stage"] != last else "") + f"{r['score']:.0f}")
            last = r["stage"]
        print(f"  {label:{width}s}  " + " ".join(cells))
    ends = next(iter(results.values()))["stage_end"]
    print(f"\n| variant | {' | '.join(f'end of stage {int(s) + 1}' for s in ends)} "
          "| best | largest drop in one round | lowest after the first stage | seconds |")
    print("|---|" + "---:|" * (len(ends) + 4))
    for label, res in results.items():
        cells = " | ".join(f"{v:.1f}" for v in res["stage_end"].values())
        low = res["lowest_after_first_stage"]
        print(f"| {label} | {cells} | {res['best']:.1f} | {res['largest_round_drop']:.1f} "
              f"| {'-' if low is None else f'{low:.1f}'} | {res['seconds']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": args.config, "task": args.task, "beta": args.beta, "seed": args.seed,
              "stages": [s + 1 for s in original], "command": " ".join(sys.argv), "results": results}
    out.write_text(json.dumps(record, indent=1) + "\n")
    plot(results, args.task, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"het_slot_rounds.py: {exc}", file=sys.stderr)
        sys.exit(2)
