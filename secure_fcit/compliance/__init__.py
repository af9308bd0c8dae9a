"""compliance package: the control catalogue behind ``python -m secure_fcit compliance``.

- ``catalogue``: `Control`, `Finding`, `Outcome`, the registry `CONTROLS` and the requirements.
- ``policy``: an organisation's thresholds (`Policy`, ``--policy``) and the `Target` of a run.
- ``static``, ``live``, ``audits``, ``attacks``: the controls, registered on import.
- ``empirical``, ``membership``: the one-run canary audit and the membership-inference attacks.
- ``report``: Markdown, HTML, JSON and JUnit XML; ``docs/compliance.md`` from the catalogue.
- ``runner``: `run_compliance`, what the command and ``tests/compliance/`` call.
"""

from __future__ import annotations

from .catalogue import CONTROLS, REQUIREMENTS, Control, Finding, Outcome, Result, run_control
from .policy import Policy, Target, load_policy

__all__ = ["CONTROLS", "REQUIREMENTS", "Control", "Finding", "Outcome", "Result", "run_control", "Policy",
           "Target", "load_policy", "load_controls", "run_compliance"]


def load_controls() -> dict[str, Control]:
    """Import every control module (each registers its controls); returns the registry."""
    from . import attacks, audits, live, static  # noqa: F401

    return CONTROLS


def run_compliance(*args, **kwargs):
    from .runner import run_compliance as run

    return run(*args, **kwargs)
