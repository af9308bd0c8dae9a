"""Forging a client's spend ledger (issue 20, findings 3 and 5).

Adversary: someone with write access to one client's ledger folder (``privacy/<client>/``), but
not to the roster next to it (``privacy/ledger-roster.json``) and without the client's signing
key (the certificate key in a deployment; in-memory only in the simulation). Each test writes a
real journal with the project's own ledger, mounts one forgery of the issue's list on it, and
shows that `python -m secure_fcit audit` exits 1 naming the client; the ledger itself refuses to
open a forged journal. The positive controls show the same audit exits 0 on the honest ledger, and
that an adversary who could also write the roster is out of this model (the rewrite then passes).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fcit.cli import main
from secure_fcit.config import DPConfig
from secure_fcit.dp.accounting import prv_epsilon, rdp_epsilon
from secure_fcit.dp.journal import SIG_CONTEXT, entry_hash, genesis, public_hex, read_journal
from secure_fcit.dp.ledger import LOCK_NAME, ROSTER_NAME, PrivacyLedger
from secure_fcit.dp.report import UNSIGNED, audit
from secure_fcit.errors import JournalError, PrivacyError

DP = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, max_grad_norm=1.0, sample_rate=0.4)  # q = 16/40
TARGET = "client-000"


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """Two clients' honest ledgers, written by the project's ledger, closed again (written once)."""
    root = tmp_path_factory.mktemp("honest") / "privacy"
    for client, rounds in ((TARGET, 3), ("client-001", 2)):
        with PrivacyLedger(root, client, DP) as led:
            for r in range(rounds):
                led.charge(led.plan(0, r, 40, 16, 2.0, 6))
                if r == 0:
                    led.record_release(0, -1, "identity-token", n_samples=40)
    return root


@pytest.fixture
def privacy(honest, tmp_path):
    """A fresh copy of the honest ledgers for one forgery (the signing keys were in memory only)."""
    return Path(shutil.copytree(honest, tmp_path / "privacy"))


def _audit_cli(root, tmp_path, capsys, *extra):
    code = main(["audit", "--state", str(root), "--out", str(tmp_path / "audit"), "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _rewrite(root, transform, key=None, signed=True):
    """The adversary's rewrite: transform the entries, re-chain them (the project's entry_hash),
    re-sign with a key of their own, and re-anchor accountant.json: a self-consistent folder."""
    folder = root / TARGET
    entries = read_journal(folder / "journal.jsonl")
    key = key or Ed25519PrivateKey.generate()
    out, prev = [], None
    for seq, e in enumerate(transform([dict(e) for e in entries])):
        e = {k: v for k, v in e.items() if k not in ("hash", "sig")}
        e.update(seq=seq, prev=prev or genesis(TARGET))
        if signed:
            e["key"] = public_hex(key)
        else:
            e["v"] = 1
            e.pop("key", None)
        e["hash"] = entry_hash(e)
        if signed:
            e["sig"] = key.sign(SIG_CONTEXT + e["hash"].encode()).hex()
        prev = e["hash"]
        out.append(e)
    (folder / "journal.jsonl").write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
                                                  for e in out))
    state = json.loads((folder / "accountant.json").read_text())
    state.update(entries=len(out), head=out[-1]["hash"] if out else None,
                 history=[[e["sigma"], e["q"], e["steps"]] for e in out if e["kind"] == "dp-sgd"])
    (folder / "accountant.json").write_text(json.dumps(state))
    return out


def _recompute(entries):
    """Keep the journaled epsilons consistent with the forged parameters (no mismatch to flag)."""
    history, dp = [], [e for e in entries if e["kind"] == "dp-sgd"]
    for e in dp:
        history.append((e["sigma"], e["q"], e["steps"]))
        e["eps_rdp"] = rdp_epsilon(history, e["delta"])
    dp[-1]["eps_prv"] = prv_epsilon(history, dp[-1]["delta"])  # the audit checks the last one
    return entries


def _triple_sigma(entries):
    for e in entries:
        if e["kind"] == "dp-sgd":
            e["sigma"] *= 3
    return _recompute(entries)


def _delta_001(entries):
    for e in entries:
        if e["kind"] == "dp-sgd":
            e["delta"] = 0.01
    return _recompute(entries)


def _drop_releases(entries):
    return [e for e in entries if e["kind"] != "release"]


def _assert_detected(root, tmp_path, capsys, match):
    code, printed = _audit_cli(root, tmp_path, capsys)
    assert code == 1
    assert f"{TARGET}: FAILED" in printed and "max epsilon UNKNOWN" in printed
    rep = json.loads((tmp_path / "audit" / "REPORT.json").read_text())
    (row,) = [c for c in rep["clients"] if c["client"] == TARGET]
    assert row["status"].startswith("FAILED") and row["epsilon"]["rdp"] is None  # never epsilon 0
    assert rep["summary"]["failed"] == [TARGET] and rep["summary"]["max_epsilon_rdp"] == float("inf")  # JSON Infinity
    assert re.search(match, row["status"]), row["status"]
    md = (tmp_path / "audit" / "REPORT.md").read_text()
    assert f"largest epsilon: **unknown** (1 journal(s) FAILED: {TARGET})" in md



def test_the_honest_ledger_audits_clean(privacy, tmp_path, capsys):
    """Positive control: the same audit passes the untouched ledgers (so each test below can fail)."""
    code, printed = _audit_cli(privacy, tmp_path, capsys)
    assert code == 0, printed
    assert "2 verified, failed: none" in printed


@pytest.mark.parametrize("forgery", [_triple_sigma, _delta_001, _drop_releases],
                         ids=["sigma-tripled", "delta-0.01", "token-releases-dropped"])
def test_a_rechained_reanchored_rewrite_is_detected(privacy, tmp_path, capsys, forgery):
    """Write access to the folder: edit every entry, re-chain, re-sign with an own key, re-anchor."""
    forged = _rewrite(privacy, forgery)
    if forgery is _triple_sigma:  # the forgery is worth having: epsilon drops a lot
        assert rdp_epsilon([(e["sigma"], e["q"], e["steps"]) for e in forged if e["kind"] == "dp-sgd"], 1e-5) < 1.5
    _assert_detected(privacy, tmp_path, capsys, "not a key of client")
    with pytest.raises(JournalError, match="not a key of client"):  # and the client refuses to go on
        PrivacyLedger(privacy, TARGET, DP)


def test_a_rewrite_without_signatures_is_detected(privacy, tmp_path, capsys):
    """The same rewrite as a v1 (unsigned) journal: a client on the roster must have a signed one."""
    _rewrite(privacy, _triple_sigma, signed=False)
    _assert_detected(privacy, tmp_path, capsys, "not signed")


def test_the_last_entry_deleted_with_accountant_json_is_detected(privacy, tmp_path, capsys):
    """Cut the journal's tail (the signed prefix stays valid) and delete the local anchor."""
    path = privacy / TARGET / "journal.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))
    (privacy / TARGET / "accountant.json").unlink()
    _assert_detected(privacy, tmp_path, capsys, "removed from its end")
    with pytest.raises(JournalError, match="removed from its end"):  # the ledger no longer opens either
        PrivacyLedger(privacy, TARGET, DP)


def test_a_deleted_client_folder_is_detected_and_does_not_restart_at_zero(privacy, tmp_path, capsys):
    shutil.rmtree(privacy / TARGET)
    _assert_detected(privacy, tmp_path, capsys, "missing")
    with pytest.raises(JournalError, match="missing|removed"):  # no fresh budget
        PrivacyLedger(privacy, TARGET, DP)


def test_a_deleted_journal_is_detected(privacy, tmp_path, capsys):
    (privacy / TARGET / "journal.jsonl").unlink()
    _assert_detected(privacy, tmp_path, capsys, "missing")


def test_another_clients_signed_journal_is_detected(privacy, tmp_path, capsys):
    """Copy client-001's valid, signed journal over the target's: wrong owner and wrong key."""
    for f in ("journal.jsonl", "accountant.json"):
        (privacy / TARGET / f).write_bytes((privacy / "client-001" / f).read_bytes())
    _assert_detected(privacy, tmp_path, capsys, "client-001")


def test_the_audit_of_one_client_folder_uses_the_roster(privacy, tmp_path, capsys):
    _rewrite(privacy, _delta_001)
    code, printed = _audit_cli(privacy / TARGET, tmp_path, capsys)
    assert code == 1 and f"{TARGET}: FAILED" in printed


def test_out_of_model_an_adversary_who_also_writes_the_roster_is_not_stopped(privacy, tmp_path, capsys):
    """Boundary of the claim: the roster is the trust anchor. Whoever can also rewrite it (enrol
    their key, move the head) passes the audit unless it runs with --certs (deployment) or the
    operator compares the roster's sha256 the audit prints with a copy kept elsewhere."""
    key = Ed25519PrivateKey.generate()
    forged = _rewrite(privacy, _triple_sigma, key=key)
    roster = json.loads((privacy / ROSTER_NAME).read_text())
    roster["clients"][TARGET].update(keys=[public_hex(key)], entries=len(forged), head=forged[-1]["hash"])
    (privacy / ROSTER_NAME).write_text(json.dumps(roster))
    code, printed = _audit_cli(privacy, tmp_path, capsys)
    assert code == 0, printed


def test_a_run_from_before_signing_is_reported_unsigned(privacy, tmp_path, capsys):
    """Old runs (benchmarks/results) have v1 journals and no roster: shown unsigned, exit 1 unless
    --allow-unsigned; never a crash."""
    (privacy / ROSTER_NAME).unlink()
    _rewrite(privacy, lambda e: e, signed=False)
    shutil.rmtree(privacy / "client-001")
    rep = audit(privacy, progress=False)
    assert [c["status"] for c in rep["clients"]] == [UNSIGNED] and rep["summary"]["unsigned"] == [TARGET]
    code, printed = _audit_cli(privacy, tmp_path, capsys)
    assert code == 1 and "unsigned (written before signing): client-000" in printed
    assert _audit_cli(privacy, tmp_path, capsys, "--allow-unsigned")[0] == 0


# --- finding 5: one ledger per folder ------------------------------------------------------------

def _open_in_child(root, queue):
    try:
        PrivacyLedger(root, TARGET, DP)
    except PrivacyError as exc:
        queue.put(("refused", str(exc)))
        return
    queue.put(("opened", ""))


def test_a_second_process_on_one_ledger_is_refused(tmp_path):
    """Two processes on one ledger: the second is refused (naming the folder and the holder's pid),
    so two ledgers can no longer each pass the cap. Positive control: once the first closes, a new
    process opens it."""
    ctx = multiprocessing.get_context("fork")
    root = tmp_path / "privacy"
    holder = PrivacyLedger(root, TARGET, DP)
    assert (root / TARGET / LOCK_NAME).is_file()
    queue = ctx.Queue()
    child = ctx.Process(target=_open_in_child, args=(root, queue))
    child.start()
    outcome, message = queue.get(timeout=60)
    child.join(60)
    assert outcome == "refused"
    assert str(root / TARGET) in message and f"process {os.getpid()}" in message
    holder.close()
    child = ctx.Process(target=_open_in_child, args=(root, queue))
    child.start()
    assert queue.get(timeout=60)[0] == "opened"
    child.join(60)
