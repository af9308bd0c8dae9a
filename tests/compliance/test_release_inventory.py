"""The release inventory (`secure_fcit.dp.releases`): in threat_model.md and in every audit report."""

from __future__ import annotations

import re
from pathlib import Path

from secure_fcit.config import DPConfig
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.dp.releases import INVENTORY, RELATION
from secure_fcit.dp.report import audit, write_report

ROOT = Path(__file__).resolve().parents[2]


def test_the_threat_model_lists_every_release_with_its_coverage():
    text = (ROOT / "threat_model.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \|[^|]*\|[^|]*\| \*\*(yes|no)\*\* \|", text, re.M))
    assert rows == {r.id: "yes" if r.covered else "no" for r in INVENTORY}
    uncovered = {r.id for r in INVENTORY if not r.covered}
    # token-phase DP (tests/compliance/attacks/test_token_dp.py) covers the token phase
    assert uncovered == {"participation", "timing"}


def test_the_audit_report_prints_the_relation_and_the_inventory(tmp_path):
    dp = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, sample_rate=0.5)
    with PrivacyLedger(tmp_path, "client-000", dp) as ledger:
        ledger.charge(ledger.plan(0, 0, 40, 16, 1.0, 2))
        ledger.record_release(0, -1, "identity-token", n_samples=40)
    rep = audit(tmp_path, progress=False)
    assert rep["relation"] == RELATION and rep["dp_modes"] == ["local"]
    ids = {r["id"] for r in rep["release_inventory"]}
    assert "update-local" in ids and "update-distributed" not in ids and "identity-token" in ids
    md = next(p for p in write_report(rep, tmp_path / "out") if p.suffix == ".md").read_text()
    assert "add/remove one sample" in md and "## Release inventory" in md
    token = next(r for r in INVENTORY if r.id == "identity-token")
    assert f"| {token.what} | **yes** |" in md
    # an older journal's uncovered token release is still counted as one
    assert "identity-token releases journaled without DP: 1 (clients: 1)" in md
