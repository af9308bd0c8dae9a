"""``python -m secure_fcit demo``: a real federation on loopback, from one command.

It prepares a federation folder under ``--out`` (roster, each client's data, a fresh CA with server
and client certificates), starts ``python -m secure_fcit.server`` and one ``python -m
secure_fcit.client`` process per client, all over mutual TLS 1.3 with DP-SGD and the configured
secure aggregation, streams the server's phase log, then prints the accuracy table and writes the
privacy audit report of the clients' spend journals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

__all__ = ["run_demo"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_demo(config_path: str | Path, config: Config, out: Path, *, progress: bool = True,
             sets: list[str] | None = None, timeout: float = 3600.0) -> int:
    from ..dp.report import audit, prv_text, write_report
    from .roster import enrol, prepare_federation

    if not config.dp.enabled:
        raise ConfigError("the demo runs with DP-SGD: set dp.enabled = true in its config")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; the demo writes a fresh federation folder")
    t0 = time.perf_counter()
    fed = out / "federation"
    print(f"preparing {fed}: roster, client data, certificates (the shipped embedded model is copied to the cache once)",
          flush=True)
    roster, _ = prepare_federation(config, fed, progress=progress)
    certs = enrol(fed, "secure-fcit-demo", [config.deploy.host], list(roster.clients))
    port = _free_port(config.deploy.host)
    common = ["--config", str(config_path), "--port", str(port),
              *(arg for item in sets or () for arg in ("--set", item))]
    logs = out / "logs"
    logs.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen(
        [sys.executable, "-m", "secure_fcit.server", *common, "--certs", str(certs["server"]), "--roster", str(fed),
         "--state", str(out / "server"),
         "--eval", *([] if progress else ["--no-progress"])], env=env)
    clients = []
    for client in roster.clients:
        log = (logs / f"{client}.log").open("wb")
        clients.append(subprocess.Popen(
            [sys.executable, "-m", "secure_fcit.client", *common, "--certs", str(certs[client]), "--id", client,
             "--data", str(fed / "clients" / client), "--state", str(out / "sites" / client)],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    print(f"started the server and {len(clients)} client processes on {config.deploy.host}:{port} "
          f"(client logs in {logs})", flush=True)
    try:
        code = server.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        server.send_signal(signal.SIGINT)
        code = 1
    finally:
        for proc in clients:
            try:
                proc.wait(30 if server.returncode == 0 else 1)
            except subprocess.TimeoutExpired:
                proc.kill()
        if server.poll() is None:
            server.kill()
    if code != 0:
        print(f"the server exited with {code}; see the log above and {logs}", file=sys.stderr)
        return code or 1
    result = out / "server" / "result"
    md = result / "metrics.md"
    if md.is_file():
        print(md.read_text())
    rep = audit(out / "sites", progress=progress)
    written = write_report(rep, out / "audit")
    r = rep["summary"]
    print(f"privacy audit: {r['verified']}/{r['clients']} journals verified, max epsilon RDP "
          f"{r['max_epsilon_rdp']:.3f} / PRV {prv_text(r['max_epsilon_prv'], '.3f')} (cap {config.dp.epsilon:g}), "
          f"over budget: {len(r['over_budget'])}, mismatches: {r['mismatches']}")
    ok = r["verified"] == r["clients"] and not r["mismatches"] and not r["over_budget"]
    print_summary(config, result / "metrics.json", r, written, time.perf_counter() - t0, "over mutual TLS 1.3")
    return 0 if ok else 1


def print_summary(config: Config, metrics: Path, audit_summary: dict | None, reports, seconds: float,
                  where: str) -> None:
    """The demo's closing five lines: what ran, the accuracy, the epsilon spent, where the reports
    are, and the next command to try."""
    sc, fc, dp = config.scenario, config.fcit, config.dp
    m = json.loads(metrics.read_text()) if metrics.is_file() else {}
    stages = len(m.get("stages", [])) or sc.max_stages
    mode = f"{dp.mode} DP" if dp.enabled else "no DP"
    print("summary", flush=True)
    print(f"  ran       {fc.strategy.upper()} on {stages} stages of the {sc.setting}-{sc.kind} stream, {sc.n_clients} "
          f"clients ({sc.clients_per_round} per round) {where}, {config.privacy.aggregation}, {mode}, "
          f"{seconds:.0f} s")
    if "last" in m:
        print(f"  accuracy  Last {m['last']:.2f}, Avg {m['avg']:.2f} (mean over the seen tasks; the table above)")
    if audit_summary is not None:
        print(f"  privacy   max epsilon {audit_summary['max_epsilon_rdp']:.2f} of the cap {dp.epsilon:g} "
              f"(delta {dp.delta:g} per client), {audit_summary['verified']}/{audit_summary['clients']} "
              "journals verified")
    print("  reports   " + ", ".join(str(p) for p in reports))
    print("  next      python -m secure_fcit simulate --config configs/hom-task.toml --dp   "
          "(50 clients; docs/benchmarks.md for the figures)", flush=True)
