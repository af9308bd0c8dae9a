"""``python -m secure_fcit.server``: the federation's coordinator over mutual TLS 1.3.

    python -m secure_fcit.server --config FILE --roster FED --certs FED/server-certs --state FED/server [--eval]

It waits for the roster's clients (``deploy.min_clients``, ``deploy.join_timeout``), runs the
configured FCIT stream (stages, sampled cohorts, DKO, secure aggregation), logs a line per protocol
phase to stderr and ``<state>/events.jsonl``, checkpoints after every completed round, and resumes
from the last checkpoint when started again on the same ``--state``. At the end it writes the
trained global state to ``<state>/result/state/`` (for ``python -m secure_fcit predict``) and, with
``--eval``, the accuracy matrix (``metrics.json``, ``metrics.md``, ``accuracy_matrix.png``).

Exit status: 0 when every stage and round was trained; 3 when the stream fell short (a stage or
round skipped, or nothing trained at all), with each skipped step and its abort reasons on stderr
and in ``metrics.json`` (``shortfalls``); 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from .errors import SecureFCITError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m secure_fcit.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML config: the stream, strategy, DP, [privacy] and [deploy]")
    p.add_argument("--roster", required=True,
                   help="roster.json of `python -m secure_fcit deploy prepare` (or its folder): who joins which stage")
    p.add_argument("--state", required=True,
                   help="server state folder: checkpoints, events.jsonl, results; an existing one is resumed")
    p.add_argument("--certs", help="the server's certificate bundle, FED/server-certs of `deploy prepare` "
                   "(default: deploy.certs); a folder holding the CA key or client keys is refused")
    p.add_argument("--host", help="listen address (default: deploy.host)")
    p.add_argument("--port", type=int, help="listen port (default: deploy.port)")
    p.add_argument("--eval", action="store_true",
                   help="evaluate the global state after every stage on the benchmark's test sets")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key with a TOML value, e.g. --set deploy.phase_timeout=60")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return _run(args)
    except SecureFCITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; start again with the same --state to resume",
              file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from .cli import report_shortfalls
    from .config import load_config, parse_sets
    from .deploy.roster import load_roster
    from .deploy.server import FederationServer
    from .fcit.simulate import write_state

    overrides = parse_sets(args.set) | {
        k: v for k, v in {"deploy.host": args.host, "deploy.port": args.port}.items() if v is not None}
    config = load_config(args.config, overrides)
    roster = load_roster(args.roster, config)
    server = FederationServer(config, roster, args.state, certs=args.certs, evaluate=args.eval,
                              progress=not args.no_progress)
    summary = asyncio.run(server.run())
    out = Path(args.state) / "result"
    written = write_state(summary["state"], config, out / "state")
    written += _write_metrics(summary, config, roster, out)
    done = "done" if not summary["shortfalls"] else "ended with skipped steps"
    print(f"federation {summary['federation_id']}: {done}; slots {summary['slots_opened']}, events "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary["events"].items())))
    if summary["summary"]:
        s = summary["summary"]
        print(f"Last {s['last']:.2f}  Avg {s['avg']:.2f}  Forgetting {s['forgetting']:.2f}  BWT {s['bwt']:.2f}")
    print("wrote " + ", ".join(str(p) for p in written))
    return report_shortfalls(summary["shortfalls"])


def _write_metrics(summary: dict, config, roster, out: Path) -> list[Path]:
    from .fcit.report import matrix_markdown, plot_matrix

    labels = [" + ".join(t) for t in roster.stage_tasks]
    rnd = lambda v: None if v is None else round(float(v), 2)  # noqa: E731
    metrics = {
        "federation_id": summary["federation_id"],
        "setting": f"{config.scenario.setting}-{config.scenario.kind}",
        "strategy": config.fcit.strategy,
        "stages": roster.stage_tasks,
        "accuracy_matrix": None if summary["accuracy_matrix"] is None
        else [[rnd(v) for v in row] for row in summary["accuracy_matrix"]],
        **({k: round(v, 2) for k, v in summary["summary"].items()} if summary["summary"] else {}),
        "slots_opened": summary["slots_opened"],
        "round_seconds": [round(s, 2) for s in summary["round_seconds"]],
        "events": summary["events"],
        "small_cohort_releases": summary["releases"],
        "connections_cut_off": summary["cut_off"],
        "shortfalls": summary["shortfalls"],
        "aggregation": config.privacy.aggregation,
        "dp": config.dp.enabled,
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json"]
    paths[0].write_text(json.dumps(metrics, indent=2) + "\n")
    if metrics["accuracy_matrix"] and summary["summary"]:
        md = out / "metrics.md"
        md.write_text(f"# {config.fcit.strategy} over TLS, {metrics['setting']}\n\n"
                      + matrix_markdown(metrics["accuracy_matrix"], labels) + "\n")
        png = out / "accuracy_matrix.png"
        plot_matrix(metrics["accuracy_matrix"], labels, png, f"{config.fcit.strategy} over TLS, {metrics['setting']}")
        paths += [md, png]
    return paths


if __name__ == "__main__":
    sys.exit(main())
