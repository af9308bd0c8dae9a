from __future__ import annotations

import json

from secure_fcit.config import config_from_dict
from secure_fcit.deploy.demo import print_summary


def test_the_demo_ends_with_five_lines_what_ran_accuracy_epsilon_reports_next(tmp_path, capsys):
    cfg = config_from_dict({"scenario": {"n_clients": 6, "clients_per_round": 5, "max_stages": 3},
                            "dp": {"enabled": True, "epsilon": 8.0}})
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"stages": ["a", "b", "c"], "last": 21.5, "avg": 19.25}))
    audit = {"max_epsilon_rdp": 7.91, "verified": 6, "clients": 6}
    print_summary(cfg, metrics, audit, [tmp_path / "audit" / "REPORT.md"], 123.4, "over mutual TLS 1.3")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "summary" and len(lines) == 6
    assert "DISCO on 3 stages" in lines[1] and "6 clients (5 per round)" in lines[1] and "123 s" in lines[1]
    assert "Last 21.50, Avg 19.25" in lines[2]
    assert "max epsilon 7.91 of the cap 8" in lines[3] and "6/6 journals verified" in lines[3]
    assert "REPORT.md" in lines[4] and lines[5].lstrip().startswith("next")
