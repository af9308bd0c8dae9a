"""The privacy audit report: every client's spend, recomputed from its journal.

``python -m secure_fcit audit --state DIR [--out REPORT]`` finds every ``journal.jsonl`` under
``DIR`` (one client's ledger folder, a federation's ``privacy/`` folder, or a simulation run folder),
verifies each hash chain (and its ``accountant.json`` anchor when present), and recomputes epsilon
with fresh Opacus accountants from the journaled (sigma, q, steps): RDP after every entry, PRV for
each client's whole history. A journaled epsilon that disagrees with the recomputation is flagged.
It writes ``REPORT.md``, ``REPORT.html``, ``REPORT.json`` and ``epsilon.png`` (epsilon over rounds).
The report states the neighbouring relation and carries the release inventory
(`dp.releases`: every release derived from private data, covered or not, with the reason); the
uncovered releases the run recorded are listed: identity tokens from the journals, and the
coordinator's small-cohort (k_min) releases and the clients' refusals from ``metrics.json``.

The audit runs against the roster (``ledger-roster.json`` next to the ledger folders, written by
the ledgers, see `ledger.LedgerRoster`): every client on it must have a journal signed by one of
its roster keys (or, with ``certs``, by the key of its federation certificate), at least as long
as the roster recorded and with the recorded head. A missing client or journal, or one that fails
verification, is FAILED: shown as failed, never as epsilon 0, and the largest epsilon is then
unknown (inf). A journal under no roster is either "unsigned (written before signing)" (v1
journals of runs made before signing; chain-checked only) or FAILED when it is signed.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import JournalError, PrivacyError
from .accounting import (
    GAUSSIAN_KINDS,
    PRV_EPS_ERROR,
    SKELLAM_KIND,
    TOKEN_KIND,
    entry_tasks,
    prv_result,
    skellam_release,
    task_epsilon,
)
from .journal import check_anchor, is_signed, read_journal
from .ledger import ROSTER_NAME, check_roster_record, read_roster
from .releases import RELATION, inventory

__all__ = ["audit", "write_report", "find_journals", "prv_text", "MISMATCH_TOLERANCE"]

#: A journaled epsilon may differ from the recomputed one by this much (float noise only).
MISMATCH_TOLERANCE = 1e-6
VERIFIED = "verified"
UNSIGNED = "unsigned (written before signing)"


def find_journals(state: Path) -> list[Path]:
    state = Path(state)
    if state.is_file() and state.name.endswith(".jsonl"):
        return [state]
    if not state.is_dir():
        raise PrivacyError(f"{state} is neither a journal nor a folder")
    journals = sorted(state.rglob("journal.jsonl"))
    if not journals:
        raise PrivacyError(f"no journal.jsonl under {state}")
    return journals


def _verify(path: Path, client: str | None = None, record: dict[str, Any] | None = None,
            roster: Path | None = None, keys: list[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """The journal's entries and its status: `VERIFIED`, `UNSIGNED`, or "FAILED: <reason>".

    ``record`` is the client's roster entry (None: the journal is on no roster); ``keys``, when
    given, replace the roster's keys (the federation certificates' keys)."""
    try:
        if record is None:
            if (path.parent.parent / ROSTER_NAME).exists():
                raise JournalError(f"{path}: not on the roster {path.parent.parent / ROSTER_NAME}")
            entries = read_journal(path)
            if entries:
                check_anchor(path.with_name("accountant.json"), path, entries, entries[0]["client"])
            if any("sig" in e for e in entries):
                raise JournalError(f"{path}: a signed journal on no roster (its keys cannot be checked)")
            return entries, UNSIGNED
        if not path.exists():
            if record.get("entries", 0):
                raise JournalError(f"{path}: the journal of {client!r} is missing; the roster {roster} "
                                   f"recorded {record['entries']} entries")
            return [], VERIFIED  # enrolled, never charged
        entries = read_journal(path, client, record["keys"] if keys is None else keys)
        check_roster_record(record, roster, path, entries)
        check_anchor(path.with_name("accountant.json"), path, entries, client)
        if entries and not is_signed(entries):
            raise JournalError(f"{path}: unsigned entries")
    except JournalError as exc:
        return [], f"FAILED: {exc}"
    return entries, VERIFIED


def _targets(state: Path) -> tuple[dict[Path, tuple[str | None, dict[str, Any] | None, Path | None]],
                                   list[dict[str, str]], list[tuple[str, str]]]:
    """Every journal to audit: each roster client's (present or not), then journals on no roster.

    Returns {journal: (client, roster record, roster)}, the rosters read (path, sha256), and the
    rosters that could not be read (path, reason)."""
    only: str | None = None
    if state.is_file():
        rosters, journals, only = [state.parent.parent / ROSTER_NAME], [state], state.parent.name
    elif (state / "journal.jsonl").exists() or (state.parent / ROSTER_NAME).exists():
        rosters, journals, only = [state.parent / ROSTER_NAME], [state / "journal.jsonl"], state.name
    else:
        rosters, journals = sorted(state.rglob(ROSTER_NAME)), sorted(state.rglob("journal.jsonl"))
    targets: dict[Path, tuple[str | None, dict[str, Any] | None, Path | None]] = {}
    read, unreadable = [], []
    for roster in (r for r in rosters if r.exists()):
        try:
            clients = read_roster(roster)
        except JournalError as exc:
            unreadable.append((str(roster), str(exc)))
            continue
        read.append({"path": str(roster), "sha256": hashlib.sha256(roster.read_bytes()).hexdigest()})
        for cid, record in sorted(clients.items()):
            if only is None or cid == only:
                targets[roster.parent / cid / "journal.jsonl"] = (cid, record, roster)
    for j in journals:
        if j.exists() and j not in targets:
            targets[j] = (None, None, None)
    if not targets and not unreadable:
        find_journals(state)  # raises, naming what is missing
    return targets, read, unreadable


def _certificate_keys(certs: Path, clients: list[str]) -> dict[str, list[str]]:
    """Each client's key from its certificate under ``certs`` (checked against the CA); none if absent."""
    from ..crypto.certs import client_directory
    from ..errors import ConfigError

    keys: dict[str, list[str]] = {}
    for cid in clients:
        try:
            keys[cid] = [client_directory(certs, [cid]).get(cid, b"").hex()]
        except ConfigError:
            keys[cid] = []
    return keys


#: Journal kinds that are accounted DP mechanisms (recomputed by the audit).
DP_KINDS = (*GAUSSIAN_KINDS, SKELLAM_KIND)
#: The report's mechanism label of a token-phase release (not a training round).
TOKEN_MECHANISM = "gaussian-token"


def _failed_report(path: Path, client: str, status: str) -> dict[str, Any]:
    """A failed journal: no numbers from it (its epsilon is unknown, never 0)."""
    return {"client": client, "journal": str(path), "status": status, "entries": 0, "accountant": None,
            "delta": None, "epsilon_max": None, "epsilon": {"rdp": None, "prv": None}, "remaining": None,
            "over_budget": False, "rounds": [], "stages": [], "mismatches": [], "releases_without_dp": []}


def _client_report(path: Path, entries: list[dict[str, Any]], status: str,
                   progress_cb: Callable[[], None] | None = None) -> dict[str, Any]:
    client = entries[0]["client"] if entries else path.parent.name
    dp = [e for e in entries if e["kind"] in DP_KINDS]
    # Per-task accounting: one history per task; after each entry the client's epsilon is the
    # maximum over its tasks (accounting.task_histories; an entry without tasks: one stream).
    # Distributed-DP entries are Skellam releases (accounting.task_releases), RDP only.
    histories: dict[str, list[tuple[float, float, int]]] = {}
    releases: dict[str, list] = {}
    rdp_by_task: dict[str, float] = {}
    rounds, mismatches = [], []
    delta = dp[0]["delta"] if dp else None
    for e in dp:
        if e["delta"] != delta:
            mismatches.append(f"entry {e['seq']}: delta changed from {delta} to {e['delta']}")
        for task in entry_tasks(e):
            if e["kind"] == SKELLAM_KIND:
                releases.setdefault(task, []).append(skellam_release(e))
            else:
                histories.setdefault(task, []).append((e["sigma"], e["q"], e["steps"]))
            rdp_by_task[task] = task_epsilon(histories.get(task, []), releases.get(task, []), delta)
        eps = max(rdp_by_task.values())
        if e["kind"] == TOKEN_KIND and "token_sigma" in e:  # the noise drawn must be the noise accounted
            z = 1.0 / math.sqrt(1.0 / e["token_sigma"] ** 2 + 1.0 / e["token_count_sigma"] ** 2)
            if abs(z - e["sigma"]) > 1e-9 * max(1.0, z):
                mismatches.append(f"entry {e['seq']}: token noise (sigma_S {e['token_sigma']}, sigma_n "
                                  f"{e['token_count_sigma']}) is noise multiplier {z:.9g}, journal accounts {e['sigma']}")
        journaled = e["eps_rdp"]
        if isinstance(journaled, str) or abs(journaled - eps) > MISMATCH_TOLERANCE * max(1.0, eps):
            mismatches.append(f"entry {e['seq']}: journal says eps_rdp {journaled}, recomputed {eps:.9g}")
        rounds.append({"seq": e["seq"], "stage": e["stage"], "round": e["round"], "time": e["time"],
                       "sigma": e["sigma"], "C": e["C"], "q": e["q"], "steps": e["steps"], "eps_rdp": eps,
                       "tasks": list(entry_tasks(e)), "mechanism": _mechanism(e)})
        if progress_cb:
            progress_cb()
    # PRV per task; None with a reason where the PRV accountant cannot account one of them
    # (bounded cost, never raises: accounting.prv_result), and RDP then stands for the cap.
    eps_prv, prv_reason = (0.0, None) if not histories else (None, None)
    if releases:
        eps_prv, prv_reason = None, "distributed-DP (Skellam) releases: the PRV accountant has no Skellam analysis"
    elif histories:
        results = [prv_result(h, delta) for h in histories.values()]
        missing = [r.reason for r in results if r.epsilon is None]
        eps_prv, prv_reason = (None, missing[0]) if missing else (max(r.epsilon for r in results), None)
    if dp and not isinstance(dp[-1]["eps_prv"], str) and (
            eps_prv is None or abs(dp[-1]["eps_prv"] - eps_prv) > MISMATCH_TOLERANCE * max(1.0, eps_prv)):
        mismatches.append(f"last entry: journal says eps_prv {dp[-1]['eps_prv']}, recomputed "
                          + (f"{eps_prv:.9g}" if eps_prv is not None else f"unavailable ({prv_reason})"))
    if rounds:
        rounds[-1]["eps_prv"] = eps_prv
    per_stage: dict[int, dict[str, Any]] = {}
    for r in rounds:
        if r["mechanism"] == TOKEN_MECHANISM:  # the stage's token release, not a training round
            continue
        s = per_stage.setdefault(r["stage"], {"stage": r["stage"], "rounds": 0, "steps": 0, "sigma": [], "q": [], "C": []})
        s["rounds"] += 1
        s["steps"] += r["steps"]
        s["sigma"].append(r["sigma"])
        s["q"].append(r["q"])
        s["C"].append(r["C"])
    stages = [{"stage": s["stage"], "rounds": s["rounds"], "steps": s["steps"],
               "sigma_min": min(s["sigma"]), "sigma_max": max(s["sigma"]), "q": max(s["q"]), "C": max(s["C"])}
              for s in sorted(per_stage.values(), key=lambda s: s["stage"])]
    eps_max = dp[-1]["epsilon_max"] if dp else None
    accountant = dp[-1]["accountant"] if dp else None
    final = {"rdp": rounds[-1]["eps_rdp"] if rounds else 0.0, "prv": eps_prv}
    capped = final["rdp"] if accountant != "prv" or eps_prv is None else eps_prv
    return {
        "client": client, "journal": str(path), "status": status, "entries": len(entries),
        "accountant": accountant, "delta": delta, "epsilon_max": eps_max,
        "epsilon": final, "prv_unavailable": prv_reason,
        "epsilon_by_task": {t: round(v, 6) for t, v in sorted(rdp_by_task.items())},
        "remaining": None if eps_max is None else eps_max - capped,
        "over_budget": eps_max is not None and capped > eps_max,
        "rounds": rounds, "stages": stages, "mismatches": mismatches,
        "releases_without_dp": [{k: e[k] for k in ("seq", "stage", "round", "what", "time") if k in e}
                                | ({"n_samples": e["n_samples"]} if "n_samples" in e else {})
                                for e in entries if e["kind"] == "release"],
    }


def _mechanism(entry: dict[str, Any]) -> str:
    """gaussian (local DP-SGD), skellam-local (local DP-SGD, ``dp.noise = "skellam"``) or skellam
    (a distributed-DP release)."""
    if entry["kind"] == TOKEN_KIND:
        return TOKEN_MECHANISM
    if entry["kind"] != SKELLAM_KIND:
        return "gaussian"
    return "skellam-local" if entry.get("noise") == "skellam-local" else "skellam"


def _run_metrics(state: Path) -> dict[str, Any] | None:
    for candidate in (state / "metrics.json", state.parent / "metrics.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def audit(state: Path, progress: bool = True, certs: Path | None = None) -> dict[str, Any]:
    """Verify and recompute every journal under ``state`` against its roster; returns the report.

    ``certs``: a federation certificate folder; each roster client's journal must then be signed
    by the key of its CA-checked certificate (not merely a key the roster lists)."""
    state = Path(state)
    targets, rosters, unreadable = _targets(state)
    cert_keys = (_certificate_keys(Path(certs), [c for c, _, _ in targets.values() if c is not None])
                 if certs is not None else {})
    verified = [(j, client or (j.parent.name), *_verify(j, client, record, roster, cert_keys.get(client)))
                for j, (client, record, roster) in targets.items()]
    total = sum(1 for _, _, entries, _ in verified for e in entries if e["kind"] in DP_KINDS)
    bar = tqdm(total=total, desc="recomputing epsilon", unit="entry", disable=not progress, leave=False)
    clients = [_failed_report(j, client, status) if status.startswith("FAILED") else
               _client_report(j, entries, status, lambda: bar.update(1)) for j, client, entries, status in verified]
    clients += [_failed_report(Path(r), f"roster {r}", f"FAILED: {why}") for r, why in unreadable]
    bar.close()
    failed = [c["client"] for c in clients if c["status"].startswith("FAILED")]
    counted = [c for c in clients if not c["status"].startswith("FAILED")]
    # A failed journal's spend is unknown: the largest epsilon is then unknown too (inf), never
    # the largest of the others.
    unknown = math.inf if failed else None
    metrics = _run_metrics(state) if state.is_dir() else None
    mechanisms = {r["mechanism"] for c in counted for r in c["rounds"]}
    modes = [m for m, kinds in (("local", {"gaussian", "skellam-local"}), ("distributed", {"skellam"}))
             if kinds & mechanisms]
    return {
        "state": str(state),
        "accountants": {"rdp": "opacus.accountants.RDPAccountant (default orders)",
                        "prv": f"opacus.accountants.PRVAccountant (eps_error {PRV_EPS_ERROR}, upper bound)"},
        "clients": clients,
        "summary": {
            "clients": len(clients),
            "verified": sum(c["status"] == VERIFIED for c in clients),
            "unsigned": [c["client"] for c in clients if c["status"] == UNSIGNED],
            "failed": failed,
            "mismatches": sum(len(c["mismatches"]) for c in clients),
            "over_budget": [c["client"] for c in clients if c["over_budget"]],
            "max_epsilon_rdp": unknown or max((c["epsilon"]["rdp"] for c in counted), default=0.0),
            # None when no journal has a PRV figure (Skellam releases have no PRV analysis here).
            "max_epsilon_prv": unknown or max((c["epsilon"]["prv"] for c in counted
                                               if c["epsilon"]["prv"] is not None), default=None),
            "max_epsilon_rdp_not_failed": max((c["epsilon"]["rdp"] for c in counted), default=0.0),
            "rosters": rosters,
        },
        "relation": RELATION,
        "dp_modes": modes,
        "release_inventory": [r for r in inventory() if not modes or r["modes"] in ("both", *modes)],
        "small_cohort_releases": (metrics or {}).get("small_cohort_releases", []),
        "refusals": (metrics or {}).get("refusals", []),
        "run": None if metrics is None else {k: metrics.get(k) for k in ("strategy", "setting", "beta", "seed",
                                                                          "last", "avg", "forgetting")},
    }


def prv_text(value: float | None, spec: str = ".4g") -> str:
    """The largest PRV epsilon for a summary line: 'n/a' when no journal has one (Skellam)."""
    return "n/a (Skellam: RDP only)" if value is None else format(value, spec)


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.4g}"
    return str(x)


def _markdown(rep: dict[str, Any]) -> str:
    s = rep["summary"]
    out = ["# Privacy audit report", "",
           f"Source: `{rep['state']}`. Every number below is recomputed from the journals with fresh accountants: "
           f"RDP = {rep['accountants']['rdp']}; PRV = {rep['accountants']['prv']}.", "",
           f"- clients: {s['clients']}; journals verified (signed, against the roster): {s['verified']}; "
           f"failed: {', '.join(s['failed']) or 'none'}",
           *([f"- unsigned (written before signing; hash chain checked, no signature, no roster): "
              f"{', '.join(s['unsigned'])}"] if s.get("unsigned") else []),
           *([f"- roster `{r['path']}` sha256 `{r['sha256']}`" for r in s.get("rosters", [])]
             or ["- no ledger roster: the clients the run had cannot be checked"]),
           f"- journaled epsilons that disagree with the recomputation: {s['mismatches']}",
           f"- clients over budget: {', '.join(s['over_budget']) or 'none'}",
           (f"- largest epsilon: **unknown** ({len(s['failed'])} journal(s) FAILED: {', '.join(s['failed'])}); "
            f"RDP {s['max_epsilon_rdp_not_failed']:.4g} among the others" if s["failed"] else
            f"- largest epsilon: RDP {s['max_epsilon_rdp']:.4g}, PRV {prv_text(s['max_epsilon_prv'])}"), ""]
    if rep.get("run"):
        r = rep["run"]
        out += [f"Run: {r['strategy']} on {r['setting']}, beta {r['beta']}, seed {r['seed']}: "
                f"Last {r['last']}, Avg {r['avg']}, Forgetting {r['forgetting']}.", ""]
    out += ["## Per client", "",
            "| client | chain | accountant | delta | eps RDP | eps PRV | eps max | remaining | DP rounds | releases w/o DP |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in rep["clients"]:
        failed = c["status"].startswith("FAILED")
        chain = "**FAILED**" if failed else c["status"]
        if failed:
            out.append(f"| {c['client']} | {chain} | | | **FAILED** | **FAILED** | | | | |")
            continue
        out.append(f"| {c['client']} | {chain} | {c['accountant']} | {_fmt(c['delta'])} | {_fmt(c['epsilon']['rdp'])} | "
                   f"{_fmt(c['epsilon']['prv'])} | {_fmt(c['epsilon_max'])} | {_fmt(c['remaining'])} | "
                   f"{sum(1 for r in c['rounds'] if r['mechanism'] != TOKEN_MECHANISM)} | "
                   f"{len(c['releases_without_dp'])} |")
    out += ["", "## Per client and stage: sigma, C, q, steps", "",
            "| client | stage | rounds | steps | sigma | C | q |", "|---|---:|---:|---:|---|---:|---:|"]
    for c in rep["clients"]:
        for st in c["stages"]:
            sig = _fmt(st["sigma_min"]) if st["sigma_min"] == st["sigma_max"] else f"{_fmt(st['sigma_min'])}–{_fmt(st['sigma_max'])}"
            out.append(f"| {c['client']} | {st['stage'] + 1} | {st['rounds']} | {st['steps']} | {sig} | {_fmt(st['C'])} | {_fmt(st['q'])} |")
    problems = [(c["client"], c["status"]) for c in rep["clients"] if c["status"] != VERIFIED]
    problems += [(c["client"], m) for c in rep["clients"] for m in c["mismatches"]]
    if problems:
        out += ["", "## Problems", ""] + [f"- {who}: {what}" for who, what in problems]
    out += ["", "## Release inventory: what the printed epsilon covers", "",
            f"Epsilon is computed, capped and reported per sample, under {rep.get('relation', RELATION)} "
            f"neighbours, for the rows marked covered (DP modes in this run: "
            f"{', '.join(rep.get('dp_modes') or []) or 'none'}). Every other row leaves the client without noise.",
            "", "| release | covered | how, or why not |", "|---|---|---|"]
    out += [f"| {r['what']} | {'**yes**' if r['covered'] else '**no**'} | {r['how']} |"
            for r in rep.get("release_inventory", [])]
    out += ["", "## Releases not covered by DP, as recorded", ""]
    tokens = [(c["client"], r) for c in rep["clients"] for r in c["releases_without_dp"]]
    noised = sum(1 for c in rep["clients"] for r in c["rounds"] if r["mechanism"] == TOKEN_MECHANISM)
    out.append(f"- identity-token releases journaled without DP: {len(tokens)} "
               f"(clients: {len({c for c, _ in tokens})}); under the token mechanism (covered above): {noised}")
    kmin = rep["small_cohort_releases"]
    out.append(f"- small-cohort releases (fewer than k_min contributors) applied by the coordinator: "
               f"{sum(1 for r in kmin if r.get('applied'))} of {len(kmin)} recorded")
    for r in kmin:
        when = "token phase" if r.get("round") == -1 else f"round {r.get('round')}"
        what = "bucket" if r.get("phase") == "token" else "slot"
        out.append(f"  - stage {r.get('stage', 0) + 1}, {when}, {what} {r.get('index')}: {r.get('clients')} client(s), "
                   f"policy {r.get('policy')}, {'applied' if r.get('applied') else 'withheld'}")
    if rep["refusals"]:
        out += ["", "## Rounds clients refused", ""]
        out += [f"- stage {r['stage'] + 1}, round {r['round']}: {r['client']}: {r['reason']}" for r in rep["refusals"]]
    return "\n".join(out) + "\n"


def _plot(rep: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4.5))
    caps = set()
    for c in rep["clients"]:
        if c["rounds"]:
            ax.plot(range(1, len(c["rounds"]) + 1), [r["eps_rdp"] for r in c["rounds"]], lw=1, alpha=0.6)
        if c["epsilon_max"] is not None:
            caps.add(c["epsilon_max"])
    for cap in caps:
        ax.axhline(cap, color="red", ls="--", lw=1, label=f"epsilon_max {cap:g}")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("DP rounds the client trained")
    ax.set_ylabel("epsilon (RDP, recomputed)")
    ax.set_title(f"Privacy spend per client ({len(rep['clients'])} clients)")
    if caps:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _inline(text: str) -> str:
    """Escape, then render the Markdown this report uses inline: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html(md: str, after_title: str) -> str:
    """The report's Markdown (headings, paragraphs, bullet lists, tables) as HTML."""
    parts: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            parts.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                         + "</table>")
            continue
        if line.startswith("- ") or line.startswith("  - "):
            items = []
            while i < len(lines) and (lines[i].startswith("- ") or lines[i].startswith("  - ")):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line.startswith("# "):
            parts.append(f"<h1>{_inline(line[2:])}</h1>" + after_title)
        elif line.startswith("## "):
            parts.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(parts)


def write_report(rep: dict[str, Any], out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = _markdown(rep)
    paths = [out / "REPORT.md", out / "REPORT.html", out / "REPORT.json", out / "epsilon.png"]
    paths[0].write_text(md)
    paths[1].write_text("<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit report</title>"
                        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto;line-height:1.4}"
                        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
                        "td{text-align:right}td:first-child{text-align:left}</style></head><body>"
                        + _html(md, "<p><img src='epsilon.png' alt='epsilon over rounds, per client'></p>")
                        + "</body></html>\n")
    paths[2].write_text(json.dumps(rep, indent=1, default=str) + "\n")
    _plot(rep, paths[3])
    return paths
