"""The DP federation end to end on the micro model: every strategy under DP-SGD, journals, the cap,
the audit report and its CLI."""

from __future__ import annotations

import json

import pytest

from secure_fcit.cli import main
from secure_fcit.config import config_from_dict
from secure_fcit.dp.accounting import rdp_epsilon, task_histories
from secure_fcit.dp.journal import read_journal
from secure_fcit.dp.report import audit
from secure_fcit.fcit.simulate import run_simulation, write_simulation
from tests.integration.test_simulate import micro_config
from tests.micro import write_micro_toml


def dp_config(model_dir, cache, strategy="disco", kind="cap", **dp):
    base = micro_config(model_dir, cache, strategy, kind=kind)
    from dataclasses import asdict

    data = {k: asdict(getattr(base, k)) for k in ("model", "data", "eval", "scenario", "fcit", "privacy")}
    data["lora"] = asdict(base.lora)
    data["dp"] = {"enabled": True, "epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0, **dp}
    return config_from_dict(data)


@pytest.fixture(scope="module")
def dp_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dpcache")


@pytest.mark.parametrize("strategy", ["disco", "finetune", "fedprox", "ewc", "olora"])
def test_every_strategy_trains_under_dp_and_journals_its_spend(strategy, micro_model_dir, dp_cache, tmp_path):
    cfg = dp_config(micro_model_dir, dp_cache, strategy)
    result = run_simulation(cfg, progress=False, log=lambda m: None, privacy_dir=tmp_path / "privacy")
    assert result.dp and not result.refusals
    journals = sorted((tmp_path / "privacy").glob("*/journal.jsonl"))
    assert journals
    trained = 0
    for j in journals:
        entries = read_journal(j)
        dp = [e for e in entries if e["kind"] == "dp-sgd"]
        trained += len(dp)
        for e in dp:
            assert e["sigma"] > 0 and e["eps_rdp"] <= cfg.dp.epsilon
        tokens = [e for e in entries if e["kind"] == "token"]
        if dp:  # per-task accounting: the client's epsilon is the largest of its tasks'
            per_task = task_histories(entries)
            last = [e for e in entries if e["kind"] in ("dp-sgd", "token")][-1]
            assert last["eps_rdp"] == pytest.approx(
                max(rdp_epsilon(h, cfg.dp.delta) for h in per_task.values()), abs=1e-9)
            assert sum(len(h) for h in per_task.values()) >= len(dp) + len(tokens)
        # the identity token is a DP release, journaled once per stage the client took part in
        assert {e["stage"] for e in tokens} >= {e["stage"] for e in dp}
        assert len(tokens) == len({e["stage"] for e in tokens})
        assert not [e for e in entries if e["kind"] == "release"]
    # every applied round had its cohort's spend journaled
    assert trained == cfg.scenario.clients_per_round * result.events["applied"]


def test_the_cap_refuses_rounds_and_the_federation_goes_on(micro_model_dir, dp_cache, tmp_path):
    # A fixed sigma with a tiny cap: each client can pay for its first round only.
    cfg = dp_config(micro_model_dir, dp_cache, "finetune", noise_multiplier=1.0, epsilon=6.0, per_task=False)
    result = run_simulation(cfg, progress=False, log=lambda m: None, privacy_dir=tmp_path / "privacy")
    assert result.refusals and all("privacy budget" in r["reason"] for r in result.refusals)
    for j in (tmp_path / "privacy").glob("*/journal.jsonl"):
        dp = [e for e in read_journal(j) if e["kind"] == "dp-sgd"]
        assert dp and max(e["eps_rdp"] for e in dp) <= 6.0
    write_simulation(result, cfg, tmp_path)
    rep = audit(tmp_path, progress=False)
    assert rep["summary"]["verified"] == rep["summary"]["clients"] and not rep["summary"]["over_budget"]
    assert rep["refusals"] and rep["summary"]["mismatches"] == 0


def test_simulate_cli_with_dp_writes_the_audit_report(micro_model_dir, dp_cache, tmp_path, capsys):
    cfg_path = write_micro_toml(tmp_path / "c.toml", micro_model_dir, dp_cache, 'strategy = "disco"')
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(cfg_path), "--dp", "--epsilon", "4", "--out", str(out),
                 "--no-progress", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "privacy audit:" in printed
    report = json.loads((out / "audit" / "REPORT.json").read_text())
    assert report["summary"]["max_epsilon_rdp"] <= 4.0
    assert (out / "audit" / "epsilon.png").stat().st_size > 0
    assert "Releases not covered by DP" in (out / "audit" / "REPORT.md").read_text()
    # the audit command alone gives the same figures, and exits 1 once a journal is edited
    assert main(["audit", "--state", str(out), "--out", str(tmp_path / "a2"), "--no-progress"]) == 0
    j = next((out / "privacy").glob("*/journal.jsonl"))
    j.write_text(j.read_text().replace('"steps":', '"steps": 0, "x":', 1))
    assert main(["audit", "--state", str(out), "--out", str(tmp_path / "a3"), "--no-progress"]) == 1
    assert "FAILED" in (tmp_path / "a3" / "REPORT.md").read_text()


def test_distributed_dp_releases_only_noised_sums_and_the_audit_recomputes_them(micro_model_dir, dp_cache, tmp_path):
    # dp.mode = "distributed": each cohort client journals one Skellam release per round (before
    # computing anything), sends its encoded clipped-gradient sum plus a share sized mu / (t - c),
    # and the coordinator's step moves the slots; the audit recomputes every epsilon from the journal.
    cfg = dp_config(micro_model_dir, dp_cache, "disco", kind="cap", mode="distributed", server_lr=0.5)
    result = run_simulation(cfg, progress=False, log=lambda m: None, privacy_dir=tmp_path / "privacy")
    assert result.dp and not result.refusals and result.events["applied"] > 0
    releases = []
    for j in sorted((tmp_path / "privacy").glob("*/journal.jsonl")):
        entries = read_journal(j)
        assert not [e for e in entries if e["kind"] == "dp-sgd"]  # nothing trains locally
        mine = [e for e in entries if e["kind"] == "skellam"]
        for e in mine:  # t = 2 of a cohort of 2, c = 1: the one honest survivor carries all of mu
            assert e["share_variance"] == pytest.approx(e["mu"] / (e["t"] - e["colluders"]))
            assert e["eps_rdp"] <= cfg.dp.epsilon and e["sigma"] > 0.3
        releases += mine
    assert len(releases) == cfg.scenario.clients_per_round * result.events["applied"]
    write_simulation(result, cfg, tmp_path)
    rep = audit(tmp_path, progress=False)
    assert rep["summary"]["mismatches"] == 0 and not rep["summary"]["over_budget"]
    assert rep["summary"]["verified"] == rep["summary"]["clients"]
    # Skellam releases have no PRV analysis: the summary says so (None, printed "n/a"), not 0.
    assert rep["summary"]["max_epsilon_prv"] is None
    client = next(c for c in rep["clients"] if c["rounds"])
    assert {r["mechanism"] for r in client["rounds"]} == {"skellam", "gaussian-token"} and client["prv_unavailable"]
