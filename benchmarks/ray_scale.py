"""The Ray backend's speed and scale: the in-memory run against Ray actors, and a 1,000-client stage.

    python benchmarks/ray_scale.py [--part stage scale throughput] [--ray-address auto]
        [--out benchmarks/results/ray_scale.json] [--tiny]

Parts:

- ``stage``: one Hom-task stage (``configs/hom-task.toml``, the shipped embedded model: 50 clients,
  5 per round, 8 rounds, masking), in memory (one process) and on Ray with 2 actors of one CPU
  each. Both include the evaluation after the stage, which runs in the driver. Prints and writes
  the wall times and their ratio, measured in one run on the same machine.
- ``scale``: one stage of 1,000 clients on the micro model (the embedded architecture at its
  smallest), 100 clients per round, masking over a k-regular neighbour graph whose degree is the
  smallest even k that `privacy.colluders` = 3 cannot beat (threat_model.md §2.2: k + 1 > 3c at
  threshold 2/3, checked with ``MaskingParams.unsafe``; k = 10). Time per round and the peak
  resident memory of the driver and of every actor.
- ``throughput``: rounds per minute with 1, 2, 4, 8 and 16 actors (GPU fractions 1/n when the
  cluster has a GPU). Needs that many CPUs; parts that do not fit are reported as not measured.

``--tiny`` runs every part on the micro model in seconds (the smoke test of ``benchmarks/``).
Results name the base model's weights digest and the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when Ray is imported

from secure_fcit.config import load_config  # noqa: E402
from secure_fcit.errors import ConfigError  # noqa: E402
from secure_fcit.protocols.secagg import MaskingParams  # noqa: E402

PARTS = ("stage", "scale", "throughput")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def safe_degree(colluders: int, threshold: float = 2 / 3) -> int:
    """The smallest even degree k that the ``colluders`` cannot beat with a split view and that
    still tolerates dropouts: threat_model.md §2.2's k + 1 > 3c at threshold 2/3 (a smaller
    neighbourhood passes ``MaskingParams.unsafe`` only with t = |N|, where one dropout aborts)."""
    params = MaskingParams(threshold=threshold, colluders=colluders)
    for k in range(2, 1000, 2):
        if k + 1 > 3 * colluders and params.unsafe(k + 1) is None:
            return k
    raise ConfigError(f"no degree below 1000 is safe against {colluders} colluders")


def micro_config(cache: Path, n_clients: int, per_round: int, rounds: int, degree: int, colluders: int):
    from secure_fcit.compliance.micro import micro_model
    from secure_fcit.config import config_from_dict

    model = micro_model(cache)
    return config_from_dict({
        "model": {"path": str(model), "cache_dir": str(cache)},
        "data": {"n_train": max(2 * n_clients, 20), "n_test": 4, "image_size": 32},
        "eval": {"batch_size": 16, "max_new_tokens": 4},
        "scenario": {"setting": "hom", "kind": "task", "n_clients": n_clients, "clients_per_round": per_round,
                     "beta": 1.0, "max_stages": 1},
        "stream": {"stages": ["classification"]},
        "fcit": {"rounds_per_stage": rounds, "local_epochs": 1.0, "local_batch_size": 8, "lr": 1e-2,
                 "slot_rank": 2, "slot_alpha": 4.0, "tau": 0.5, "n_buckets": 16, "k_min": 2,
                 "min_open_samples": 1},
        # bound: a token phase sums every client (1,000 values must fit 32 bits with >= 8 fractional bits)
        "privacy": {"aggregation": "masking", "degree": degree, "colluders": colluders, "bound": 1024.0,
                    "min_cohort": min(5, per_round)},
    })


def run_stage(cfg, backend: str, actors: int | None, address: str | None) -> dict:
    from secure_fcit.fcit.ray_backend import RayOptions
    from secure_fcit.fcit.simulate import run_simulation

    options = RayOptions(address=address, actors=actors) if backend == "ray" else None
    t0 = time.perf_counter()
    result = run_simulation(cfg, progress=True, log=lambda m: print(m, file=sys.stderr), backend=backend,
                            ray_options=options)
    wall = time.perf_counter() - t0
    return {"backend": backend, "actors": actors, "wall_s": round(wall, 1),
            "rounds_s": round(float(sum(result.round_seconds)), 1),
            "mean_round_s": round(float(np.mean(result.round_seconds)), 2), "last": round(result.summary["last"], 2),
            "applied": result.events.get("applied", 0), "model_sha256": result.model_sha256,
            "slots": result.state["slots"]}


def part_stage(args) -> dict:
    """One Hom-task stage, in memory and on Ray with 2 actors (2 cores)."""
    import torch

    if args.tiny:
        cfg = micro_config(args.cache, 8, 4, 2, 0, 1)
    else:
        cfg = load_config(ROOT / "configs/hom-task.toml")
        cfg = replace(cfg, scenario=replace(cfg.scenario, max_stages=1),
                      privacy=replace(cfg.privacy, aggregation="masking"))
    torch.set_num_threads(1)  # each actor runs one thread: the same arithmetic on both sides
    memory = run_stage(cfg, "memory", None, None)
    on_ray = run_stage(cfg, "ray", 2, args.ray_address)
    same = bool(np.array_equal(memory.pop("slots"), on_ray.pop("slots")))
    return {"config": "micro (tiny)" if args.tiny else "configs/hom-task.toml, stage 1, masking",
            "memory": memory, "ray": on_ray, "ratio_memory_over_ray": round(memory["wall_s"] / on_ray["wall_s"], 3),
            "rounds_ratio_memory_over_ray": round(memory["rounds_s"] / on_ray["rounds_s"], 3),
            "same_slots_bit_for_bit": same}


def part_scale(args) -> dict:
    """1,000 clients, 100 per round, masking over a k-regular graph: time per round, peak memory."""
    import ray

    from secure_fcit.fcit.ray_backend import RayOptions, ray_federation
    from secure_fcit.fcit.simulate import (
        build_organizer,
        build_slots,
        scenario_for,
        slot_layout,
        stream_tasks,
    )
    from secure_fcit.fcit.workspace import prepare_workspace
    from secure_fcit.model.encoder import load_encoder

    n_clients, per_round, rounds = (40, 10, 2) if args.tiny else (1000, 100, args.rounds)
    colluders = 3
    degree = safe_degree(colluders)
    cfg = micro_config(args.cache, n_clients, per_round, rounds, degree, colluders)
    t0 = time.perf_counter()
    ws = prepare_workspace(cfg, stream_tasks(cfg), progress=False)
    scenario = scenario_for(cfg, ws)
    model, _ = ws.base_model()
    layout = slot_layout(cfg, 1)
    slots = build_slots(model, layout)
    organizer = build_organizer(cfg, load_encoder(cfg.fcit.encoder, ws.model_dir).dim, slots, layout)
    coordinator, network, description, hosts = ray_federation(
        cfg, "ray-scale", scenario, organizer, RayOptions(address=args.ray_address, actors=args.actors))
    setup = time.perf_counter() - t0
    print(description, file=sys.stderr)
    marks: list[tuple[str, float]] = []
    clock = {"t": time.perf_counter()}

    def on_boundary(coord) -> None:
        now = time.perf_counter()
        marks.append((f"{coord.state}@{coord.position}", now - clock["t"]))
        print(f"  {coord.state} {coord.position}: {now - clock['t']:.1f} s", file=sys.stderr)
        clock["t"] = now

    try:
        history = network.run(on_boundary=on_boundary)
        actor_rss = ray.get([h.peak_rss_mb.remote() for h in hosts])
    finally:
        for h in hosts:
            ray.kill(h)
    applied = [e for e in history.events if e["event"] == "applied"]
    phases = [s for _, s in marks[1:]]  # the first mark is the start
    return {
        "clients": n_clients, "clients_per_round": per_round, "rounds": rounds, "degree": degree,
        "colluders": colluders, "threshold": "2/3", "actors": len(hosts), "setup_s": round(setup, 1),
        "token_phase_s": round(phases[0], 2) if phases else None,
        "round_s": [round(s, 2) for s in phases[1:1 + rounds]],
        "mean_round_s": round(float(np.mean(phases[1:1 + rounds])), 2) if len(phases) > 1 else None,
        "applied": len(applied), "contributors_per_round": [len(e["contributors"]) for e in applied],
        "messages": history.messages, "bytes_up": history.bytes_up, "bytes_down": history.bytes_down,
        "peak_rss_mb": {"driver": round(rss_mb(), 1), "actors": [round(r, 1) for r in actor_rss]},
        "model": "micro", "description": description,
    }


def part_throughput(args) -> dict:
    """Rounds per minute against the pool size; GPU fractions 1/n where the cluster has a GPU."""
    import ray

    from secure_fcit.fcit.ray_backend import RayOptions
    from secure_fcit.fcit.simulate import run_simulation

    cpus, gpus = ray.cluster_resources().get("CPU", 0.0), ray.cluster_resources().get("GPU", 0.0)
    if args.tiny:
        cfg = micro_config(args.cache, 32, 16, 1, 0, 1)
    else:
        base = load_config(ROOT / "configs/hom-task.toml")
        cfg = replace(base, scenario=replace(base.scenario, max_stages=1, clients_per_round=16),
                      fcit=replace(base.fcit, rounds_per_stage=4), privacy=replace(base.privacy, aggregation="masking"))
    rows = []
    for n in (1, 2, 4, 8, 16):
        if n > cpus:
            rows.append({"actors": n, "measured": False, "why": f"the cluster has {cpus:g} CPUs"})
            continue
        resources = {"num_cpus": 1.0} | ({"num_gpus": round(gpus / n, 4)} if gpus else {})
        t0 = time.perf_counter()
        result = run_simulation(cfg, progress=False, log=lambda m: None, backend="ray",
                                ray_options=RayOptions(address=args.ray_address, actors=n, resources=resources))
        rounds = len(result.round_seconds)
        rows.append({"actors": n, "measured": True, "resources": resources, "wall_s": round(time.perf_counter() - t0, 1),
                     "rounds_per_min": round(60 * rounds / float(sum(result.round_seconds)), 2)})
        print(rows[-1], file=sys.stderr)
    return {"cpus": cpus, "gpus": gpus, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", choices=PARTS, default=["stage", "scale"])
    ap.add_argument("--ray-address", help="an existing cluster ('auto'); default: a local Ray instance")
    ap.add_argument("--actors", type=int, default=2, help="actors of the scale part (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the 1,000-client stage (default 3)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/secure-fcit/benchmark/ray-scale",
                    help="micro model and data cache")
    ap.add_argument("--tiny", action="store_true", help="every part on the micro model in seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ray_scale.json")
    args = ap.parse_args(argv)
    import ray

    ray.init(address=args.ray_address, log_to_driver=False, logging_level="WARNING", include_dashboard=False)
    out = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                      "ray": ray.__version__, "load_before": os.getloadavg()}
    for part in args.part:
        print(f"== {part}", file=sys.stderr)
        result = {"stage": part_stage, "scale": part_scale, "throughput": part_throughput}[part](args)
        out[part] = result
        print(json.dumps(result, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    ray.shutdown()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
