"""The control catalogue: what each control states, how it is checked and what it supports.

A control is a function of a `Target` (the operator's config, deployment folder, run state and
policy) that returns a `Finding`: an outcome, the evidence it found (numbers, files, hashes) and,
when it does not pass, what to fix. Controls are registered explicitly with `control`; the
registry `CONTROLS` keeps their order, which is the report's order. ``tests/compliance/`` and
``python -m secure_fcit compliance`` run the same registered functions.
"""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Outcome", "Finding", "Control", "Result", "CONTROLS", "REQUIREMENTS", "control", "run_control",
    "passed", "failed", "warned", "not_applicable",
]

#: Requirement id -> what it asks, in a line. Every control names the ones it supports.
REQUIREMENTS: dict[str, str] = {
    "GDPR Art. 25": "data protection by design and by default",
    "GDPR Art. 32": "security of processing: pseudonymisation, encryption, confidentiality, regular testing",
    "HIPAA 164.312(a)(2)(iv)": "encryption and decryption of ePHI (addressable)",
    "HIPAA 164.312(b)": "audit controls: record and examine activity",
    "HIPAA 164.312(c)(1)": "integrity: protect ePHI from improper alteration",
    "HIPAA 164.312(e)(1)": "transmission security",
    "NIST SP 800-53 SC-8": "transmission confidentiality and integrity",
    "NIST SP 800-53 SC-12": "cryptographic key establishment and management",
    "NIST SP 800-53 SC-13": "cryptographic protection",
    "NIST SP 800-53 AU-9": "protection of audit information",
    "NIST SP 800-53 AU-10": "non-repudiation",
    "NIST SP 800-226 unit": "DP evaluation: the unit of privacy is stated",
    "NIST SP 800-226 eps-delta": "DP evaluation: epsilon and delta are stated and within bounds",
    "NIST SP 800-226 trust": "DP evaluation: the trust model (who adds the noise, who is trusted)",
    "NIST SP 800-226 pitfalls": "DP evaluation: implementation pitfalls (floating-point noise, clipping, accounting)",
}


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    NA = "not applicable"


@dataclass(frozen=True)
class Finding:
    """What one check found. ``evidence``: short lines (numbers, files, hashes); ``fix``: what to
    change when the outcome is not a pass."""

    outcome: Outcome
    evidence: tuple[str, ...] = ()
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable figures for the JSON report


def passed(*evidence: str, **data: Any) -> Finding:
    return Finding(Outcome.PASS, tuple(evidence), "", data)


def failed(fix: str, *evidence: str, **data: Any) -> Finding:
    return Finding(Outcome.FAIL, tuple(evidence), fix, data)


def warned(fix: str, *evidence: str, **data: Any) -> Finding:
    return Finding(Outcome.WARN, tuple(evidence), fix, data)


def not_applicable(why: str, **data: Any) -> Finding:
    return Finding(Outcome.NA, (why,), "", data)


KINDS = ("static", "live", "audit", "attack")


@dataclass(frozen=True)
class Control:
    id: str
    kind: str  # "static" (the operator's artifacts), "live" (self-test of the installed package), "audit", "attack"
    statement: str  # the one line that must hold
    how: str  # how it is checked
    requirements: tuple[str, ...]
    check: Callable[[Any], Finding]


@dataclass(frozen=True)
class Result:
    control: Control
    finding: Finding
    seconds: float

    @property
    def outcome(self) -> Outcome:
        return self.finding.outcome


CONTROLS: dict[str, Control] = {}


def control(id: str, kind: str, statement: str, how: str, requirements: tuple[str, ...]):
    """Register the decorated ``check(target) -> Finding`` under ``id``."""
    if kind not in KINDS:
        raise ValueError(f"control kind must be one of {KINDS}, got {kind!r}")
    unknown = [r for r in requirements if r not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"control {id}: unknown requirements {unknown}")

    def register(check: Callable[[Any], Finding]) -> Callable[[Any], Finding]:
        if id in CONTROLS:
            raise ValueError(f"control {id} is registered twice")
        CONTROLS[id] = Control(id, kind, statement, how, tuple(requirements), check)
        return check

    return register


def run_control(ctl: Control, target: Any) -> Result:
    """Run one control; an exception inside the check is a fail that names it (never a pass)."""
    t0 = time.perf_counter()
    try:
        finding = ctl.check(target)
        if not isinstance(finding, Finding):
            raise TypeError(f"check returned {type(finding).__name__}, not a Finding")
    except Exception as exc:  # the check itself broke: report it, do not hide it
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        finding = failed(f"the check raised {type(exc).__name__}: {exc}",
                         f"at {tb.filename.rsplit('/', 1)[-1]}:{tb.lineno}")
    return Result(ctl, finding, time.perf_counter() - t0)
