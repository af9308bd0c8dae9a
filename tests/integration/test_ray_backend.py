"""``simulate --backend ray``: workers in Ray actors on a two-node local cluster, the coordinator in
the driver. The cluster is started here (``ray start --head`` plus a second node joining it) and
torn down after the module.

- A Ray run equals the in-memory run bit for bit (plaintext and masking, micro model).
- An actor killed mid-round (an adversarial subclass of the project's `RayNetwork` kills it right
  after handing it the round) is a dropped client, and the secure sum completes the round.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_fcit.fcit.ray_backend import RayOptions, ray_federation
from secure_fcit.fcit.simulate import run_simulation, scenario_for
from secure_fcit.protocols.messages import RoundStart
from secure_fcit.protocols.ray_transport import RayNetwork
from tests.integration.test_simulate import micro_config

# Ray reads its authentication mode when it is imported: the cluster below uses tokens.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# The cluster's token, fresh per test session (a clean machine has no ~/.ray/auth_token): the driver
# and both node processes read it from the environment.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ray = pytest.importorskip("ray")

RAY = Path(sys.executable).with_name("ray")
STAGES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster():
    """A head node and a second node process joining it, one CPU each. Each ``ray start --block``
    stays in the foreground and takes its node's processes down when it is terminated, so the
    teardown stops this cluster only (another test worker may run its own)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    logs = [open(Path(temp) / f"node{i}.log", "w") for i in range(2)]
    nodes = [subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                               "--include-dashboard=false", *common], env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        _wait_for_nodes(address, 1, nodes, temp)
        nodes.append(subprocess.Popen([str(RAY), "start", f"--address={address}", *common], env=env,
                                      stdout=logs[1], stderr=subprocess.STDOUT))
        _wait_for_nodes(address, 2, nodes, temp)
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        yield address
    finally:
        ray.shutdown()
        for proc in reversed(nodes):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in logs:
            f.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, n: int, nodes, temp: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in nodes):
            break
        status = subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True, text=True,
                                env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=60)
        if status.returncode == 0 and status.stdout.count("node_") >= n:
            return
        time.sleep(1.0)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(Path(temp).glob("node*.log")))
    pytest.fail(f"the Ray cluster at {address} did not reach {n} node(s):\n{logs}")


def _config(micro_model_dir, cache, aggregation, **scenario):
    cfg = micro_config(micro_model_dir, cache, "disco", aggregation=aggregation)
    return replace(cfg, scenario=replace(cfg.scenario, max_stages=STAGES, **scenario))


@pytest.mark.parametrize("aggregation", ["plaintext", "masking"])
def test_a_ray_run_equals_the_in_memory_run_bit_for_bit(aggregation, cluster, micro_model_dir, tmp_path):
    torch.set_num_threads(1)  # the actors run one thread each: the same float reduction order
    cfg = _config(micro_model_dir, tmp_path / "cache", aggregation)
    memory = run_simulation(cfg, progress=False, log=lambda m: None)
    lines: list[str] = []
    on_ray = run_simulation(cfg, progress=False, log=lines.append, backend="ray", ray_options=RayOptions(actors=2))
    assert any("Ray backend: 4 clients in 2 actors" in line for line in lines), lines
    assert on_ray.events["applied"] == memory.events["applied"] == STAGES * cfg.fcit.rounds_per_stage
    assert "aborted" not in on_ray.events
    assert on_ray.opened_per_stage == memory.opened_per_stage
    assert np.array_equal(on_ray.state["tokens"], memory.state["tokens"])
    assert on_ray.state["slots"].dtype == memory.state["slots"].dtype
    assert np.array_equal(on_ray.state["slots"], memory.state["slots"])  # bit for bit
    assert on_ray.accuracy_matrix == memory.accuracy_matrix


class KillingNetwork(RayNetwork):
    """The attack on liveness: the actor of the first cohort member the round ``at`` goes to is
    killed just after the coordinator hands it the round, while it trains."""

    def __init__(self, coordinator, hosts, at: tuple[int, int]) -> None:
        super().__init__(coordinator, hosts)
        self.at, self.victim = at, None

    def _submit(self, host, recipient, message, data):
        ref = super()._submit(host, recipient, message, data)
        if self.victim is None and isinstance(message, RoundStart) and (message.stage, message.round) == self.at:
            self.victim = recipient
            ray.kill(host, no_restart=True)
        return ref


def test_an_actor_killed_mid_round_is_a_dropped_client_and_the_round_completes(cluster, micro_model_dir, tmp_path):
    from secure_fcit.fcit.simulate import build_organizer, build_slots, slot_layout, stream_tasks
    from secure_fcit.fcit.workspace import prepare_workspace
    from secure_fcit.model.encoder import load_encoder

    # 5 clients, 4 per round: masking's threshold (3 of 4) survives one dropout. One actor per
    # client, so the kill takes out exactly one cohort member.
    cfg = _config(micro_model_dir, tmp_path / "cache", "masking", n_clients=5, clients_per_round=4)
    ws = prepare_workspace(cfg, stream_tasks(cfg), progress=False)
    scenario = scenario_for(cfg, ws)
    model, _ = ws.base_model()
    layout = slot_layout(cfg, len(scenario.stages))
    slots = build_slots(model, layout)
    organizer = build_organizer(cfg, load_encoder(cfg.fcit.encoder, ws.model_dir).dim, slots, layout)
    options = RayOptions(actors=5, resources={"num_cpus": 0.2})  # 5 actors on one 1-CPU node
    coordinator, network, _, hosts = ray_federation(cfg, "ray-kill", scenario, organizer, options)
    at = (STAGES - 1, 0)  # the last round: later cohorts would draw the dead client again
    attack = KillingNetwork(coordinator, network.hosts, at)
    try:
        history = attack.run()
    finally:
        for host in hosts:
            ray.kill(host)
    assert attack.victim is not None, "the attack never fired"
    assert coordinator.done
    victim_host = network.hosts[attack.victim]
    assert attack.dead == {c for c, h in network.hosts.items() if h is victim_host} == {attack.victim}
    applied = [e for e in history.events if e["event"] == "applied"]
    assert [(e["stage"], e["round"]) for e in applied] == [(s, r) for s in range(STAGES)
                                                            for r in range(cfg.fcit.rounds_per_stage)]
    last = applied[-1]
    assert attack.victim not in last["contributors"] and len(last["contributors"]) == 3, last
    drops = [e for e in history.events if e["event"] == "drop" and e["peer"] == attack.victim]
    assert drops and drops[0]["reason"] == "connection lost" and drops[0]["in_phase"]
    assert "aborted" not in {e["event"] for e in history.events}


def test_simulate_on_ray_from_the_command_line(cluster, micro_model_dir, tmp_path, capsys):
    from secure_fcit.cli import main
    from tests.micro import write_micro_toml

    toml = write_micro_toml(tmp_path / "micro.toml", micro_model_dir, tmp_path / "cache")
    out = tmp_path / "run"
    rc = main(["simulate", "--config", str(toml), "--backend", "ray", "--ray-address", cluster, "--actors", "2",
               "--client-resources", "num_cpus=0.5", "--set", "scenario.max_stages=2", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    assert "Ray backend: 4 clients in 2 actors (num_cpus=0.5 each" in captured.err
    assert (out / "metrics.json").is_file() and (out / "state" / "slots.safetensors").is_file()


def test_ckks_on_ray_without_a_key_folder_is_refused(cluster, micro_model_dir, tmp_path):
    from secure_fcit.errors import ConfigError

    cfg = _config(micro_model_dir, tmp_path / "cache", "ckks")
    with pytest.raises(ConfigError, match="privacy.ckks_keys"):
        run_simulation(cfg, progress=False, log=lambda m: None, backend="ray", ray_options=RayOptions(actors=2))


def test_dp_on_ray_journals_every_clients_spend_and_the_audit_verifies_it(cluster, micro_model_dir, tmp_path):
    # Distributed DP: each actor draws its clients' noise shares and writes their journals (one
    # process per share of the clients, one roster under a lock); the driver's audit must find and
    # verify every journal, and no release may go uncharged. (Local DP journals through the same
    # ledger code.)
    mode = "distributed"
    from secure_fcit.dp.journal import read_journal
    from secure_fcit.dp.report import audit
    from tests.integration.test_dp_federation import dp_config

    extra = {"mode": "distributed", "server_lr": 0.5} if mode == "distributed" else {}
    cfg = dp_config(micro_model_dir, tmp_path / "cache", "disco", kind="task", **extra)
    cfg = replace(cfg, scenario=replace(cfg.scenario, max_stages=STAGES))
    privacy = tmp_path / "run" / "privacy"
    result = run_simulation(cfg, progress=False, log=lambda m: None, privacy_dir=privacy, backend="ray",
                            ray_options=RayOptions(actors=2))
    # With 2-3 samples per client, the noisy tokens can leave a stage without a slot (no round):
    # token-phase DP is fresh noise in every run, so only "at least one round" is certain.
    assert result.dp and result.events["applied"] >= 1
    kind = "dp-sgd" if mode == "local" else "skellam"
    charged = sum(1 for j in privacy.glob("*/journal.jsonl") for e in read_journal(j) if e["kind"] == kind)
    assert charged == cfg.scenario.clients_per_round * result.events["applied"]
    summary = audit(tmp_path / "run", progress=False)["summary"]
    assert summary["verified"] == summary["clients"] == cfg.scenario.n_clients
    assert summary["mismatches"] == 0 and not summary["over_budget"]
