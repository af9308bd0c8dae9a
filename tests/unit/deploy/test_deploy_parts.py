"""The deployment's building blocks: atomic checkpoints, the roster, the certificate directory,
the control frame and the [deploy] config section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secure_fcit.config import config_from_dict, parse_sets
from secure_fcit.crypto.certs import client_directory, init_federation, issue_client
from secure_fcit.deploy.checkpoint import load_checkpoint, save_checkpoint
from secure_fcit.deploy.common import control_frame, parse_control
from secure_fcit.deploy.roster import Roster, load_roster
from secure_fcit.errors import ConfigError
from secure_fcit.protocols.codec import encode
from secure_fcit.protocols.messages import Refusal
from tests.unit.protocols._support import build_federation, client

KEY = bytes(range(32))  # the checkpoint MAC key (a server makes its own from os.urandom)


def test_a_checkpoint_round_trips_arrays_and_plain_data(tmp_path):
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, "x", None, {"c": np.ones(2, np.float64)}],
            "big": 2**100, "t": (1, 2)}
    save_checkpoint(tmp_path, tree, key=KEY)
    back = load_checkpoint(tmp_path, key=KEY)
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], tree["a"])
    assert back["b"][:3] == [1, "x", None] and np.array_equal(back["b"][3]["c"], np.ones(2))
    assert back["big"] == 2**100 and back["t"] == [1, 2]


def test_only_the_latest_two_checkpoints_are_kept_and_a_tampered_one_is_refused(tmp_path):
    for i in range(4):
        save_checkpoint(tmp_path, {"i": i, "v": np.full(3, i, np.float32)}, key=KEY)
    assert load_checkpoint(tmp_path, key=KEY)["i"] == 3
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.json")) == ["ckpt-000002.json", "ckpt-000003.json"]
    arrays = tmp_path / "ckpt-000003.safetensors"
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 1
    arrays.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="do not match the digest"):
        load_checkpoint(tmp_path, key=KEY)
    assert load_checkpoint(tmp_path / "empty", key=KEY) is None


def test_a_coordinator_resumed_from_a_checkpoint_gives_identical_results(tmp_path):
    members = {client(i): i % 2 for i in range(6)}
    ref = build_federation([members, members], cohort_size=4, rounds=3)
    from secure_fcit.protocols import run_federation

    run_federation(ref.coordinator, ref.workers)
    fed = build_federation([members, members], cohort_size=4, rounds=3)
    run_federation(fed.coordinator, fed.workers, until=lambda c: c.position[:2] == (1, 1) and c.state == "before-round")
    save_checkpoint(tmp_path, {"coordinator": fed.coordinator.snapshot()}, key=KEY)
    again = build_federation([members, members], cohort_size=4, rounds=3)  # a restarted server
    again.coordinator.restore(load_checkpoint(tmp_path, key=KEY)["coordinator"])
    for mine, theirs in zip(again.workers, fed.workers, strict=True):  # the clients kept their state
        mine.restore(theirs.snapshot())
        mine.learner = theirs.learner
    run_federation(again.coordinator, again.workers)
    n = ref.organizer.n_slots
    assert again.organizer.n_slots == n
    assert np.array_equal(again.organizer.global_weights(list(range(n))), ref.organizer.global_weights(list(range(n))))


def _config(**scenario):
    return config_from_dict({"scenario": {"setting": "hom", "kind": "cap", "n_clients": 4, "clients_per_round": 2,
                                          **scenario}, "privacy": {"min_cohort": 2}})


def _roster_json(tmp_path, **changes):
    raw = {"version": 1, "setting": "hom", "kind": "cap", "n_clients": 4, "clients_per_round": 2, "beta": 1.0,
           "seed": 0, "stages": [{"tasks": ["a"], "eval_tasks": ["a"], "members": ["client-000", "client-002"],
                                  "groups": [["client-000", "client-002"]], "group_tasks": [["a"]]}]}
    raw.update(changes)
    (tmp_path / "roster.json").write_text(json.dumps(raw))
    return tmp_path / "roster.json"


def test_the_roster_gives_members_and_cohorts_and_refuses_a_mismatch(tmp_path):
    roster = load_roster(_roster_json(tmp_path), _config())
    assert isinstance(roster, Roster) and roster.clients == ("client-000", "client-001", "client-002", "client-003")
    schedule = roster.schedule()
    assert schedule.members(0) == ("client-000", "client-002")
    assert set(schedule.cohort(0, 0, np.random.default_rng(0))) == {"client-000", "client-002"}
    with pytest.raises(ConfigError, match="the config says"):
        load_roster(_roster_json(tmp_path), _config(n_clients=5))
    bad = _roster_json(tmp_path, stages=[{"tasks": [], "eval_tasks": [], "members": ["mallory"], "groups": [],
                                          "group_tasks": []}])
    with pytest.raises(ConfigError, match="not a client id"):
        load_roster(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_roster(tmp_path / "nowhere.json")


def test_the_identity_directory_takes_only_certificates_of_the_federation_ca(tmp_path):
    init_federation(tmp_path / "a", "fed-a", ["127.0.0.1"])
    init_federation(tmp_path / "b", "fed-b", ["127.0.0.1"])
    issue_client(tmp_path / "a", "client-000")
    issue_client(tmp_path / "b", "client-001")
    keys = client_directory(tmp_path / "a", ["client-000"])
    assert len(keys["client-000"]) == 32
    (tmp_path / "a" / "clients" / "client-001.pem").write_bytes((tmp_path / "b" / "clients" / "client-001.pem").read_bytes())
    with pytest.raises(ConfigError, match="not signed by the federation CA"):
        client_directory(tmp_path / "a", ["client-001"])
    (tmp_path / "a" / "clients" / "client-002.pem").write_bytes((tmp_path / "a" / "clients" / "client-000.pem").read_bytes())
    with pytest.raises(ConfigError, match="names 'client-000'"):
        client_directory(tmp_path / "a", ["client-002"])
    with pytest.raises(ConfigError, match="certs issue --client client-009"):
        client_directory(tmp_path / "a", ["client-009"])


def test_a_control_frame_is_never_a_codec_frame():
    assert parse_control(control_frame({"bye": "finished"})) == {"bye": "finished"}
    message = encode(Refusal(federation_id="f", stage=0, round=0, attempt=0, sender="c", reason="r"))
    assert parse_control(message) is None
    assert parse_control(b"\0\0\0\0not json") == {"bye": "unreadable control frame"}


def test_bad_deploy_settings_are_refused_with_their_name():
    with pytest.raises(ConfigError, match="deploy.port"):
        config_from_dict({"deploy": {"port": 70000}})
    with pytest.raises(ConfigError, match="deploy.phase_timeout"):
        config_from_dict({"deploy": {"phase_timeout": 0.0}})
    with pytest.raises(ConfigError, match="scenario.max_stages"):
        config_from_dict({"scenario": {"max_stages": -1}})
    assert parse_sets(["deploy.port=9000", 'fcit.policy="allow"']) == {"deploy.port": 9000, "fcit.policy": "allow"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["nonsense"])


def test_each_party_gets_only_its_own_private_key_and_a_folder_with_others_is_refused(tmp_path):
    from secure_fcit.deploy.common import CertFolder
    from secure_fcit.deploy.roster import enrol

    folders = enrol(tmp_path, "fed", ["127.0.0.1"], ["client-000", "client-001"], extra=("mallory",))
    server, site = folders["server"], folders["client-000"]
    assert {p.name for p in server.glob("**/*.key")} == {"server.key"}
    assert {p.name for p in site.glob("**/*.key")} == {"client-000.key"}
    assert (site / "clients" / "client-001.pem").is_file() and not (site / "ca.key").exists()
    assert oct((site / "clients" / "client-000.key").stat().st_mode & 0o777) == "0o600"
    cfg = config_from_dict({})
    CertFolder.from_config(cfg, str(server))
    CertFolder.from_config(cfg, str(site), holder="client-000")
    with pytest.raises(ConfigError, match="must not have .*ca.key"):
        CertFolder.from_config(cfg, str(tmp_path / "pki"))  # the operator's folder: every key
    with pytest.raises(ConfigError, match="client-000.key"):
        CertFolder.from_config(cfg, str(site), holder="client-001")


def test_control_au2_passes_intact_checkpoints_and_names_an_edited_one(tmp_path):
    """AU-2 (compliance): an operator's edit of a checkpoint's tree that keeps the old MAC fails."""
    from secure_fcit.compliance.catalogue import Outcome
    from secure_fcit.compliance.policy import Target
    from secure_fcit.compliance.static import checkpoints_verify
    from secure_fcit.config import Config

    folder = tmp_path / "server" / "checkpoints"
    for i in range(2):
        save_checkpoint(folder, {"i": i, "v": np.full(3, i, np.float32)}, key=KEY)
    (tmp_path / "server" / "checkpoint.key").write_bytes(KEY)
    target = Target(config=Config(), state=tmp_path)
    assert checkpoints_verify(target).outcome is Outcome.PASS
    path = folder / "ckpt-000001.json"
    record = json.loads(path.read_text())
    record["tree"]["i"] = 7  # the MAC is left as it was
    path.write_text(json.dumps(record))
    finding = checkpoints_verify(target)
    assert finding.outcome is Outcome.FAIL
    assert any("ckpt-000001.json: MAC fails" in e for e in finding.evidence)
    path.write_text("[1, 2]")  # not a JSON object: named, not a crash
    assert any("ckpt-000001.json" in e for e in checkpoints_verify(target).evidence)
