"""`python -m secure_fcit compliance` (issue 22): an honest federation passes; each deliberately
broken one fails the named control with a message that says what to fix; the reports parse.

The federation is the one `deploy prepare` writes (roster, client data, certificates) for the micro
config, with spend journals written by the project's own ledger. The live self-tests run in
``test_the_live_self_tests_pass_on_the_installed_package``; the attack controls run the files of
``tests/compliance/attacks`` (which ``make test`` runs directly).
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from secure_fcit.cli import main
from secure_fcit.compliance import Outcome, Target, load_policy
from secure_fcit.compliance.attacks import run_attack_file
from secure_fcit.compliance.report import DOC_PATH, catalogue_markdown
from secure_fcit.compliance.report import main as doc_main
from secure_fcit.compliance.runner import run_compliance
from secure_fcit.config import DPConfig, load_config
from tests.micro import write_micro_toml

POLICY = "min_cohort = 2  # the micro stream's rounds have 2 clients\n"


@pytest.fixture(scope="module")
def honest(tmp_path_factory, micro_model_dir):
    from secure_fcit.crypto.certs import load_private_key
    from secure_fcit.deploy.roster import enrol, prepare_federation
    from secure_fcit.dp.ledger import PrivacyLedger

    root = tmp_path_factory.mktemp("compliance")
    cache = micro_model_dir.parents[1]
    config_path = write_micro_toml(root / "fed.toml", micro_model_dir, cache,
                                   extra="[dp]\nenabled = true\nepsilon = 8.0\ndelta = 1e-5\nnoise = \"skellam\"\n")
    config = load_config(config_path)
    roster, _ = prepare_federation(config, root / "federation", progress=False)
    enrol(root / "federation", "compliance-test", ["127.0.0.1"], list(roster.clients))
    dp = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, sample_rate=0.4)
    for client in roster.clients:  # each journal signed by the client's certificate key, as a site does
        key = load_private_key(root / "federation" / "clients" / client / "certs" / "clients" / f"{client}.key")
        with PrivacyLedger(root / "run" / "privacy", client, dp, signing_key=key) as led:
            for r in range(2):
                led.charge(led.plan(0, r, 40, 16, 2.0, 6))
    (root / "policy.toml").write_text(POLICY)
    return root


@pytest.fixture
def fed(honest, tmp_path):
    """A fresh copy of the honest federation for one breakage."""
    return Path(shutil.copytree(honest, tmp_path / "copy", symlinks=True))


def _run(root: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    code = main(["compliance", "--config", str(root / "fed.toml"), "--deployment", str(root / "federation"),
                 "--state", str(root / "run"), "--policy", str(root / "policy.toml"), "--out", str(out),
                 "--static-only", "--no-progress", *extra])
    text = capsys.readouterr().out
    return code, {c["id"]: c for c in json.loads((out / "COMPLIANCE.json").read_text())["controls"]}, text


def test_the_honest_federation_passes_every_static_control(honest, tmp_path, capsys):
    code, controls, text = _run(honest, tmp_path, capsys)
    assert code == 0, text
    outcomes = {k: c["outcome"] for k, c in controls.items()}
    assert "fail" not in outcomes.values() and "warn" not in outcomes.values(), outcomes
    for must in ("SA-1", "DP-1", "DP-2", "SA-2", "KEY-1", "KEY-2", "PKI-1", "PKI-2", "AU-1"):
        assert outcomes[must] == "pass", (must, controls[must]["evidence"])
    assert "12 of" not in text and "compliance: " in text


def _plaintext(root):
    text = (root / "fed.toml").read_text().replace("[privacy]\n", "[privacy]\naggregation = \"plaintext\"\n")
    (root / "fed.toml").write_text(text)


def _loose_key(root):
    (root / "federation" / "clients" / "client-001" / "certs" / "clients" / "client-001.key").chmod(0o644)


def _tampered_journal(root):
    journal = root / "run" / "privacy" / "client-000" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["sigma"] *= 3  # claim more noise than was added: less spend
    journal.write_text("\n".join([*lines[:-1], json.dumps(entry, sort_keys=True, separators=(",", ":"))]) + "\n")


def _client_key_at_server(root):
    shutil.copy(root / "federation" / "pki" / "clients" / "client-002.key",
                root / "federation" / "server-certs" / "clients" / "client-002.key")


def _epsilon_above_policy(root):
    text = (root / "fed.toml").read_text().replace("epsilon = 8.0", "epsilon = 16.0")
    (root / "fed.toml").write_text(text)


def _expired_policy_horizon(root):
    (root / "policy.toml").write_text(POLICY + "min_certificate_days = 5000\n")  # ours run 825 days


@pytest.mark.parametrize("breakage, control, fix", [
    (_plaintext, "SA-1", 'set privacy.aggregation = "masking"'),
    (_loose_key, "KEY-1", "chmod 600"),
    (_tampered_journal, "AU-1", "a broken chain or signature means a journal was edited"),
    (_client_key_at_server, "KEY-2", "client-002.key"),
    (_epsilon_above_policy, "DP-2", "lower dp.epsilon from 16 to at most 8"),
    (_expired_policy_horizon, "PKI-1", "reissue the certificates"),
], ids=["plaintext", "key-0644", "tampered-journal", "client-key-at-server", "epsilon-above-policy",
        "certificates-expire-within-policy"])
def test_a_broken_federation_fails_the_named_control_and_says_what_to_fix(fed, tmp_path, capsys, breakage,
                                                                           control, fix):
    breakage(fed)
    code, controls, text = _run(fed, tmp_path, capsys)
    assert code == 1
    assert controls[control]["outcome"] == "fail", controls[control]
    assert fix in controls[control]["fix"], controls[control]["fix"]
    assert f"FAIL {control}" in text and fix in text
    others = [k for k, c in controls.items() if c["outcome"] == "fail" and k != control]
    assert not others, others  # each breakage is pinned on its own control


def test_the_junit_xml_parses_and_counts_the_failures(fed, tmp_path, capsys):
    _plaintext(fed)
    _loose_key(fed)
    _run(fed, tmp_path, capsys)
    root = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("tests")) == len(cases) and int(suite.get("failures")) == len(failures) == 2
    assert {c.get("name").split()[0] for c in failures} == {"SA-1", "KEY-1"}
    html = (tmp_path / "report" / "COMPLIANCE.html").read_text()
    assert html.startswith("<!doctype html>") and "http" not in html.split("<body>")[0]  # offline: nothing fetched
    assert "data:image/png;base64," in html  # the plot is inline: the file reads offline


def test_an_unknown_policy_key_is_refused_with_its_name(tmp_path):
    from secure_fcit.errors import ConfigError

    (tmp_path / "p.toml").write_text("max_epsilon = 4.0\nmax_epsilom = 2.0\n")
    with pytest.raises(ConfigError, match="unknown key.*max_epsilom"):
        load_policy(tmp_path / "p.toml")
    assert load_policy(Path(__file__).resolve().parents[2] / "configs" / "policies" / "compliance.toml") == load_policy(None)


def test_the_live_self_tests_pass_on_the_installed_package(honest):
    config = load_config(honest / "fed.toml")
    results = run_compliance(Target(config, honest / "fed.toml"), kinds=["live"], progress=False)
    assert [r.control.id for r in results] == ["LV-1", "LV-2", "LV-3", "LV-4", "LV-5", "LV-6", "LV-7"]
    assert all(r.outcome is Outcome.PASS for r in results), [(r.control.id, r.finding) for r in results]


def test_an_attack_file_that_fails_is_a_failed_row(tmp_path):
    """The attack control's reader cannot pass a failing attack: a file with one defeated and one
    successful attack gives one passed and one failed row, with the adversary from the docstring."""
    folder = tmp_path / "tests" / "compliance" / "attacks"
    folder.mkdir(parents=True)
    (folder / "test_fake.py").write_text(
        'def test_defeated():\n    """Malicious coordinator: refused. More text."""\n\n\n'
        'def test_succeeds():\n    """Malicious member: it works."""\n    assert 1 == 2, "recovered the input"\n')
    rows = {r["name"]: r for r in run_attack_file(folder / "test_fake.py", timeout=120)}
    assert rows["test_defeated"]["outcome"] == "passed" and rows["test_defeated"]["adversary"] == "Malicious coordinator: refused."
    assert rows["test_succeeds"]["outcome"] == "failed" and "recovered the input" in rows["test_succeeds"]["message"]


def test_the_committed_control_catalogue_matches_the_code():
    assert DOC_PATH.read_text() == catalogue_markdown(), "regenerate: python -m secure_fcit.compliance.report"
    assert doc_main(["--check"]) == 0


def test_audit_empirical_finds_the_leak_without_dp_and_exits_by_the_bound(micro_model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    """`audit --empirical`: the positive control (no DP) finds a lower bound of several units, so
    the audit can see leakage; at epsilon 8 the bound stays below the accounted epsilon (exit 0)."""
    monkeypatch.setenv("SECURE_FCIT_CACHE", str(micro_model_dir.parents[1]))
    assert main(["audit", "--empirical", "--epsilon", "inf", "--out", str(tmp_path / "inf"), "--no-progress"]) == 0
    leak = json.loads((tmp_path / "inf" / "empirical.json").read_text())
    assert leak["epsilon_lower"] > 3 and leak["epsilon_accounted"] == "inf"
    assert main(["audit", "--empirical", "--epsilon", "8", "--out", str(tmp_path / "e8"), "--no-progress"]) == 0
    dp = json.loads((tmp_path / "e8" / "empirical.json").read_text())
    assert dp["epsilon_lower"] <= dp["epsilon_accounted"] and 7 < dp["epsilon_accounted"] <= 8
    assert "lower bound" in capsys.readouterr().out


def test_a_ckks_public_context_holding_the_secret_key_fails_key3(honest, tmp_path):
    """KEY-3 on a CKKS federation: the public context of `keys init` passes; the secret context put in
    its place (the coordinator could then decrypt every upload) fails with what to fix."""
    from secure_fcit.config import parse_sets
    from secure_fcit.protocols.ckks import PUBLIC_FILE, SECRET_FILE, write_keys

    write_keys(tmp_path / "keys")
    sets = parse_sets(['privacy.aggregation="ckks"', f'privacy.ckks_keys="{tmp_path / "keys"}"',
                       "privacy.ckks_k_min=2"])
    config = load_config(honest / "fed.toml", sets)
    policy = load_policy(honest / "policy.toml")

    def key3():
        return run_compliance(Target(config, honest / "fed.toml", policy=policy), only=["KEY-3"], progress=False)[0]

    assert key3().outcome is Outcome.PASS
    shutil.copy(tmp_path / "keys" / SECRET_FILE, tmp_path / "keys" / PUBLIC_FILE)
    r = key3()
    assert r.outcome is Outcome.FAIL and "replace" in r.finding.fix and "secret" in r.finding.fix
