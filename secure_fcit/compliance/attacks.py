"""Attack tests as controls: each of ``tests/compliance/attacks/`` mounts one named adversary with the
project's own classes plus one adversarial subclass or message (see threat_model.md).

The control runs the checkout's attack test file with pytest in a child process (its JUnit XML is
parsed back) and lists each attack with its adversary (the test's docstring) and its outcome. The
same files are what ``make test`` runs: one implementation, two front ends. An installation without
the source tree's tests gets a warning naming how to run them, never a pass.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from .catalogue import control, failed, passed, warned
from .policy import Target

__all__ = ["ATTACK_FILES", "attack_dir", "run_attack_file"]

#: file -> (control id, statement, threat_model.md section)
ATTACK_FILES: dict[str, tuple[str, str]] = {
    "test_secure_sum_attacks.py": ("AT-1", "A lying coordinator learns no individual input from retries, tiny "
                                   "cohorts, blocks of one, split views or crafted states."),
    "test_ckks.py": ("AT-2", "Under CKKS: no silent wrap-around, no {target, colluder} cohort, and key custody "
                     "that a stolen or departed key file does not defeat."),
    "test_distributed_dp_collusion.py": ("AT-3", "Distributed DP: the coordinator with colluding clients still "
                                         "faces the accounted noise of the honest shares."),
    "test_neighbouring_relation.py": ("AT-4", "A curious coordinator cannot read a client's sample count: "
                                      "add/remove-one neighbours run the same mechanism."),
    "test_member_byte_flip.py": ("AT-5", "A malicious member flipping its sealed shares is dropped; the round "
                                 "completes with the honest clients' sum."),
}


def attack_dir(t: Target | None = None) -> Path | None:
    root = t.repo if t is not None and t.repo is not None else Path(__file__).resolve().parents[2]
    folder = root / "tests" / "compliance" / "attacks"
    return folder if folder.is_dir() else None


def _docstrings(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            doc = " ".join((ast.get_docstring(node) or "").split())
            out[node.name] = doc.split(". ")[0].rstrip(".") + "." if doc else ""
    return out


def run_attack_file(path: Path, timeout: float = 300.0) -> list[dict[str, str]]:
    """Run one attack test file; one row per test: ``name``, ``outcome`` (passed/failed/skipped),
    ``adversary`` (its docstring's first sentence), ``message``."""
    root = path.parents[3]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                        f"--junitxml={xml}", str(path.relative_to(root))], cwd=root, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout, check=False)
        if not xml.is_file():
            return [{"name": path.name, "outcome": "failed", "adversary": "", "message": "pytest wrote no result"}]
        cases = ET.parse(xml).getroot().iter("testcase")
        docs = _docstrings(path)
        rows = []
        for case in cases:
            name = case.get("name", "")
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            skip = case.find("skipped")
            outcome = "failed" if bad is not None else "skipped" if skip is not None else "passed"
            message = (bad.get("message", "") if bad is not None else skip.get("message", "") if skip is not None else "")
            rows.append({"name": name, "outcome": outcome, "adversary": docs.get(name.split("[")[0], ""),
                         "message": message[:200]})
        return rows


def _attack_control(filename: str, ctl_id: str, statement: str) -> None:
    how = (f"Runs tests/compliance/attacks/{filename} (each test: one adversary, the shipped classes plus one "
           "adversarial subclass or message, and a positive control on the insecure path) and reports each "
           "attack's outcome.")

    @control(ctl_id, "attack", statement, how, ("GDPR Art. 32", "NIST SP 800-53 SC-13"))
    def check(t: Target) -> object:
        folder = attack_dir(t)
        if folder is None or not (folder / filename).is_file():
            return warned("run the compliance command from a source checkout of secure-fcit (its tests/ folder) "
                          "to mount the attack tests", f"tests/compliance/attacks/{filename} not found")
        try:
            import pytest  # noqa: F401
        except ImportError:
            return warned("pip install 'secure-fcit[dev]' (pytest) to mount the attack tests")
        rows = run_attack_file(folder / filename)
        table = ["| attack test | outcome | adversary and claim |", "|---|---|---|"]
        table += [f"| `{r['name']}` | {r['outcome']} | {r['adversary'].replace('|', '/')} |" for r in rows]
        evidence = [f"{sum(r['outcome'] == 'passed' for r in rows)}/{len(rows)} attacks defeated "
                    f"({filename})"]
        evidence += [f"FAILED {r['name']}: {r['message']}" for r in rows if r["outcome"] == "failed"]
        if any(r["outcome"] == "failed" for r in rows) or not rows:
            return failed("an attack succeeded against this installation: do not deploy it; see threat_model.md "
                          "for the claim and run the named test with pytest -v", *evidence, tables=[table], tests=rows)
        return passed(*evidence, tables=[table], tests=rows)


for _file, (_id, _statement) in ATTACK_FILES.items():
    _attack_control(_file, _id, _statement)
