"""Every script under benchmarks/ starts and explains itself (issue 23: every documented command
runs on a fresh clone). Each runs in-process with ``--help``: its imports resolve, its argument
parser builds, and it exits 0 with a usage line. The figures themselves come from running the
scripts (each names its regenerating command in its docstring); these runs take minutes to hours."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def test_the_benchmark_folder_has_its_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_help_runs(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out and script.name in out
