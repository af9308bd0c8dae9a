from __future__ import annotations

import subprocess
import sys

import pytest

from secure_fcit.cli import build_parser, main
from tests.micro import write_micro_toml


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "benchmark", "model"):
        assert cmd in out


def test_config_error_is_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\nrnak = 8\n")
    assert main(["demo", "--config", str(bad)]) == 2
    assert "unknown config key lora.rnak" in capsys.readouterr().err


def test_benchmark_command_writes_llava_files(tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", "--out", str(out), "--tasks", "ocr", "--n-train", "3", "--n-test", "2"])
    assert code == 0
    assert (out / "ocr" / "train.json").is_file() and (out / "ocr" / "test.jsonl").is_file()


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "secure_fcit", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "demo" in res.stdout


def test_demo_runs_a_tls_federation_of_processes_and_ends_with_the_audit(tmp_path, micro_model_dir, capsys):
    # no [dp] table: the demo turns DP on with the default budget
    cfg = write_micro_toml(tmp_path / "demo.toml", micro_model_dir, tmp_path / "cache")
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "scenario.max_stages=2"]) == 0
    out = capsys.readouterr().out
    assert "over mutual TLS 1.3 on loopback" in out and "masking aggregation" in out
    assert "started the server and 4 client processes" in out and "| after stage |" in out
    assert "privacy audit: 4/4 journals verified" in out
    assert (tmp_path / "run" / "audit" / "REPORT.html").is_file()
    assert len(list((tmp_path / "run" / "sites").glob("client-*/privacy/client-*/journal.jsonl"))) == 4
    assert (tmp_path / "run" / "server" / "result" / "state" / "slots.safetensors").is_file()


def test_demo_in_process_runs_the_same_stream_through_the_simulation(tmp_path, micro_model_dir, capsys):
    cfg = write_micro_toml(tmp_path / "demo.toml", micro_model_dir, tmp_path / "cache")
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", "--in-process",
                 "--set", "scenario.max_stages=2"]) == 0
    out = capsys.readouterr().out
    assert "DP-SGD per client (epsilon_max 8, delta 1e-05 per client), masking aggregation" in out and "privacy audit: " in out
    assert list((tmp_path / "run" / "privacy").glob("client-*/journal.jsonl"))
