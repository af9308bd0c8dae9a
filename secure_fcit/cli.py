"""``python -m secure_fcit <command>``: the project's command line.

Commands:
  demo        the private federation: DISCO + DP-SGD on the Hom task stream, then the audit report
  audit       privacy audit report recomputed from spend journals (--empirical: the canary audit)
  compliance  the control catalogue on a federation: static checks, live self-tests, attacks, reports
  benchmark   generate (or reuse) the synthetic FCIT benchmark files
  model       build (or reuse) the embedded tiny LLaVA model
  simulate    one federated continual instruction-tuning stream in process (DISCO or a baseline)
  predict     answer a prompt about an image with a trained global state (SSA routing)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import ConfigError, SecureFCITError

__all__ = ["main", "build_parser"]


def _config(args: argparse.Namespace):
    from .config import Config, load_config

    overrides = {}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "config", None):
        return load_config(args.config, overrides)
    from .config import config_from_dict

    return config_from_dict(overrides) if overrides else Config()


def _cmd_demo(args: argparse.Namespace) -> int:
    """A real federation on loopback (server + client processes over mutual TLS), or in process."""
    from .config import config_from_dict, load_config, parse_sets

    overrides = {"dp.enabled": True} | parse_sets(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.clients is not None:
        overrides["scenario.n_clients"] = args.clients
    if args.config:
        cfg = load_config(args.config, overrides)
    elif args.in_process:
        cfg = config_from_dict({"dp": {"enabled": True}, **({"seed": args.seed} if args.seed is not None else {})})
    else:
        raise ConfigError("the demo needs --config (e.g. configs/demo.toml): its processes read the same file")
    dp = cfg.dp
    where = "in process" if args.in_process else "over mutual TLS 1.3 on loopback"
    print(f"secure-fcit demo: {cfg.fcit.strategy} federation on {cfg.scenario.setting}-{cfg.scenario.kind} {where}, "
          f"{cfg.scenario.n_clients} clients, {'distributed DP' if dp.mode == 'distributed' else 'DP-SGD per client'} "
          f"(epsilon_max {dp.epsilon:g}, delta {dp.delta:g} per client), "
          f"{cfg.privacy.aggregation} aggregation")
    # A fresh folder per run: the clients' ledgers in an old one would carry their spend over.
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    print(f"output: {out}")
    if args.in_process:
        return _simulate_and_report(cfg, out, progress=not args.no_progress, quiet=False)
    from .deploy.demo import run_demo

    return run_demo(args.config, cfg, out, progress=not args.no_progress, sets=_demo_sets(args))


def _demo_sets(args: argparse.Namespace) -> list[str]:
    """What the demo's processes must override in the shared config file, as ``--set`` items."""
    items = list(args.set or ())
    if args.seed is not None:
        items.append(f"seed={args.seed}")
    if args.clients is not None:
        items.append(f"scenario.n_clients={args.clients}")
    return items + ["dp.enabled=true"]


def _simulate_and_report(cfg, out: Path, progress: bool, quiet: bool, backend: str = "memory",
                         ray_options=None) -> int:
    from .dp.report import audit, prv_text, write_report
    from .fcit.simulate import run_simulation, write_simulation

    sc = cfg.scenario
    privacy = out / "privacy" if cfg.dp.enabled else None
    decryptions = out / "decryptions.jsonl" if cfg.privacy.aggregation == "ckks" else None
    result = run_simulation(cfg, progress=progress, log=(lambda m: None) if quiet else
                            (lambda m: print(m, file=sys.stderr)), privacy_dir=privacy, decryption_log=decryptions,
                            backend=backend, ray_options=ray_options)
    written = write_simulation(result, cfg, out)
    s = result.summary
    print(f"{cfg.fcit.strategy} {sc.setting}-{sc.kind} beta={sc.beta:g} seed={cfg.seed}"
          f"{' DP' if cfg.dp.enabled else ''}: Last {s['last']:.2f}  Avg {s['avg']:.2f}  "
          f"Forgetting {s['forgetting']:.2f}  BWT {s['bwt']:.2f}  slots {result.slots_opened}  "
          f"refused rounds {len(result.refusals)}  {result.seconds:.0f} s")
    if privacy is not None:
        rep = audit(out, progress=progress)
        written += write_report(rep, out / "audit")
        r = rep["summary"]
        print(f"privacy audit: {r['verified']}/{r['clients']} journals verified, max epsilon RDP "
              f"{r['max_epsilon_rdp']:.3f} / PRV {prv_text(r['max_epsilon_prv'], '.3f')} (cap {cfg.dp.epsilon:g}), "
              f"over budget: {len(r['over_budget'])}, mismatches: {r['mismatches']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return report_shortfalls(result.shortfalls)


def report_shortfalls(shortfalls: list[str]) -> int:
    """0 for a complete stream; else the reasons on stderr and exit status 3."""
    if not shortfalls:
        return 0
    print(f"the stream fell short ({len(shortfalls)} problem(s)):", file=sys.stderr)
    for line in shortfalls:
        print(f"  - {line}", file=sys.stderr)
    return 3


def _cmd_empirical(args: argparse.Namespace) -> int:
    import math

    from .compliance.empirical import canary_audit
    from .config import load_config

    epsilon, delta = 8.0, 1e-5
    if args.config:
        dp = load_config(args.config).dp
        epsilon, delta = (dp.epsilon if dp.enabled else math.inf), dp.delta
    if args.epsilon is not None:
        try:
            epsilon = float(args.epsilon)
        except ValueError:
            raise ConfigError(f"--epsilon must be a number or 'inf', got {args.epsilon!r}") from None
    r = canary_audit(epsilon=None if math.isinf(epsilon) else epsilon, delta=delta, fast=not args.full,
                     progress=not args.no_progress)
    print(f"canary audit: {r['m']} canaries, {r['guesses']} guesses, {r['correct']} correct -> epsilon lower bound "
          f"{r['epsilon_lower']:.3f} ({r['confidence']:g} confidence) against the accounted {r['epsilon_accounted']:.3f} "
          f"(sigma {r['sigma']:.3f}, {r['seconds']:.0f} s)")
    out = Path(args.out) if args.out else Path("runs") / f"empirical-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "empirical.json").write_text(json.dumps(
        {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}, indent=2) + "\n")
    print(f"wrote {out / 'empirical.json'}")
    under = r["epsilon_lower"] > r["epsilon_accounted"] + 1e-9
    if under:
        print("the lower bound exceeds the accounted epsilon: the accounting under-counts", file=sys.stderr)
    return 1 if under else 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from .dp.report import audit, prv_text, write_report

    if args.empirical:
        return _cmd_empirical(args)
    if not args.state:
        raise ConfigError("audit needs --state RUN (the spend journals), or --empirical for the canary audit")
    state = Path(args.state)
    rep = audit(state, progress=not args.no_progress, certs=Path(args.certs) if args.certs else None)
    out = Path(args.out) if args.out else (state / "audit" if state.is_dir() else state.parent / "audit")
    written = write_report(rep, out)
    s = rep["summary"]
    largest = (f"max epsilon UNKNOWN ({len(s['failed'])} failed journal(s))" if s["failed"] else
               f"max epsilon RDP {s['max_epsilon_rdp']:.4g}, PRV {prv_text(s['max_epsilon_prv'])}")
    print(f"{s['clients']} client journal(s): {s['verified']} verified, failed: {', '.join(s['failed']) or 'none'}"
          f"{'; unsigned (written before signing): ' + ', '.join(s['unsigned']) if s['unsigned'] else ''}; "
          f"{largest}; over budget: {', '.join(s['over_budget']) or 'none'}; mismatches: {s['mismatches']}")
    for c in rep["clients"]:
        if c["status"].startswith("FAILED"):
            print(f"  {c['client']}: {c['status']}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    unsigned = bool(s["unsigned"]) and not args.allow_unsigned
    return 1 if s["failed"] or s["over_budget"] or s["mismatches"] or unsigned else 0


def _cmd_compliance(args: argparse.Namespace) -> int:
    from .compliance import Outcome, Target, load_policy
    from .compliance.report import summary, write_reports
    from .compliance.runner import run_compliance
    from .config import load_config, parse_sets

    t0 = time.perf_counter()
    config_path = Path(args.config)
    config = load_config(config_path, parse_sets(args.set))
    for name in ("deployment", "state"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_dir():
            raise ConfigError(f"--{name} {value} is not a folder")
    target = Target(config, config_path, Path(args.deployment) if args.deployment else None,
                    Path(args.state) if args.state else None, load_policy(args.policy), fast=not args.full)
    kinds = ["static"] if args.static_only else None
    try:
        results = run_compliance(target, kinds=kinds, only=args.only, progress=not args.no_progress)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = Path(args.out) if args.out else Path("runs") / f"compliance-{time.strftime('%Y%m%d-%H%M%S')}"
    from . import __version__

    meta = {"version": __version__, "config": str(config_path), "deployment": args.deployment, "state": args.state,
            "policy": args.policy or "(defaults: configs/policies/compliance.toml)", "seconds": time.perf_counter() - t0}
    written = write_reports(results, out, meta)
    marks = {Outcome.PASS: "pass", Outcome.FAIL: "FAIL", Outcome.WARN: "warn", Outcome.NA: "n/a "}
    for r in results:
        print(f"  {marks[r.outcome]:4s} {r.control.id:6s} {r.control.statement}")
        if r.outcome in (Outcome.FAIL, Outcome.WARN):
            print(f"              fix: {r.finding.fix}")
    s = summary(results)
    print(f"compliance: {s['pass']} pass, {s['fail']} fail, {s['warn']} warn, {s['not applicable']} not applicable "
          f"({time.perf_counter() - t0:.0f} s); wrote {', '.join(str(p) for p in written)}")
    return 1 if s["fail"] else 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .data import TASK_NAMES, build_benchmark

    tasks = args.tasks or list(TASK_NAMES)
    files = build_benchmark(Path(args.out), tasks, args.n_train, args.n_test, args.seed, args.image_size)
    for name, f in files.items():
        print(f"{name:14s} {f.n_train:6d} train  {f.n_test:5d} test  {f.directory}")
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from .model.pretrain import PretrainSpec, ensure_embedded_model, rebuild_embedded_model

    if args.rebuild:
        if (args.steps, args.seed) != (PretrainSpec().steps, 0):
            raise ConfigError("--rebuild reruns the shipped default build (--steps 800 --seed 0); "
                              "other builds are made by `model --steps N --seed S`")
        report = rebuild_embedded_model(Path(args.out) if args.out else None)
        print(json.dumps(report, indent=2))
        verdict = "identical to" if report["identical"] else (
            f"differs from (largest |difference| {report['max_abs_diff']:.3g} in {report['max_abs_diff_tensor']}, "
            f"{report['tensors_different']} of {report['tensors']} tensors)")
        print(f"rebuilt weights {report['rebuilt_sha256'][:16]}... {verdict} the shipped "
              f"{report['shipped_sha256'][:16]}...")
        return 0
    path = ensure_embedded_model(
        Path(args.cache_dir) if args.cache_dir else None, pretrain=PretrainSpec(steps=args.steps), seed=args.seed
    )
    print(path)
    print((path / "secure_fcit_build.json").read_text())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .config import load_config, parse_sets

    flags = {"fcit.strategy": args.strategy, "scenario.beta": args.beta, "seed": args.seed,
             "dp.enabled": True if args.dp else None, "dp.epsilon": args.epsilon, "dp.delta": args.delta,
             "privacy.aggregation": args.aggregation}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_sets(args.set)
    cfg = load_config(args.config, overrides)
    sc = cfg.scenario
    dp = f"-dp{cfg.dp.epsilon:g}" if cfg.dp.enabled else ""
    agg = "" if cfg.privacy.aggregation == "masking" else f"-{cfg.privacy.aggregation}"
    out = Path(args.out or f"runs/{sc.setting}-{sc.kind}-{cfg.fcit.strategy}-b{sc.beta:g}-s{cfg.seed}{dp}{agg}")
    ray_options = None
    if args.backend == "ray":
        from .fcit.ray_backend import RayOptions, parse_resources

        ray_options = RayOptions(address=args.ray_address, resources=parse_resources(args.client_resources),
                                 actors=args.actors)
    elif args.ray_address or args.actors is not None or args.client_resources != "num_cpus=1":
        raise ConfigError("--ray-address, --actors and --client-resources go with --backend ray")
    return _simulate_and_report(cfg, out, progress=not args.no_progress, quiet=args.quiet, backend=args.backend,
                                ray_options=ray_options)


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from .crypto.certs import init_federation

    paths = init_federation(args.out, args.federation, args.server_name)
    for role, p in paths.items():
        print(f"{role}: {p.cert} (key {p.key}, mode 0600)")
    return 0


def _cmd_certs_revoke(args: argparse.Namespace) -> int:
    from .crypto.certs import revoke_client

    for client in args.client:
        crl = revoke_client(args.out, client, args.publish)
        print(f"revoked {client}: {crl}" + (f" (published to {', '.join(args.publish)})" if args.publish else ""))
    if not args.publish:
        print("copy crl.pem into the server's and every site's certificate folder (or use --publish)")
    return 0


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from .crypto.certs import issue_client

    for client in args.client:
        p = issue_client(args.out, client)
        print(f"client {client}: {p.cert} (key {p.key}, mode 0600)")
    return 0


def _cmd_deploy_prepare(args: argparse.Namespace) -> int:
    from .config import load_config
    from .deploy.roster import enrol, prepare_federation

    cfg = load_config(args.config)
    out = Path(args.out)
    roster, folders = prepare_federation(cfg, out, progress=not args.no_progress)
    print(f"roster: {out / 'roster.json'} ({roster.n_stages} stages, {len(roster.clients)} clients)")
    print(f"client data: {out / 'clients'}/<id>/stage-NN/train.json ({len(folders)} clients hold data)")
    if not args.no_certs:
        folders = enrol(out, args.federation, args.server_name or [cfg.deploy.host], list(roster.clients))
        print(f"certificates: CA and operator copies in {out / 'pki'} (keep ca.key offline); server bundle "
              f"{folders['server']}; each site's bundle (only its own key) in {out / 'clients'}/<id>/certs")
        print(f"server: --certs {folders['server']}; client <id>: --certs {out / 'clients'}/<id>/certs")
    return 0


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from .protocols.ckks import write_keys

    secret, public = write_keys(args.out)
    print(f"secret context (clients only, mode 0600): {secret} ({secret.stat().st_size} bytes)")
    print(f"public context (coordinator; no secret, Galois or relinearization keys): {public} "
          f"({public.stat().st_size} bytes)")
    print(f"set privacy.ckks_keys = \"{Path(args.out)}\" for the simulation")
    return 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from .protocols.ckks import rotate_keys

    secret, public = rotate_keys(args.dir, stage=args.stage)
    print(f"new secret context (clients only, mode 0600): {secret}; the old one was overwritten and unlinked")
    print(f"new public context (coordinator): {public}")
    print("hand the new secret context to the members that remain, over the enrolment channel; each "
          "client's old key file must be replaced (a departed member's file opens nothing encrypted from now on)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data.llava_json import load_image
    from .fcit.predict import predict

    model_dir = _state_model_dir(args.state, args.model)
    answers = predict(args.state, model_dir, [(load_image(Path(args.image)), args.question)],
                      max_new_tokens=args.max_new_tokens, slot=args.slot)
    print(answers[0])
    return 0


def _state_model_dir(state: str, model: str | None) -> Path:
    """``--model``, else the model the state was trained on, as its run's config named it."""
    from .fcit.predict import load_state
    from .model.pretrain import PretrainSpec, default_cache_dir, ensure_embedded_model

    if model:
        return Path(model)
    mc = load_state(state)["meta"].get("model", {})
    if mc.get("path", "embedded") == "embedded":
        cache = Path(mc["cache_dir"]) if mc.get("cache_dir") else default_cache_dir()
        return ensure_embedded_model(cache, pretrain=PretrainSpec(steps=mc.get("pretrain_steps", 800)),
                                     seed=mc.get("seed", 0))
    return Path(mc["path"])


def _cmd_export(args: argparse.Namespace) -> int:
    from .fcit.export import export_state

    routing = export_state(args.state, _state_model_dir(args.state, args.model), args.out)
    print(f"wrote {len(routing['slots'])} PEFT LoRA adapters ({', '.join(routing['slots'])}) and routing.json "
          f"to {args.out}; load one with peft.PeftModel.from_pretrained(base, '{args.out}/slot-0')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m secure_fcit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the embedded default model")
    demo.add_argument("--config", help="TOML config, e.g. configs/demo.toml (needed unless --in-process, "
                      "which otherwise uses the built-in defaults)")
    demo.add_argument("--seed", type=int, help="override the config's seed")
    demo.add_argument("--out", help="output directory (default: a new runs/demo-<date>-<time>)")
    demo.add_argument("--clients", type=int, help="number of client processes (overrides scenario.n_clients)")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override any config key with a TOML value, e.g. --set fcit.rounds_per_stage=2")
    demo.add_argument("--in-process", action="store_true",
                      help="run the same stream in one process (simulation transport) instead of over TLS")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("benchmark", help="generate the synthetic FCIT benchmark (LLaVA JSON + PNG)")
    bench.add_argument("--out", required=True, help="root directory; one folder per task")
    bench.add_argument("--tasks", nargs="*", help="task names (default: all 10)")
    bench.add_argument("--n-train", type=int, default=1000, help="train examples per task")
    bench.add_argument("--n-test", type=int, default=100, help="test examples per task")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--image-size", type=int, default=64)
    bench.set_defaults(func=_cmd_benchmark)

    model = sub.add_parser("model", help="install (or find) the embedded tiny LLaVA model; --rebuild reruns its pre-training")
    model.add_argument("--cache-dir", help="cache root (default: $SECURE_FCIT_CACHE or ~/.cache/secure-fcit)")
    model.add_argument("--steps", type=int, default=800, help="pre-training steps (projector + language model stage)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--rebuild", action="store_true",
                       help="rerun the shipped default build's pre-training (about 20 min on 2 cores) and report "
                       "its weights' digest and difference against the shipped weights")
    model.add_argument("--out", help="with --rebuild: keep the rebuilt model in this folder")
    model.set_defaults(func=_cmd_model)

    sim = sub.add_parser("simulate", help="run one FCIT stream in process (DISCO or a baseline)")
    sim.add_argument("--config", required=True, help="TOML config, e.g. configs/hom-task.toml")
    sim.add_argument("--strategy", choices=("disco", "finetune", "fedprox", "ewc", "olora"),
                     help="override fcit.strategy")
    sim.add_argument("--beta", type=float, help="override scenario.beta (Dirichlet split)")
    sim.add_argument("--seed", type=int, help="override the config's seed")
    sim.add_argument("--out", help="output directory (default: runs/<setting>-<kind>-<strategy>-b<beta>-s<seed>)")
    sim.add_argument("--dp", action="store_true", help="DP-SGD per client (sets dp.enabled)")
    sim.add_argument("--epsilon", type=float, help="override dp.epsilon (the per-client cap)")
    sim.add_argument("--delta", type=float, help="override dp.delta")
    sim.add_argument("--aggregation", choices=("masking", "ckks", "plaintext"),
                     help="override privacy.aggregation (plaintext is the INSECURE research aggregator)")
    sim.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config key with a TOML value, e.g. --set fcit.policy='\"allow\"'")
    sim.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sim.add_argument("--quiet", action="store_true", help="no per-stage log lines")
    sim.add_argument("--backend", choices=("memory", "ray"), default="memory",
                     help="memory: every worker in this process (default); ray: workers in Ray actors, the "
                          "coordinator here (pip install 'secure-fcit[ray]')")
    sim.add_argument("--ray-address", metavar="auto|HOST:PORT",
                     help="with --backend ray: join this cluster ('auto': the one this node belongs to); "
                          "default: start a local Ray instance")
    sim.add_argument("--client-resources", default="num_cpus=1", metavar="num_cpus=1,num_gpus=0.1",
                     help="with --backend ray: the resources of one actor (num_cpus, num_gpus, memory)")
    sim.add_argument("--actors", type=int,
                     help="with --backend ray: actors in the pool, each hosting a share of the clients "
                          "(default: as many as the cluster's free resources fit, at most one per client)")
    sim.set_defaults(func=_cmd_simulate)

    aud = sub.add_parser("audit", help="privacy audit report from spend journals (Markdown, HTML, JSON, plot)")
    aud.add_argument("--state",
                     help="a run folder, a privacy/ folder of client ledgers, one client's folder or journal")
    aud.add_argument("--empirical", action="store_true",
                     help="the one-run canary audit (Steinke et al. 2023) on the micro model instead: a lower bound "
                          "on epsilon from one DP training run, against the accounted epsilon")
    aud.add_argument("--config", help="with --empirical: take epsilon and delta from this config")
    aud.add_argument("--epsilon", help="with --empirical: the epsilon to train at ('inf': no DP, the positive control)")
    aud.add_argument("--full", action="store_true", help="with --empirical: 1,000 canaries instead of 500")
    aud.add_argument("--out", help="report folder (default: <state>/audit)")
    aud.add_argument("--certs", help="federation certificate folder: each journal must be signed by the key "
                                     "of its client's CA-checked certificate")
    aud.add_argument("--allow-unsigned", action="store_true",
                     help="exit 0 for journals written before signing (reported as unsigned either way)")
    aud.add_argument("--no-progress", action="store_true", help="hide progress bars")
    aud.set_defaults(func=_cmd_audit)

    comp = sub.add_parser("compliance", help="run the control catalogue on a federation (reports in Markdown, "
                          "HTML, JSON, JUnit XML; exit 1 on any fail)")
    comp.add_argument("--config", required=True, help="the federation's TOML config, e.g. configs/demo.toml")
    comp.add_argument("--deployment", help="the federation folder of `deploy prepare` (or a demo run's federation/)")
    comp.add_argument("--state", help="a run folder: the clients' privacy journals and the server's state "
                      "(a demo run folder, or a simulation's output)")
    comp.add_argument("--policy", help="the organisation's thresholds (TOML; example: configs/policies/compliance.toml)")
    comp.add_argument("--out", help="report folder (default: runs/compliance-<date>-<time>)")
    comp.add_argument("--only", nargs="+", metavar="ID", help="run only these control ids (e.g. SA-1 LV-6)")
    comp.add_argument("--static-only", action="store_true", help="only the static controls (no live self-tests)")
    comp.add_argument("--full", action="store_true",
                      help="the empirical audits at their benchmark setting (minutes) instead of the quick one")
    comp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (TOML value)")
    comp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    comp.set_defaults(func=_cmd_compliance)

    keys = sub.add_parser("keys", help="CKKS key ceremony (privacy.aggregation = \"ckks\")")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser(
        "init", help="create the secret context for clients (0600) and the public context for the coordinator")
    init.add_argument("--out", required=True, help="folder for ckks-secret.ctx and ckks-public.ctx (refuses to overwrite)")
    init.set_defaults(func=_cmd_keys_init)
    rotate = keys_sub.add_parser(
        "rotate", help="a fresh key chain: new secret and public contexts; the old secret context is destroyed")
    rotate.add_argument("--dir", required=True, help="the folder of keys init (holds ckks-secret.ctx)")
    rotate.add_argument("--stage", type=int, default=0,
                        help="the first stage the new chain encrypts (its key is this stage's; earlier ones unreachable)")
    rotate.set_defaults(func=_cmd_keys_rotate)

    certs = sub.add_parser("certs", help="federation certificates for mutual TLS (CA, server, clients)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    cinit = certs_sub.add_parser("init", help="create the federation CA and the server certificate")
    cinit.add_argument("--out", required=True, help="certificate folder (refuses to overwrite)")
    cinit.add_argument("--federation", default="secure-fcit", help="federation id (the certificates' organization)")
    cinit.add_argument("--server-name", action="append", required=True,
                       help="a host name or IP address of the server (repeatable; goes in subjectAltName)")
    cinit.set_defaults(func=_cmd_certs_init)
    cissue = certs_sub.add_parser("issue", help="issue a client certificate (identity = its common name)")
    cissue.add_argument("--out", required=True, help="the certificate folder of `certs init`")
    cissue.add_argument("--client", action="append", required=True, help="client id (repeatable)")
    cissue.set_defaults(func=_cmd_certs_issue)
    crevoke = certs_sub.add_parser(
        "revoke", help="revoke a client certificate: add it to the federation CRL (crl.pem) signed by the CA key")
    crevoke.add_argument("--out", required=True, help="the certificate folder of `certs init` (holds ca.key)")
    crevoke.add_argument("--client", action="append", required=True, help="client id to revoke (repeatable)")
    crevoke.add_argument("--publish", action="append", default=[], metavar="FOLDER",
                         help="also copy crl.pem into this certificate folder, e.g. FED/server-certs and each "
                              "FED/clients/<id>/certs (repeatable); the server refuses the client at its next connect")
    crevoke.set_defaults(func=_cmd_certs_revoke)

    dep = sub.add_parser("deploy", help="prepare a federation folder for `python -m secure_fcit.server` / `.client`")
    dep_sub = dep.add_subparsers(dest="deploy_command", required=True)
    prep = dep_sub.add_parser(
        "prepare", help="write roster.json, each client's data folder and (unless --no-certs) the certificates")
    prep.add_argument("--config", required=True, help="TOML config of the federation")
    prep.add_argument("--out", required=True, help="new federation folder")
    prep.add_argument("--federation", default="secure-fcit", help="federation id (the CA's organization)")
    prep.add_argument("--server-name", action="append",
                      help="server host name or IP for its certificate (repeatable; default: deploy.host)")
    prep.add_argument("--no-certs", action="store_true", help="write no certificates (the sites enrol separately)")
    prep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    prep.set_defaults(func=_cmd_deploy_prepare)

    pred = sub.add_parser("predict", help="answer a question about an image with a trained state")
    pred.add_argument("--state", required=True, help="a run's state/ directory")
    pred.add_argument("--image", required=True, help="image file")
    pred.add_argument("--question", required=True, help="the instruction, without <image>")
    pred.add_argument("--model", help="LLaVA model directory (default: the embedded model)")
    pred.add_argument("--max-new-tokens", type=int, default=24)
    pred.add_argument("--slot", type=int, help="answer with this slot alone (SSA routing off)")
    pred.set_defaults(func=_cmd_predict)

    exp = sub.add_parser("export", help="write a state's slots as standard PEFT LoRA adapters, plus tokens and routing")
    exp.add_argument("--state", required=True, help="a run's state/ directory")
    exp.add_argument("--out", required=True, help="a new folder: slot-<k>/ adapters and routing.json")
    exp.add_argument("--model", help="LLaVA model directory (default: the model the state was trained on)")
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SecureFCITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
