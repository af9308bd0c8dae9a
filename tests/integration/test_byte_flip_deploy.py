"""Attack 5 (issue 19) against the deployment: a malicious member flips bytes in its sealed shares,
over mutual TLS 1.3 on loopback, with a real ``python -m secure_fcit.server`` and five client
processes (four ``python -m secure_fcit.client``, one ``tests.integration.byte_flip_client``).

The in-memory form of this attack is ``tests/compliance/attacks/test_member_byte_flip.py``; this
file shows the same claim holds for the processes that ship (before the complaint mechanism, a real
server with four honest clients failed every token phase, skipped both stages, trained 0 rounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secure_fcit.config import load_config
from secure_fcit.deploy.roster import enrol, prepare_federation
from tests.integration.test_deploy import STAGES, _free_port, _toml

REPO = Path(__file__).resolve().parents[2]
CLIENTS = [f"client-{i:03d}" for i in range(5)]
ATTACKER = "client-002"
HONEST = [c for c in CLIENTS if c != ATTACKER]
TIMEOUT = 300


def _spawn(root: Path, args: list[str], log: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = (root / log).open("ab")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _read(root: Path, name: str) -> str:
    path = root / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_member_flipping_every_sealed_share_is_dropped_over_tls_and_every_round_completes(
        micro_model_dir, tmp_path):
    """Malicious member (one of five, no colluders), real server over mutual TLS: it flips a byte in
    every sealed share row it sends and re-signs the row. Claim: in every token phase and round the
    coordinator convicts it on a checkable complaint and drops it; every honest client stays in
    every sum; every round of every stage is applied; the server exits 0. Positive control: every
    phase's events name the attacker as convicted for shares that fail under its committed key, so
    the attack ran in every sum (and with the attack unhandled, every phase would abort)."""
    t0 = time.monotonic()
    port = _free_port()
    fed = tmp_path / "fed"
    # Every member is in every sum (5 of 5), so the attacker is in each token phase and round;
    # min_cohort = 4 (each honest client's floor): the sums complete over the four of them.
    config_path = _toml(tmp_path / "federation.toml", micro_model_dir, tmp_path / "cache",
                        fed / "server-certs", port, rounds=1, clients_per_round=5)
    prepare_federation(load_config(config_path), fed, progress=False)
    enrol(fed, "secure-fcit", ["127.0.0.1"], CLIENTS)

    server = _spawn(tmp_path, ["-m", "secure_fcit.server", "--config", str(config_path), "--certs",
                               str(fed / "server-certs"), "--roster", str(fed), "--state",
                               str(tmp_path / "server"), "--no-progress"], "server.log")
    clients: dict[str, subprocess.Popen] = {}
    try:
        for client in CLIENTS:
            entry = "tests.integration.byte_flip_client" if client == ATTACKER else "secure_fcit.client"
            clients[client] = _spawn(tmp_path, [
                "-m", entry, "--config", str(config_path), "--certs", str(fed / "clients" / client / "certs"),
                "--id", client, "--data", str(fed / "clients" / client), "--state", str(tmp_path / client),
            ], f"{client}.log")
        try:
            code = server.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not finish within {TIMEOUT} s:\n{_read(tmp_path, 'server')[-3000:]}")
        assert code == 0, _read(tmp_path, "server")[-3000:]
        for client in HONEST:
            assert clients[client].wait(60) == 0, _read(tmp_path, client)[-2000:]
            assert "the stream is finished" in _read(tmp_path, client)
    finally:
        for proc in [server, *clients.values()]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    events = [json.loads(line) for line in (tmp_path / "server" / "events.jsonl").read_text().splitlines()]
    summary = [(e["event"], e["stage"], e["round"], e.get("reason")) for e in events
               if e["event"] in ("planned", "applied", "aborted", "stage-skipped", "round-skipped")]
    # every token phase planned and every round applied, once, none aborted or skipped
    planned = [e for e in events if e["event"] == "planned"]
    applied = [e for e in events if e["event"] == "applied"]
    assert [(e["stage"], e["round"]) for e in planned] == [(s, -1) for s in range(STAGES)], summary
    assert [(e["stage"], e["round"]) for e in applied] == [(s, 0) for s in range(STAGES)], summary
    assert not [e for e in events if e["event"] in ("aborted", "stage-skipped", "round-skipped")], summary
    for e in planned + applied:
        where = (e["event"], e["stage"], e["round"])
        # the attacker contributed to no sum; every honest client contributed to every one
        assert sorted(e["contributors"]) == HONEST, where
        # convicted on a checkable complaint, and no one else: the positive control
        assert set(e.get("convicted", {})) == {ATTACKER}, where
        assert "fail under the key it committed to" in e["convicted"][ATTACKER], where
    # no honest client was dropped from any phase
    drops = [(e["peer"], e["reason"]) for e in events if e["event"] == "drop" and e.get("in_phase")]
    assert {peer for peer, _ in drops} <= {ATTACKER}, drops
    log = _read(tmp_path, "server")
    assert "listening on 127.0.0.1" in log and "the stream is finished" in log
    print(f"\nbyte flip over TLS: {len(planned)} token phases and {len(applied)} rounds over {HONEST}, "
          f"{ATTACKER} convicted in each; in-phase drops {drops}; {time.monotonic() - t0:.1f} s")
