"""One compliance run: the chosen controls over a `Target`, with a progress bar, then the reports."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from .catalogue import KINDS, Result, run_control
from .policy import Target

__all__ = ["run_compliance", "select"]


def select(kinds: Iterable[str] | None = None, only: Iterable[str] | None = None):
    from . import load_controls

    controls = list(load_controls().values())
    kinds = set(kinds or KINDS)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown control kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    chosen = sorted((c for c in controls if c.kind in kinds), key=lambda c: KINDS.index(c.kind))  # stable
    if only:
        wanted = set(only)
        missing = wanted - {c.id for c in controls}
        if missing:
            raise ValueError(f"unknown control ids {sorted(missing)}; known: {', '.join(c.id for c in controls)}")
        chosen = [c for c in chosen if c.id in wanted]
    return chosen


def run_compliance(target: Target, kinds: Iterable[str] | None = None, only: Iterable[str] | None = None,
                   progress: bool = True) -> list[Result]:
    """Run the selected controls in catalogue order; the scratch folder is removed afterwards."""
    controls = select(kinds, only)
    own_work = target.work is None
    if own_work:
        target.work = Path(tempfile.mkdtemp(prefix="secure-fcit-compliance-"))
    results = []
    try:
        bar = tqdm(controls, desc="compliance controls", unit="control", disable=not progress, leave=False)
        for ctl in bar:
            bar.set_postfix_str(ctl.id)
            results.append(run_control(ctl, target))  # timed there
        bar.close()
    finally:
        if own_work:
            shutil.rmtree(target.work, ignore_errors=True)
            target.work = None
    return results
