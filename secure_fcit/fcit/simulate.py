"""One FCIT stream in process: 50 Workers and a Coordinator over the in-memory transport.

``run_simulation`` builds the scenario from the config, one shared model with LoRA slots (the
learners take turns on it and exchange only vectors with the round machines), the strategy's
organizer and learners, and runs the sans-IO Coordinator/Worker pair that the TLS deployment runs.
After every stage the global state is evaluated on every stage seen so far; A[t][i] is the mean
score on stage i's tasks after stage t (one task per stage in the task-related streams).

Outputs (``write_simulation``): ``metrics.json``, ``metrics.md``, ``accuracy_matrix.png`` and the
trained global state under ``state/`` (slot vectors as safetensors, tokens and layout as JSON),
which ``fcit.predict`` loads to answer prompts with SSA routing.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.schedule import CAPABILITY_GROUPS, TASK_ORDER, Scenario, build_scenario
from ..dp.client import ClientPrivacy, planned_by_task, planned_rounds
from ..errors import ConfigError
from ..model.encoder import load_encoder
from ..model.loading import weights_sha256
from ..model.slots import SlotLoRA
from ..model.train import TrainSpec
from ..protocols import Coordinator, Worker, run_federation
from ..protocols.factory import DESCRIPTIONS, build_aggregation
from ..protocols.interfaces import ScenarioSchedule
from .dko import DistributedStep, DKOOrganizer
from .learner import EWCLearner, FedProxLearner, OLoRALearner, SlotLearner
from .metrics import summarize
from .organizers import EWC_PARTS, EWCOrganizer, SharedSlotOrganizer
from .report import matrix_markdown, plot_matrix
from .ssa import evaluate_routed
from .workspace import Workspace, describe_device, prepare_workspace, task_metric

__all__ = [
    "SimulationResult", "run_simulation", "write_simulation", "scenario_for", "slot_layout",
    "build_slots", "global_state", "build_learner", "build_organizer", "client_id", "write_state",
    "in_memory_federation", "stream_shortfalls", "learners_for", "largest_client_stage",
]


@dataclass
class SimulationResult:
    strategy: str
    setting: str
    kind: str
    beta: float
    seed: int
    stage_tasks: list[list[str]]
    accuracy_matrix: list[list[float | None]]
    task_scores: list[dict[str, float]]
    summary: dict[str, float]
    slots_opened: int
    opened_per_stage: list[list[int]]
    round_seconds: list[float]
    seconds: float
    releases: list[dict[str, Any]]
    events: dict[str, int]
    state: dict[str, Any]  # tokens, slot vectors, layout: what ``state/`` holds
    refusals: list[dict[str, Any]] = field(default_factory=list)  # who declined which round, and why
    dp: bool = False
    device: str = "cpu"  # where the model ran: "cpu (N threads)" or the CUDA device's name
    model_sha256: str = ""  # the base model's weights (model.loading.weights_sha256)
    shortfalls: list[str] = field(default_factory=list)  # skipped stages/rounds and why (stream_shortfalls)


def stream_shortfalls(events: list[dict[str, Any]]) -> list[str]:
    """Why a stream fell short, one line per skipped stage or round with the reasons its attempts
    were aborted, plus a line when no round was trained at all; empty for a complete stream.

    ``python -m secure_fcit simulate|demo`` and ``python -m secure_fcit.server`` exit non-zero when
    this is not empty: a stream that trained nothing must not look like a success."""
    lines: list[str] = []
    for e in events:
        if e["event"] not in ("stage-skipped", "round-skipped"):
            continue
        tokens = e["event"] == "stage-skipped"
        reasons = list(dict.fromkeys(
            str(a.get("reason", "?"))[:200] for a in events
            if a["event"] == "aborted" and a["stage"] == e["stage"] and (tokens or a["round"] == e["round"])))
        where = (f"stage {e['stage'] + 1} skipped (its token phase never completed)" if tokens
                 else f"stage {e['stage'] + 1} round {e['round'] + 1} skipped")
        lines.append(f"{where}: " + ("; ".join(reasons) if reasons else "no reason recorded"))
    if not any(e["event"] == "applied" for e in events):
        lines.append("no round was trained: not one update was aggregated")
    return lines


def scenario_for(config: Config, ws: Workspace) -> Scenario:
    sc = config.scenario
    tasks = stream_tasks(config)
    sizes = {t: len(ws.train_records(t)) for t in tasks}
    plans = config.stream.plans(sc.setting, sc.clients_per_round) if config.stream.stages else None
    scenario = build_scenario(sc.setting, sc.kind, sizes, sc.n_clients, sc.clients_per_round, sc.beta, config.seed,
                              plans=plans)
    if sc.max_stages and sc.max_stages < len(scenario.stages):
        scenario = replace(scenario, stages=scenario.stages[: sc.max_stages])
    return scenario


def stream_tasks(config: Config) -> tuple[str, ...]:
    """Every task of the run's stream: the config's ``[stream]``, else the benchmark's."""
    if config.stream.stages:
        return config.stream.tasks()
    kind = config.scenario.kind
    return TASK_ORDER if kind == "task" else tuple(t for group in CAPABILITY_GROUPS for t in group)


def slot_layout(config: Config, n_stages: int) -> dict[str, Any]:
    """How the strategy's slots are shaped: what ``SlotLoRA`` to build and how vectors are laid out."""
    fc = config.fcit
    if fc.strategy == "olora":  # one wide LoRA: a rank block per stage
        return {"strategy": "olora", "rank": fc.slot_rank * n_stages, "alpha": fc.slot_alpha * n_stages,
                "targets": fc.slot_targets, "max_slots": 1, "parts": 1}
    return {"strategy": fc.strategy, "rank": fc.slot_rank, "alpha": fc.slot_alpha, "targets": fc.slot_targets,
            "max_slots": fc.max_slots if fc.strategy == "disco" else 1,
            "parts": EWC_PARTS if fc.strategy == "ewc" else 1}


def build_slots(model: torch.nn.Module, layout: dict[str, Any]) -> SlotLoRA:
    return SlotLoRA(model, rank=layout["rank"], alpha=layout["alpha"], targets=layout["targets"],
                    max_slots=layout["max_slots"])


def build_organizer(config: Config, dim: int, slots: SlotLoRA, layout: dict[str, Any], federation_id: str = ""):
    """The strategy's organizer; under distributed DP it decodes noisy gradient sums of the
    federation ``federation_id`` (their rotations are seeded by it) and takes the server step."""
    organizer = _organizer(config, dim, slots, layout)
    dp = config.dp
    if dp.enabled and dp.mode == "distributed":
        if not federation_id:
            raise ConfigError("distributed DP needs the federation id (it seeds the public rotations)")
        momentum = dp.server_momentum if dp.server_optimizer == "momentum" else 0.0
        organizer.use_distributed(DistributedStep(
            federation_id, slots.trainable_index(config.fcit.freeze_lora_a), dp.count_scale, dp.server_lr,
            momentum=momentum, adam=dp.server_optimizer == "adam"))
    return organizer


def _organizer(config: Config, dim: int, slots: SlotLoRA, layout: dict[str, Any]):
    fc = config.fcit
    dko = replace(fc.dko(config.privacy.aggregation), max_slots=layout["max_slots"])
    p, parts = slots.slot_size, layout["parts"]

    def init(slot: int) -> np.ndarray:
        fresh = slots.initial_vector(seed=config.seed * 1009 + slot)
        return np.concatenate([fresh, np.zeros((parts - 1) * p, np.float32)])

    if fc.strategy == "disco":
        return DKOOrganizer(dim, p, dko, slot_init=init)
    if fc.strategy == "ewc":
        return EWCOrganizer(dim, parts * p, dko, slot_init=init)
    return SharedSlotOrganizer(dim, p, dko, slot_init=init)


def build_learner(config: Config, client_id: str, slots: SlotLoRA, encoder, samples: dict, instructions: dict,
                  pad: int, planned: int | dict[str, int], privacy_dir: Path | None = None, noise_prg=None,
                  ledger_key=None, tasks: dict[int, tuple[str, ...]] | None = None) -> SlotLearner:
    """The configured strategy's learner for one client (in process, or in a client process).

    ``ledger_key`` signs the client's spend journal: the client's certificate key in a deployment;
    ``None`` in the in-process simulation, where each ledger makes its key in memory (never on disk,
    so whoever can write ``privacy_dir`` afterwards cannot re-sign a journal). ``tasks``: the task
    labels of the client's samples per stage, for per-task accounting (``dp.per_task``)."""
    fc = config.fcit
    spec = TrainSpec(epochs=fc.local_epochs, batch_size=fc.local_batch_size, lr=fc.lr)
    args = (client_id, slots, encoder, samples, instructions, spec, pad, config.seed)
    kw: dict[str, Any] = {"freeze_a": fc.freeze_lora_a}
    if config.dp.enabled:
        if privacy_dir is None:
            raise ConfigError("dp.enabled needs a folder for the client's spend journal")
        kw["privacy"] = ClientPrivacy(privacy_dir, client_id, config.dp, batch_size=fc.local_batch_size,
                                      local_epochs=fc.local_epochs, lr=fc.lr, planned_rounds=planned,
                                      tasks=tasks if config.dp.per_task else None,
                                      noise_prg=None if noise_prg is None else functools.partial(noise_prg, client_id),
                                      signing_key=ledger_key,
                                      public_rounds=config.dp.planned_rounds or planned_rounds(config, 1),
                                      # one account over the stream: a token per stage the client holds data in
                                      token_stages=None if config.dp.per_task else max(1, len(samples)))
    if fc.strategy == "fedprox":
        return FedProxLearner(*args, mu=fc.fedprox_mu, **kw)
    if fc.strategy == "ewc":
        return EWCLearner(*args, lam=fc.ewc_lambda, rounds_per_stage=fc.rounds_per_stage, **kw)
    if fc.strategy == "olora":
        return OLoRALearner(*args, lam=fc.olora_lambda, block_rank=fc.slot_rank, **kw)
    return SlotLearner(*args, **kw)


def learners_for(config: Config, ws: Workspace, scenario: Scenario, slots: SlotLoRA, encoder,
                 privacy_dir: Path | None = None, noise_prg=None, only: set[int] | None = None) -> dict[int, SlotLearner]:
    """One learner per client of ``scenario`` (only those in ``only`` when given), keyed by index."""
    n_stages = len(scenario.stages)
    pad = ws.processor.tokenizer.pad_token_id
    per_client: dict[int, tuple[dict, dict, dict]] = {}
    for stage in scenario.stages:
        for client, parts in stage.client_data.items():
            if only is not None and client not in only:
                continue
            samples, instructions, tasks = per_client.setdefault(client, ({}, {}, {}))
            encoded = [ws.train_samples(task)[int(i)] for task, idx in parts for i in idx]
            samples[stage.index] = encoded
            instructions[stage.index] = [ws.train_records(task)[int(i)].turns[0][0] for task, idx in parts for i in idx]
            tasks[stage.index] = tuple(dict.fromkeys(task for task, idx in parts if len(idx)))

    def planned(tasks: dict[int, tuple[str, ...]]) -> int | dict[str, int]:
        return planned_by_task(config, tasks, n_stages) if config.dp.per_task else planned_rounds(config, n_stages)

    return {
        client: build_learner(config, client_id(client), slots, encoder, samples, instructions, pad, planned(tasks),
                              privacy_dir, noise_prg, tasks=tasks)
        for client, (samples, instructions, tasks) in sorted(per_client.items())
    }


def largest_client_stage(scenario: Scenario) -> int:
    """The most samples one client holds in one stage (what a distributed-DP encoding must fit)."""
    return max((sum(len(idx) for _, idx in parts) for stage in scenario.stages for parts in stage.client_data.values()),
               default=1)


def in_memory_federation(config: Config, fed_id: str, scenario: Scenario, organizer, learners: dict[int, Any],
                         decryption_log: Path | None = None):
    """The Coordinator and one Worker per learner (keyed by client index) over ``scenario``, with
    the configured aggregation; returns (coordinator, workers, aggregation) for ``run_federation``."""
    aggregation = build_aggregation(config.privacy, [client_id(c) for c in learners], decryption_log=decryption_log)
    coordinator = Coordinator(
        fed_id, ScenarioSchedule(scenario, client_id), aggregation.factory,
        organizer, organizer.slot_size, config.fcit.rounds_per_stage, np.random.default_rng(config.seed),
        dp=config.dp.enabled,
    )
    workers = [Worker(fed_id, client_id(c), learner, aggregation.clients[client_id(c)], **worker_options(config))
               for c, learner in learners.items()]
    return coordinator, workers, aggregation


def worker_options(config: Config) -> dict[str, Any]:
    """What a worker checks the coordinator against, from the client's own configuration."""
    return {"min_cohort": config.privacy.min_cohort, "n_buckets": config.fcit.n_buckets,
            "tau": config.fcit.tau, "max_attempt": config.privacy.max_attempt}


def client_id(client: int) -> str:
    """The wire id of simulation client ``client``: ``client-007``."""
    return f"client-{client:03d}"


def global_state(organizer, layout: dict[str, Any], lora_size: int) -> dict[str, Any]:
    """The trained global model as plain arrays: LoRA slot vectors and identity tokens."""
    weights = organizer.global_weights(list(range(organizer.n_slots)))[:, :lora_size]
    return {"layout": {**layout, "slot_size": lora_size}, "tokens": organizer.tokens, "slots": weights}


def _evaluator(config: Config, ws: Workspace, slots: SlotLoRA, encoder) -> Callable[[dict, list[str]], dict[str, float]]:
    def evaluate(state: dict[str, Any], tasks: list[str]) -> dict[str, float]:
        if state["slots"].shape[0] == 0:  # no slot opened yet: the base model (an all-zero slot)
            state = {**state, "slots": np.zeros((1, slots.slot_size), np.float32),
                     "tokens": np.ones((1, encoder.dim), np.float32)}
        ids = list(range(state["slots"].shape[0]))
        for s in ids:
            slots.load_slot(s, state["slots"][s])
        scores = {}
        for task in tasks:
            res = evaluate_routed(
                slots, ws.processor, encoder, state["tokens"], ids, ws.test_records(task), task_metric(config, task),
                max_new_tokens=ws.max_new_tokens(task), batch_size=config.eval.batch_size,
                temperature=config.fcit.ssa_temperature,
            )
            scores[task] = res.score
        return scores

    return evaluate


def run_simulation(config: Config, progress: bool = True, log: Callable[[str], None] = print,
                   privacy_dir: Path | None = None, decryption_log: Path | None = None,
                   noise_prg: Callable[[str, int, int], Any] | None = None, backend: str = "memory",
                   ray_options: Any = None) -> SimulationResult:
    """Run the configured strategy over the configured FCIT stream; see the module docstring.

    ``backend``: "memory" (every worker in this process) or "ray" (workers in Ray actors,
    ``ray_options`` a `fcit.ray_backend.RayOptions`; the coordinator stays here).

    Under CKKS every decryption is logged (JSON lines) to ``decryption_log``, by default
    ``privacy_dir/decryptions.jsonl`` when there is a ``privacy_dir``.

    With ``dp.enabled`` every client trains with DP-SGD and keeps its spend journal and accountant
    under ``privacy_dir/<client id>/`` (required then; an existing ledger is continued, never reset).
    """
    if config.dp.enabled and privacy_dir is None:
        raise ConfigError("dp.enabled needs a folder for the clients' spend journals (privacy_dir)")
    t0 = time.perf_counter()
    sc, fc = config.scenario, config.fcit
    ws = prepare_workspace(config, stream_tasks(config), progress=progress)
    scenario = scenario_for(config, ws)
    n_stages = len(scenario.stages)
    model, _ = ws.base_model()
    torch.manual_seed(config.seed)
    layout = slot_layout(config, n_stages)
    slots = build_slots(model, layout)
    encoder = load_encoder(fc.encoder, ws.model_dir)
    fed_id = f"sim-{sc.setting}-{sc.kind}-{fc.strategy}"
    organizer = build_organizer(config, encoder.dim, slots, layout, fed_id)
    if config.dp.enabled and config.dp.mode == "distributed":  # refused before any round: wrap, shares
        from ..dp.distributed import check_encoding

        check_encoding(config, int(organizer.distributed.dim), largest_client_stage(scenario))
    decryption_log = decryption_log or (None if privacy_dir is None else privacy_dir / "decryptions.jsonl")
    if backend == "ray":
        from .ray_backend import RayOptions, ray_federation

        if noise_prg is not None:
            raise ConfigError("noise_prg is a test hook of the in-memory backend; the Ray backend draws DP noise "
                              "from os.urandom in each actor")
        coordinator, network, description, hosts = ray_federation(
            config, fed_id, scenario, organizer, ray_options or RayOptions(), privacy_dir, decryption_log)
        n_workers = len(network.hosts)
        federate = network.run
    elif backend == "memory":
        learners = learners_for(config, ws, scenario, slots, encoder, privacy_dir, noise_prg)
        coordinator, workers, aggregation = in_memory_federation(
            config, fed_id, scenario, organizer, learners, decryption_log=decryption_log)
        description, n_workers = "", len(workers)
        federate = functools.partial(run_federation, coordinator, workers)
    else:
        raise ConfigError(f"backend must be 'memory' or 'ray', got {backend!r}")
    evaluate = _evaluator(config, ws, slots, encoder)
    stage_tasks = [list(stage.tasks) for stage in scenario.stages]
    matrix: list[list[float | None]] = []
    task_scores: list[dict[str, float]] = []
    round_seconds: list[float] = []
    bar = tqdm(total=n_stages * fc.rounds_per_stage, desc=f"{fc.strategy} {sc.setting}-{sc.kind}",
               unit="round", disable=not progress)
    clock = {"t": time.perf_counter(), "applied": 0}
    log(f"{fed_id}: {n_workers} workers, {n_stages} stages x {fc.rounds_per_stage} rounds, "
        f"slot size {organizer.slot_size}")
    log(f"aggregation: {DESCRIPTIONS[config.privacy.aggregation]}")
    if backend == "ray":
        log(description)
    if config.dp.enabled:
        dp = config.dp
        sigma = "derived per round" if dp.noise_multiplier is None else f"{dp.noise_multiplier:g}"
        log(f"DP-SGD: epsilon_max {dp.epsilon:g}, delta {dp.delta:g} per client ({dp.accountant.upper()} cap), "
            f"C {dp.max_grad_norm:g}, sigma {sigma}, "
            + ("per-task accounting (the maximum over a client's tasks), planned rounds per task "
               f"{planned_rounds(config, 1)}; " if dp.per_task else
               f"one account per client over the stream, planned rounds {planned_rounds(config, n_stages)}; ")
            + f"journals in {privacy_dir}")

    def on_boundary(coord: Coordinator) -> None:
        applied = sum(1 for e in coord.events if e["event"] == "applied")
        if applied > clock["applied"]:
            round_seconds.append(time.perf_counter() - clock["t"])
            bar.update(applied - clock["applied"])
            clock["applied"] = applied
        stage = coord.position[0]
        if coord.state == "before-stage" and stage > len(matrix):
            done = stage - 1
            seen = list(dict.fromkeys(t for tasks in stage_tasks[: done + 1] for t in tasks))
            scores = evaluate(global_state(organizer, layout, slots.slot_size), seen)
            row = [float(np.mean([scores[t] for t in stage_tasks[i]])) for i in range(done + 1)]
            matrix.append(row + [None] * (n_stages - done - 1))
            task_scores.append(scores)
            bar.set_postfix(stage=done + 1, slots=organizer.n_slots, mean=f"{np.mean(row):.1f}")
            log(f"after stage {done + 1}/{n_stages}: " + ", ".join(f"{t} {s:.1f}" for t, s in scores.items()))
        clock["t"] = time.perf_counter()

    try:
        history = federate(on_boundary=on_boundary)
    finally:
        bar.close()
        if backend == "ray":
            import ray

            for host in hosts:
                ray.kill(host)
    if not coordinator.done or len(matrix) != n_stages:
        raise ConfigError(f"the federation stopped after {len(matrix)} of {n_stages} stages")
    for e in history.of("planned"):
        if not e["active"]:
            log(f"WARNING: stage {e['stage'] + 1} trained no slot: every token bucket was withheld, "
                f"incoherent or under fcit.min_open_samples / fcit.min_open_share (undersized: {e['undersized_buckets']})")
    counts: dict[str, int] = {}
    for e in history.events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    releases = [asdict(r) for r in organizer.releases]
    refusals = [{"stage": e["stage"], "round": e["round"], "client": e["peer"], "reason": e["reason"]}
                for e in history.of("refusal")]
    state = global_state(organizer, layout, slots.slot_size)
    return SimulationResult(
        strategy=fc.strategy, setting=sc.setting, kind=sc.kind, beta=sc.beta, seed=config.seed,
        stage_tasks=stage_tasks, accuracy_matrix=matrix, task_scores=task_scores, summary=summarize(matrix),
        slots_opened=organizer.n_slots if fc.strategy == "disco" else 0,
        opened_per_stage=[list(e["opened"]) for e in history.of("planned")], round_seconds=round_seconds,
        seconds=time.perf_counter() - t0, releases=releases, events=counts, state=state, refusals=refusals,
        dp=config.dp.enabled, device=describe_device(ws.device), model_sha256=weights_sha256(ws.model_dir),
        shortfalls=stream_shortfalls(history.events),
    )


def write_simulation(result: SimulationResult, config: Config, out: Path) -> list[Path]:
    """Write metrics.json, metrics.md, accuracy_matrix.png and the global state under ``out``."""
    out = Path(out)
    (out / "state").mkdir(parents=True, exist_ok=True)
    labels = [" + ".join(t) for t in result.stage_tasks]
    rnd = lambda v: None if v is None else round(float(v), 2)  # noqa: E731
    metrics = {
        "strategy": result.strategy,
        "setting": f"{result.setting}-{result.kind}",
        "beta": result.beta,
        "seed": result.seed,
        "stages": result.stage_tasks,
        "accuracy_matrix": [[rnd(v) for v in row] for row in result.accuracy_matrix],
        **{k: round(v, 2) for k, v in result.summary.items()},
        "slots_opened": result.slots_opened,
        "opened_per_stage": result.opened_per_stage,
        "round_seconds": [round(s, 2) for s in result.round_seconds],
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "model_sha256": result.model_sha256,
        "task_scores": [{k: round(v, 2) for k, v in row.items()} for row in result.task_scores],
        "small_cohort_releases": result.releases,
        "dp": result.dp,
        "refusals": result.refusals,
        "events": result.events,
        "shortfalls": result.shortfalls,
        "config": {k: asdict(getattr(config, k)) for k in ("scenario", "fcit", "lora", "data", "dp", "privacy")},
    }
    paths = [out / "metrics.json", out / "metrics.md", out / "accuracy_matrix.png"]
    paths[0].write_text(json.dumps(metrics, indent=2) + "\n")
    s = result.summary
    md = [
        f"# {result.strategy} on {result.setting}-{result.kind}, beta {result.beta}, seed {result.seed}",
        "",
        f"Last **{s['last']:.2f}**, Avg **{s['avg']:.2f}**, Forgetting {s['forgetting']:.2f}, "
        f"BWT {s['bwt']:.2f}; slots opened {result.slots_opened}; {result.seconds:.0f} s "
        + (f"(mean round {np.mean(result.round_seconds):.1f} s)" if result.round_seconds else "(no round trained)")
        + f"; small-cohort releases {len(result.releases)}; "
        f"aggregation {config.privacy.aggregation}.",
        "",
        matrix_markdown(metrics["accuracy_matrix"], labels),
        "",
    ]
    paths[1].write_text("\n".join(md))
    plot_matrix(metrics["accuracy_matrix"], labels, paths[2],
                f"{result.strategy}, {result.setting}-{result.kind}, beta {result.beta}")
    return paths + write_state(result.state, config, out / "state")


def write_state(state: dict[str, Any], config: Config, folder: Path) -> list[Path]:
    """The trained global state: slot vectors (safetensors) and tokens + layout (JSON), for ``predict``."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"slot{i}": np.ascontiguousarray(v) for i, v in enumerate(state["slots"])},
              str(folder / "slots.safetensors"))
    (folder / "tokens.json").write_text(json.dumps({
        "layout": state["layout"],
        "tokens": np.asarray(state["tokens"], dtype=np.float64).round(8).tolist(),
        "ssa_temperature": config.fcit.ssa_temperature,
        "encoder": config.fcit.encoder,
        "model": asdict(config.model),
    }, indent=1) + "\n")
    return [folder / "slots.safetensors", folder / "tokens.json"]

