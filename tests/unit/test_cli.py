from __future__ import annotations

import subprocess
import sys

import pytest

from secure_fcit.cli import build_parser, main


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


def test_demo_prints_tables_and_writes_files(tmp_path, monkeypatch, capsys):
    import secure_fcit.fcit.validity as validity

    from .fcit.test_validity_report import _result

    monkeypatch.setattr(validity, "run_validity", lambda cfg, progress=True: _result())
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| ocr | 0.0 | 70.0 | 30.0 |" in out and "after stage" in out
    assert (tmp_path / "validity.json").is_file() and (tmp_path / "finetune_matrix.png").is_file()
