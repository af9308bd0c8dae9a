"""How many LoRA slots DKO opens per stream, over many seeds and beta, without training anything.

    python benchmarks/dko_slots.py [--settings hom-task het-task hom-cap het-cap cross-silo-hom-task]
        [--betas 0.5 1.0 5.0] [--seeds 0 1 2 3 4 5 6 7 8 9] [--dp] [--set KEY=VALUE ...]
        [--out benchmarks/results/dko_slots.json]

``--dp``: every client releases its token through the token-phase DP mechanism
(`dp.client.noisy_token`, at the config's ``dp.epsilon`` and ``dp.token_epsilon_share``; set them
with ``--set``), fresh noise per run, and DKO sees only the noisy tokens and counts. Nothing is
journaled: this measures what the noise does to DKO, not a private run.

DKO's decisions (which slots a stage matches or opens, and the tokens) depend only on the clients'
identity tokens and sample counts, never on their trained updates. So this script runs the real
sans-IO ``Coordinator``, ``Worker`` s, plaintext aggregator and ``DKOOrganizer`` over each stream,
with learners that release their real identity token and return a zero update: the slots opened
are exactly those of a full ``simulate`` run with the same config and seed (the script checks this
against any full run found under ``benchmarks/results/fcit``), at a fraction of a second per round.

The unit of knowledge is a task in the task-related streams (8) and a capability group in the
capability-related ones (4): the target is one slot per unit, opened in the unit's first stage. The
script prints, per setting and beta, the slot counts over the seeds and every stage that opened
more slots than it brought new units (a split) or fewer (a miss: a new unit's clients trained an
existing slot until a later stage opened one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from secure_fcit.config import load_config, parse_sets
from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.client import noisy_token
from secure_fcit.fcit.dko import DKOOrganizer
from secure_fcit.fcit.simulate import in_memory_federation, scenario_for, stream_tasks
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.encoder import load_encoder, mean_token
from secure_fcit.protocols import run_federation

SETTINGS = ("hom-task", "het-task", "hom-cap", "het-cap", "cross-silo-hom-task")


class TokenOnlyLearner:
    """A client that releases its real identity token and trains nothing (a zero update). With
    ``dp`` (a DPConfig) the token and its count come from the token-phase DP mechanism."""

    def __init__(self, encoder, instructions: dict[int, list[str]], dp=None) -> None:
        self.encoder, self.instructions, self.dp = encoder, instructions, dp
        self._tokens: dict[int, np.ndarray] = {}
        self._counts: dict[int, float] = {}

    def identity_token(self, stage: int) -> np.ndarray:
        if stage not in self._tokens:
            if self.dp is None:
                self._tokens[stage] = mean_token(self.encoder, self.instructions[stage])
            else:
                self._tokens[stage], self._counts[stage] = noisy_token(
                    self.encoder.encode(self.instructions[stage]), self.dp.token_sigma, self.dp.token_count_sigma,
                    ChaCha20PRG())
        return self._tokens[stage]

    def token_weight(self, stage: int) -> float:
        if self.dp is None:
            return float(self.num_samples(stage))
        self.identity_token(stage)
        return self._counts[stage]

    def num_samples(self, stage: int) -> int:
        return len(self.instructions.get(stage, ()))

    def train(self, stage: int, round: int, slot: int, weights: np.ndarray) -> np.ndarray:
        return np.zeros_like(np.asarray(weights, dtype=np.float32))

    def refuse_reason(self, stage: int, round: int) -> str | None:
        return None


def slots_of_stream(config, ws, encoder, dp: bool = False) -> dict:
    """Run one stream's token phases and rounds with token-only learners; what DKO opened."""
    scenario = scenario_for(config, ws)
    instructions: dict[int, dict[int, list[str]]] = {}
    for stage in scenario.stages:
        for client, parts in stage.client_data.items():
            instructions.setdefault(client, {})[stage.index] = [
                ws.train_records(task)[int(i)].turns[0][0] for task, idx in parts for i in idx
            ]
    dko = replace(config.fcit.dko(config.privacy.aggregation), max_slots=config.fcit.max_slots)
    organizer = DKOOrganizer(encoder.dim, 1, dko, slot_init=lambda s: np.zeros(1, np.float32))
    learners = {c: TokenOnlyLearner(encoder, instructions[c], config.dp if dp else None) for c in sorted(instructions)}
    fed_id = f"dko-{config.scenario.setting}-{config.scenario.kind}"
    coordinator, workers, _ = in_memory_federation(config, fed_id, scenario, organizer, learners)
    history = run_federation(coordinator, workers)
    # A stage whose token sum DKO refused (for example more slots than max_slots) has no plan: it
    # opened nothing, and is listed under "aborted".
    planned = {e["stage"]: list(e["opened"]) for e in history.of("planned")}
    opened = [planned.get(stage.index, []) for stage in scenario.stages]
    aborted = [stage.index for stage in scenario.stages if stage.index not in planned]
    # What each stage brings that is new: a task (task streams) or a capability group (cap streams)
    # is one unit, and its first stage should open one slot for it.
    seen: list[tuple[str, ...]] = []
    new_units = []
    for stage in scenario.stages:
        fresh = [u for u in dict.fromkeys(stage.group_tasks) if u not in seen]
        seen += fresh
        new_units.append(fresh)
    token_releases = [r for r in organizer.releases if r.phase == "token"]
    incoherent = sum(len(e["incoherent_buckets"]) for e in history.of("planned"))
    return {"slots": organizer.n_slots, "opened_per_stage": opened, "tokens": organizer.tokens,
            "aborted_stages": aborted, "incoherent_buckets": incoherent,
            "small_cohort_token_buckets": len(token_releases),
            "clients_in_small_token_buckets": sum(r.clients for r in token_releases),
            "new_units_per_stage": [[" + ".join(u) for u in units] for units in new_units], "units": len(seen),
            "splits": [s for s, (o, n) in enumerate(zip(opened, new_units, strict=True)) if len(o) > len(n)],
            "misses": [s for s, (o, n) in enumerate(zip(opened, new_units, strict=True)) if len(o) < len(n)]}


def _disco_run(setting: str, beta: float, seed: int) -> Path:
    """Where ``benchmarks/fcit_table.py`` writes the full DISCO run of this stream."""
    return Path("benchmarks/results/fcit") / setting / f"b{beta:g}" / f"disco-s{seed}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS),
                    help=f"config names under --configs (default: {' '.join(SETTINGS)}; also demo)")
    ap.add_argument("--betas", nargs="+", type=float, default=[0.5, 1.0, 5.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--configs", default="configs", help="directory of <setting>.toml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--dp", action="store_true", help="tokens through the token-phase DP mechanism (see above)")
    ap.add_argument("--out", default="benchmarks/results/dko_slots.json")
    args = ap.parse_args()
    overrides = parse_sets(args.set) | ({"dp.enabled": True} if args.dp else {})
    for setting in args.settings:
        if not (Path(args.configs) / f"{setting}.toml").is_file():
            ap.error(f"--settings {setting}: no {Path(args.configs) / setting}.toml")
    t0 = time.perf_counter()
    results, lines, mismatches = [], [], []
    encoder, ws_cache, compared = None, {}, []
    bar = tqdm(total=len(args.settings) * len(args.betas) * len(args.seeds), desc="DKO streams", unit="stream")
    for setting in args.settings:
        for beta in args.betas:
            counts = Counter()
            for seed in args.seeds:
                cfg = load_config(Path(args.configs) / f"{setting}.toml",
                                  {**overrides, "fcit.strategy": "disco", "scenario.beta": beta, "seed": seed})
                # one workspace per task set and data size (the demo and cross-silo configs share a kind)
                key = (cfg.scenario.kind, stream_tasks(cfg), json.dumps(asdict(cfg.data), sort_keys=True, default=str))
                if key not in ws_cache:
                    ws_cache[key] = prepare_workspace(cfg, stream_tasks(cfg), progress=False)
                ws = ws_cache[key]
                if encoder is None:
                    encoder = load_encoder(cfg.fcit.encoder, ws.model_dir)
                r = slots_of_stream(cfg, ws, encoder, dp=args.dp)
                run_dir = _disco_run(setting, beta, seed)
                if not args.dp and (run_dir / "metrics.json").is_file():
                    full = json.loads((run_dir / "metrics.json").read_text())
                    same = _same_outcome(run_dir, full, r)
                    compared.append((setting, beta, seed, same, _dko_keys(full["config"]["fcit"]) == _dko_keys(asdict(cfg.fcit))))
                    if not same and compared[-1][4]:
                        mismatches.append((setting, beta, seed, full["opened_per_stage"], r["opened_per_stage"]))
                results.append({"setting": setting, "beta": beta, "seed": seed, **r})
                counts[r["slots"]] += 1
                bar.update(1)
            units = results[-1]["units"]
            group = results[-len(args.seeds):]
            clean = sum(not r["splits"] and not r["misses"] for r in group)
            lines.append(f"{setting:9s} beta {beta:<4g}: {counts.get(units, 0)}/{len(args.seeds)} seeds open exactly {units} "
                         f"slots, {clean}/{len(args.seeds)} one per new {'task' if cfg.scenario.kind == 'task' else 'capability'} "
                         f"in its first stage; slot counts {dict(sorted(counts.items()))}; "
                         f"{np.mean([r['small_cohort_token_buckets'] for r in group]):.1f} token buckets under k_min, "
                         f"{np.mean([r['incoherent_buckets'] for r in group]):.1f} incoherent buckets and "
                         f"{np.mean([len(r['aborted_stages']) for r in group]):.1f} refused token sums per stream")
            for r in group:
                if r["splits"] or r["misses"]:
                    lines.append(f"    seed {r['seed']}: opened {r['opened_per_stage']}"
                                 + (f"; split at stage(s) {[s + 1 for s in r['splits']]}" if r["splits"] else "")
                                 + (f"; missed at stage(s) {[s + 1 for s in r['misses']]}" if r["misses"] else ""))
    bar.close()
    seconds = time.perf_counter() - t0
    print("\n".join(lines))
    dko = cfg.fcit
    print(f"tau {dko.tau}, n_buckets {dko.n_buckets}, min_open_samples {dko.min_open_samples}, "
          f"encoder {dko.encoder} (of the last setting); {len(results)} streams in {seconds:.0f} s")
    token_dp = None
    if args.dp:  # per setting: each config has its own epsilon, share, tau and buckets
        token_dp = {}
        for setting in args.settings:
            c = load_config(Path(args.configs) / f"{setting}.toml", overrides)
            token_dp[setting] = {"epsilon": c.dp.epsilon, "token_epsilon_share": c.dp.token_epsilon_share,
                                 "noise_multiplier": c.dp.token_noise_multiplier, "token_sigma": c.dp.token_sigma,
                                 "token_count_sigma": c.dp.token_count_sigma, "tau": c.fcit.tau,
                                 "n_buckets": c.fcit.n_buckets}
            print(f"token-phase DP, {setting}: " + ", ".join(f"{k} {v:.4g}" for k, v in token_dp[setting].items()))
    for setting, beta, seed, same, same_config in compared:
        print(f"full run {setting} beta {beta:g} seed {seed} ({'same' if same_config else 'other'} DKO config): "
              f"{same or 'DIFFERENT slots or tokens'}")
    for m in mismatches:
        print(f"MISMATCH with the full run {m[:3]}: full {m[3]} vs token-only {m[4]}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    runs = [{k: v for k, v in r.items() if k != "tokens"} for r in results]
    Path(args.out).write_text(json.dumps({"overrides": args.set, "token_dp": token_dp, "seconds": round(seconds, 1),
                                          "summary": lines, "runs": runs}, indent=1) + "\n")
    return 1 if mismatches else 0


def _dko_keys(fcit: dict) -> tuple:
    """What decides DKO's slots (a run recorded before ``min_open_share`` existed had none: 0)."""
    return (fcit["tau"], fcit["n_buckets"], fcit["min_open_samples"], fcit.get("min_open_share", 0.0), fcit["encoder"],
            fcit["k_min"], fcit["max_slots"])


def _same_outcome(run_dir: Path, full: dict, r: dict) -> str | None:
    """How a full run's DKO outcome compares: ``"identical"`` (slots opened per stage and final
    tokens to 1e-6), ``"same slots"`` (its ``state/``, which git does not keep, is absent), or None."""
    if full.get("opened_per_stage") is None:  # recorded before opened_per_stage existed
        return "same slot count" if full["slots_opened"] == r["slots"] else None
    if full["opened_per_stage"] != r["opened_per_stage"]:
        return None
    path = run_dir / "state" / "tokens.json"
    if not path.is_file():
        return "same slots"
    tokens = np.array(json.loads(path.read_text())["tokens"])
    same = tokens.shape == r["tokens"].shape and bool(np.allclose(tokens, r["tokens"], atol=1e-6))
    return "identical slots and final tokens" if same else None


if __name__ == "__main__":
    sys.exit(main())
