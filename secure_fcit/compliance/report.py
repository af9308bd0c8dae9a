"""The compliance report: Markdown, self-contained HTML (with its plots inline), JSON and JUnit XML.

Each control shows its statement, how it was checked, its outcome, the evidence it found and, if
it did not pass, what to fix. ``catalogue_markdown`` renders the catalogue alone: that is
``docs/compliance.md`` (``python -m secure_fcit.compliance.report --check`` compares it).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from .catalogue import CONTROLS, REQUIREMENTS, Outcome, Result

__all__ = ["write_reports", "catalogue_markdown", "summary", "DOC_PATH"]

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "compliance.md"

_KIND_TITLES = {"static": "Static controls (the operator's artifacts)",
                "live": "Live self-tests (the installed package)",
                "audit": "Empirical privacy audit and attack demonstrations",
                "attack": "Attack tests (a named adversary against the shipped classes)"}


def summary(results: list[Result]) -> dict[str, int]:
    counts = Counter(r.outcome.value for r in results)
    return {o.value: counts.get(o.value, 0) for o in Outcome}


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def catalogue_markdown() -> str:
    """docs/compliance.md: every registered control, generated from the code."""
    from . import load_controls

    load_controls()
    lines = ["# Compliance controls", "",
             "Generated from `secure_fcit/compliance/` by `python -m secure_fcit.compliance.report` "
             "(a test fails when this file and the code disagree). Run them on a federation with "
             "`python -m secure_fcit compliance --config FED.toml [--deployment FED/] [--state RUN/] "
             "[--policy POLICY.toml] [--out DIR]`; each run writes `COMPLIANCE.md`, `.html`, `.json` and "
             "`junit.xml`, and exits 1 on any fail. Outcomes: pass, fail, warn, not applicable (the artifact "
             "it checks was not given). `configs/policies/compliance.toml` holds the thresholds. Measured figures "
             "(the demo federation's run, the canary audit, membership inference): "
             "[notes/2026-12-07-compliance.md](notes/2026-12-07-compliance.md).", ""]
    for kind, title in _KIND_TITLES.items():
        controls = [c for c in CONTROLS.values() if c.kind == kind]
        if not controls:
            continue
        lines += [f"## {title}", "", "| id | statement | how it is checked | supports |", "|---|---|---|---|"]
        lines += [f"| {c.id} | {_md_cell(c.statement)} | {_md_cell(c.how)} | {', '.join(c.requirements)} |"
                  for c in controls]
        lines.append("")
    lines += ["## Requirements", "", "| requirement | what it asks | controls |", "|---|---|---|"]
    for req, what in REQUIREMENTS.items():
        ids = [c.id for c in CONTROLS.values() if req in c.requirements]
        lines.append(f"| {req} | {what} | {', '.join(ids) or '(none)'} |")
    return "\n".join(lines) + "\n"


def _markdown(results: list[Result], meta: dict[str, Any]) -> str:
    s = summary(results)
    lines = ["# Compliance report", "",
             f"- run: {meta['time']}, secure-fcit {meta['version']}, {meta['seconds']:.1f} s",
             f"- config: `{meta['config']}`; deployment: `{meta['deployment']}`; state: `{meta['state']}`; "
             f"policy: `{meta['policy']}`",
             f"- **{s['pass']} pass, {s['fail']} fail, {s['warn']} warn, {s['not applicable']} not applicable**", "",
             f"![controls per requirement]({Path(meta['plot']).name})", "",
             "| id | outcome | statement | seconds |", "|---|---|---|---:|"]
    lines += [f"| {r.control.id} | **{r.outcome.value}** | {_md_cell(r.control.statement)} | {r.seconds:.2f} |"
              for r in results]
    for kind, title in _KIND_TITLES.items():
        chosen = [r for r in results if r.control.kind == kind]
        if not chosen:
            continue
        lines += ["", f"## {title}"]
        for r in chosen:
            c = r.control
            lines += ["", f"### {c.id}: {r.outcome.value}: {c.statement}", "", f"*How:* {c.how}", "",
                      f"*Supports:* {', '.join(c.requirements)}", ""]
            lines += [f"- {e}" for e in r.finding.evidence]
            if r.finding.fix:
                lines += ["", f"**What to fix:** {r.finding.fix}"]
            for table in r.finding.data.get("tables", []):
                lines += ["", *table]
            if "plot" in r.finding.data:
                lines += ["", f"![{c.id}]({Path(r.finding.data['plot']).name})"]
    return "\n".join(lines) + "\n"


def _inline_img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:640px">'


def _html(results: list[Result], meta: dict[str, Any]) -> str:
    s = summary(results)
    colours = {"pass": "#1a7f37", "fail": "#cf222e", "warn": "#9a6700", "not applicable": "#6e7781"}
    rows = "".join(
        f"<tr><td><a href='#{r.control.id}'>{r.control.id}</a></td><td style='color:{colours[r.outcome.value]}'>"
        f"<b>{r.outcome.value}</b></td><td>{html.escape(r.control.statement)}</td><td>{r.seconds:.2f}</td></tr>"
        for r in results)
    body = []
    for r in results:
        c = r.control
        evidence = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in r.finding.evidence)
        fix = f"<p><b>What to fix:</b> {html.escape(r.finding.fix)}</p>" if r.finding.fix else ""
        tables = "".join(f"<pre>{html.escape(chr(10).join(t))}</pre>" for t in r.finding.data.get("tables", []))
        plot = r.finding.data.get("plot")
        img = _inline_img(Path(plot)) if plot and Path(plot).is_file() else ""
        body.append(f"<section id='{c.id}'><h3>{c.id}: <span style='color:{colours[r.outcome.value]}'>"
                    f"{r.outcome.value}</span>: {html.escape(c.statement)}</h3><p><i>How:</i> {html.escape(c.how)}</p>"
                    f"<p><i>Supports:</i> {html.escape(', '.join(c.requirements))}</p><ul>{evidence}</ul>{fix}"
                    f"{tables}{img}</section>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>secure-fcit compliance report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
            "code{font-size:90%}section{border-top:1px solid #ddd;margin-top:1em}</style></head><body>"
            f"<h1>Compliance report</h1><p>{html.escape(meta['time'])}, secure-fcit {html.escape(meta['version'])}, "
            f"{meta['seconds']:.1f} s<br>config <code>{html.escape(str(meta['config']))}</code>, deployment "
            f"<code>{html.escape(str(meta['deployment']))}</code>, state <code>{html.escape(str(meta['state']))}</code>, "
            f"policy <code>{html.escape(str(meta['policy']))}</code></p>"
            f"<p><b>{s['pass']} pass, {s['fail']} fail, {s['warn']} warn, {s['not applicable']} not applicable</b></p>"
            f"{_inline_img(Path(meta['plot']))}"
            f"<table><tr><th>id</th><th>outcome</th><th>statement</th><th>s</th></tr>{rows}</table>"
            + "".join(body) + "</body></html>\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def _json(results: list[Result], meta: dict[str, Any]) -> str:
    return json.dumps(_jsonable({
        **meta, "summary": summary(results),
        "controls": [{"id": r.control.id, "kind": r.control.kind, "statement": r.control.statement,
                      "how": r.control.how, "requirements": list(r.control.requirements),
                      "outcome": r.outcome.value, "evidence": list(r.finding.evidence), "fix": r.finding.fix,
                      "seconds": round(r.seconds, 3), "data": r.finding.data} for r in results]}), indent=2) + "\n"


def _junit(results: list[Result], meta: dict[str, Any]) -> bytes:
    s = summary(results)
    suite = ET.Element("testsuite", name="secure-fcit compliance", tests=str(len(results)), failures=str(s["fail"]),
                       errors="0", skipped=str(s["not applicable"]), time=f"{meta['seconds']:.3f}",
                       timestamp=meta["time"])
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"compliance.{r.control.kind}",
                             name=f"{r.control.id} {r.control.statement}", time=f"{r.seconds:.3f}")
        text = "\n".join(r.finding.evidence)
        if r.outcome is Outcome.FAIL:
            ET.SubElement(case, "failure", message=r.finding.fix or "failed").text = text
        elif r.outcome is Outcome.NA:
            ET.SubElement(case, "skipped", message=r.finding.evidence[0] if r.finding.evidence else "not applicable")
        else:
            out = ET.SubElement(case, "system-out")
            out.text = (f"WARN: {r.finding.fix}\n" if r.outcome is Outcome.WARN else "") + text
    root = ET.Element("testsuites")
    root.append(suite)
    buf = io.BytesIO()
    ET.ElementTree(root).write(buf, encoding="utf-8", xml_declaration=True)
    return buf.getvalue()


def _plot(results: list[Result], path: Path) -> Path:
    """Outcomes per requirement (stacked bars): which obligations each run's evidence covers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reqs = [r for r in REQUIREMENTS if any(r in x.control.requirements for x in results)]
    colours = {"pass": "#1a7f37", "warn": "#d4a72c", "fail": "#cf222e", "not applicable": "#afb8c1"}
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(reqs) + 1.2))
    left = [0] * len(reqs)
    for outcome, colour in colours.items():
        counts = [sum(1 for x in results if req in x.control.requirements and x.outcome.value == outcome) for req in reqs]
        ax.barh(reqs, counts, left=left, color=colour, label=outcome)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("controls")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Controls per requirement, by outcome")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(results: list[Result], out: Path, meta: dict[str, Any]) -> list[Path]:
    """COMPLIANCE.md, COMPLIANCE.html (the plot inline), COMPLIANCE.json, junit.xml and
    requirements.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **meta,
            "plot": str(_plot(results, out / "requirements.png"))}
    paths = [out / "COMPLIANCE.md", out / "COMPLIANCE.html", out / "COMPLIANCE.json", out / "junit.xml",
             out / "requirements.png"]
    paths[0].write_text(_markdown(results, meta))
    paths[1].write_text(_html(results, meta))
    paths[2].write_text(_json(results, meta))
    paths[3].write_bytes(_junit(results, meta))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secure_fcit.compliance.report",
                                description="write (or --check) docs/compliance.md, the control catalogue")
    p.add_argument("--out", default=str(DOC_PATH))
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from the code")
    args = p.parse_args(argv)
    text, path = catalogue_markdown(), Path(args.out)
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date: run python -m secure_fcit.compliance.report", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
