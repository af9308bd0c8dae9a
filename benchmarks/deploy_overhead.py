"""Overhead of the deployment: one round over mutual TLS with masking + DP-SGD vs the same round in
the in-process simulation with the plaintext aggregator (goal: <= 1.5x).

    python benchmarks/deploy_overhead.py [--config configs/demo.toml] [--rounds 3] [--clients 5]
        [--out benchmarks/results/deploy_overhead.json]

Both runs train the same stream (the config's first stage, ``--rounds`` rounds, every client in
every round) on the same model and data with DP-SGD. The TLS run is ``python -m secure_fcit.server``
and one ``python -m secure_fcit.client`` process per client on loopback (one torch thread each);
the simulation runs every client in turn in this process (``--sim-threads`` torch threads). A
round is timed from its RoundStart to its applied update; the figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from secure_fcit.config import load_config
from secure_fcit.deploy.roster import enrol, prepare_federation
from secure_fcit.fcit.simulate import run_simulation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--sim-threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="benchmarks/results/deploy_overhead.json")
    args = ap.parse_args()
    sets = {"scenario.n_clients": args.clients, "scenario.clients_per_round": args.clients,
            "scenario.max_stages": 1, "fcit.rounds_per_stage": args.rounds, "dp.enabled": True}
    tls_cfg = load_config(args.config, {**sets, "privacy.aggregation": "masking"})
    sim_cfg = load_config(args.config, {**sets, "privacy.aggregation": "plaintext"})
    set_args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    set_args += ["--set", 'privacy.aggregation="masking"']

    with tempfile.TemporaryDirectory(prefix="secure-fcit-overhead-") as tmp:
        root = Path(tmp)
        prepare_federation(tls_cfg, root / "fed", progress=False)
        clients = [f"client-{i:03d}" for i in range(args.clients)]
        certs = enrol(root / "fed", "secure-fcit-bench", ["127.0.0.1"], clients)
        port = _free_port()
        common = ["--config", args.config, "--port", str(port), *set_args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "secure_fcit.server", *common, "--certs", str(certs["server"]),
                                   "--roster",
                                   str(root / "fed"), "--state", str(root / "server"), "--no-progress"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("wb"))
        procs = [subprocess.Popen([sys.executable, "-m", "secure_fcit.client", *common, "--certs", str(certs[c]),
                                   "--id", c, "--data",
                                   str(root / "fed" / "clients" / c), "--state", str(root / c)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in clients]
        if server.wait(3600) != 0:
            print((root / "server.log").read_text()[-3000:], file=sys.stderr)
            return 1
        for p in procs:
            p.wait(60)
        tls_wall = time.perf_counter() - t0
        tls_rounds = json.loads((root / "server" / "result" / "metrics.json").read_text())["round_seconds"]
        events = [json.loads(line) for line in (root / "server" / "events.jsonl").read_text().splitlines()]

        threads = torch.get_num_threads()
        torch.set_num_threads(args.sim_threads)
        try:
            t0 = time.perf_counter()
            sim = run_simulation(sim_cfg, progress=False, log=lambda m: None, privacy_dir=root / "sim-privacy")
            sim_wall = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)

    tls_med, sim_med = float(np.median(tls_rounds)), float(np.median(sim.round_seconds))
    result = {
        "config": args.config, "clients": args.clients, "rounds": args.rounds,
        "tls_masking_dp": {"round_seconds": [round(s, 2) for s in tls_rounds], "median": round(tls_med, 2),
                           "wall_seconds_incl_startup": round(tls_wall, 1),
                           "aborted": sum(e["event"] == "aborted" for e in events)},
        "in_process_plaintext_dp": {"round_seconds": [round(s, 2) for s in sim.round_seconds],
                                    "median": round(sim_med, 2), "torch_threads": args.sim_threads,
                                    "wall_seconds_incl_startup": round(sim_wall, 1)},
        "ratio_median": round(tls_med / sim_med, 3),
        "goal": "<= 1.5",
        "cpus": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one round, {args.clients} clients, DP-SGD: TLS + masking {tls_med:.2f} s (median of {len(tls_rounds)}) vs "
          f"in-process plaintext {sim_med:.2f} s ({args.sim_threads} threads): {tls_med / sim_med:.2f}x "
          f"(goal <= 1.5x); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
