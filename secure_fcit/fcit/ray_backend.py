"""``simulate --backend ray``: the stream's workers in Ray actors, the Coordinator in the driver.

What runs where:

- **Driver** (the ``simulate`` process): the Coordinator, the organizer (DKO / the baselines), the
  evaluation after each stage, and the coordinator's side of the secure sum, which holds only
  public keys (the Ed25519 directory; under CKKS the public context: CKKS needs a
  ``privacy.ckks_keys`` folder, whose secret context only the actors read).
- **Actors** (`ClientHost`, one per core by default): each holds a share of the clients, their
  data, their learners, their own copy of the base model, their DP journals, and their side of the
  secure sum. Each client's signing key is made inside its actor; only the public half leaves it.
- **Between them**: the codec's bytes (`protocols.ray_transport.RayNetwork`), exactly the messages
  the in-memory and TLS transports carry. The sans-IO Coordinator and Worker machines are the same.

A client's round is deterministic given its data, the global weights and the public seed
(non-private training, plaintext or masking), so a Ray run equals the in-memory run bit for bit
(``tests/integration/test_ray_backend.py``); masking sums are exact in the integer domain and the
plaintext sum adds in a fixed order.

Actors on one node share the node's model and benchmark cache: the driver builds it first, and
actors prepare it under a file lock. Every node of a cluster needs secure-fcit installed (the same
version) and ``model.cache_dir`` (or the default cache) reachable; the embedded model ships with
the package, so a node without the cache copies it in seconds.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, ProtocolError

__all__ = ["RayOptions", "parse_resources", "ClientHost", "assign_clients", "ray_federation"]

_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")


@dataclass(frozen=True)
class RayOptions:
    """Where and how the actors run (``simulate --backend ray``)."""

    #: ``None``: start a local Ray instance; ``"auto"``: the cluster this node belongs to; or
    #: ``HOST:PORT`` / ``ray://HOST:PORT``.
    address: str | None = None
    #: resources of one actor, e.g. {"num_cpus": 1, "num_gpus": 0.25}
    resources: Mapping[str, float] = field(default_factory=lambda: {"num_cpus": 1.0})
    #: actors in the pool (None: as many as the cluster's free CPUs (GPUs) allow, at most one per client)
    actors: int | None = None


def parse_resources(text: str) -> dict[str, float]:
    """``num_cpus=1,num_gpus=0.1`` -> {"num_cpus": 1.0, "num_gpus": 0.1}; unknown keys are refused."""
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _RESOURCE_KEYS:
            raise ConfigError(f"--client-resources: {item!r} is not KEY=VALUE with KEY one of {', '.join(_RESOURCE_KEYS)}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--client-resources: {key}={value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"--client-resources: {key} must be a finite number >= 0, got {value!r}")
        out[key] = number
    if out.get("num_cpus", 1.0) <= 0 and out.get("num_gpus", 0.0) <= 0:
        raise ConfigError("--client-resources: an actor needs num_cpus > 0 or num_gpus > 0")
    return {"num_cpus": 1.0, **out}


def assign_clients(clients: Sequence[int], n_actors: int) -> list[list[int]]:
    """Client indices dealt round-robin to ``n_actors`` hosts (none left empty)."""
    n = min(int(n_actors), len(clients))
    if n < 1:
        raise ConfigError(f"a Ray pool needs at least one actor and one client, got {n_actors} actors, "
                          f"{len(clients)} clients")
    ordered = sorted(clients)
    return [ordered[i::n] for i in range(n)]


class ClientHost:
    """The clients of one actor: data, learners, aggregator sides and Workers on the actor's own
    model. Plain Python; ``ray_federation`` wraps it with ``ray.remote``."""

    def __init__(self, config: Config, clients: Sequence[int], federation_id: str, privacy_dir: str | None,
                 threads: int = 1) -> None:
        import torch

        from ..model.encoder import load_encoder
        from ..protocols.secagg import make_identities
        from .simulate import build_slots, client_id, learners_for, scenario_for, slot_layout, stream_tasks
        from .workspace import prepare_workspace

        torch.set_num_threads(max(1, int(threads)))
        self.config = config
        self.federation_id = federation_id
        ws = _locked_workspace(config, stream_tasks(config), prepare_workspace)
        scenario = scenario_for(config, ws)
        model, _ = ws.base_model()
        torch.manual_seed(config.seed)  # as the in-memory run does before building the slots
        slots = build_slots(model, slot_layout(config, len(scenario.stages)))
        encoder = load_encoder(config.fcit.encoder, ws.model_dir)
        self.learners = learners_for(config, ws, scenario, slots, encoder,
                                     None if privacy_dir is None else Path(privacy_dir), only=set(clients))
        ids = [client_id(c) for c in self.learners]
        missing = sorted(set(clients) - set(self.learners))
        if missing:
            raise ConfigError(f"clients {missing} hold no data in this stream")
        self._identities = {} if config.privacy.aggregation == "plaintext" else make_identities(ids)[0]
        self.workers: dict[str, Any] = {}
        self.pid = os.getpid()

    def public_keys(self) -> dict[str, bytes]:
        """{client id: Ed25519 public key} of this host's clients (empty under plaintext)."""
        return {c: i.public for c, i in self._identities.items()}

    def attach(self, directory: Mapping[str, bytes], decryption_log: str | None = None) -> int:
        """Build each client's Worker against the federation's public ``directory``; returns its pid.
        Under CKKS each actor reads the secret context from ``privacy.ckks_keys`` itself."""
        from ..protocols.factory import ckks_key_pair, client_aggregator
        from ..protocols.worker import Worker
        from .simulate import client_id, worker_options

        ckks_secret = ckks_key_pair(self.config.privacy)[0] if self.config.privacy.aggregation == "ckks" else b""
        log = None if decryption_log is None else Path(decryption_log)
        for c, learner in self.learners.items():
            cid = client_id(c)
            agg = client_aggregator(self.config.privacy, cid, self._identities.get(cid), directory, ckks_secret, log)
            self.workers[cid] = Worker(self.federation_id, cid, learner, agg, **worker_options(self.config))
        return self.pid

    def peak_rss_mb(self) -> float:
        """This actor process's peak resident memory (MiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def deliver(self, client: str, data: bytes) -> tuple[list[bytes], str | None]:
        """One message for ``client``: (its encoded replies, None), or ([], why it hung up)."""
        from ..protocols.codec import encode

        worker = self.workers.get(client)
        if worker is None:
            return [], f"{client} is not hosted here"
        try:
            replies = worker.receive_bytes(data)
        except ProtocolError as exc:
            return [], str(exc)
        return [encode(r) for r in replies], None


def _locked_workspace(config: Config, tasks, prepare):
    """``prepare(config, tasks)`` under an exclusive lock on the cache folder: the actors of one node
    share it, and the first builds what is missing while the others wait."""
    from .workspace import default_cache_dir

    cache = Path(config.model.cache_dir) if config.model.cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".prepare.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return prepare(config, tasks, progress=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _init_ray(options: RayOptions):
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'secure-fcit[ray]'") from None
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": "WARNING", "configure_logging": True}
        if options.address:
            ray.init(address=options.address, **kw)
        else:
            ray.init(**kw)
    return ray


def pool_size(options: RayOptions, n_clients: int, nodes: Sequence[Mapping[str, float]]) -> int:
    """The pool: ``options.actors``, else as many actors as the cluster's ``nodes`` (each one's
    resources) hold at once, at most one per client. An actor lives on one node, so a pool that
    only the sum of the nodes could hold is refused: its last actors would wait forever."""
    room = 0
    for node in nodes:
        fits = [int(float(node.get(resource, 0.0)) / float(options.resources.get(key, 0.0)) + 1e-9)
                for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"))
                if float(options.resources.get(key, 0.0)) > 0]
        room += min(fits) if fits else n_clients
    if options.actors is None:
        if room < 1:
            raise ConfigError(f"no node of the Ray cluster ({[dict(n) for n in nodes]}) fits an actor of "
                              f"{dict(options.resources)}; lower --client-resources")
        return min(room, n_clients)
    if isinstance(options.actors, bool) or int(options.actors) < 1:
        raise ConfigError(f"--actors must be >= 1, got {options.actors!r}")
    n = min(int(options.actors), n_clients)
    if n > room:
        raise ConfigError(f"--actors {n} of {dict(options.resources)} each do not fit the Ray cluster's nodes "
                          f"({[dict(n) for n in nodes]}): they hold {room} at once; lower --actors or "
                          f"--client-resources")
    return n


#: How long the pool may take to start (imports, model load, data) before the run gives up.
START_TIMEOUT_S = 600.0


def ckks_public(privacy) -> bytes:
    """The public CKKS context for the driver. The Ray backend needs ``privacy.ckks_keys`` (a
    ``keys init`` folder every actor can read): the actors read the secret context there, and the
    driver, which runs the coordinator, reads only the public one."""
    from ..protocols.ckks import PUBLIC_FILE

    if not privacy.ckks_keys:
        raise ConfigError("CKKS on the Ray backend needs privacy.ckks_keys (run `python -m secure_fcit keys init`): "
                          "the actors read the secret context there, and the driver, where the coordinator runs, "
                          "must never hold it")
    path = Path(privacy.ckks_keys) / PUBLIC_FILE
    if not path.is_file():
        raise ConfigError(f"privacy.ckks_keys: {path} is missing (run keys init)")
    return path.read_bytes()


def ray_federation(config: Config, federation_id: str, scenario, organizer, options: RayOptions,
                   privacy_dir: Path | None = None, decryption_log: Path | None = None):
    """The Coordinator (here) and a pool of `ClientHost` actors (in Ray) for ``scenario``; returns
    (coordinator, network, description, hosts) for ``network.run``."""
    import numpy as np

    from ..protocols import Coordinator
    from ..protocols.factory import coordinator_factory
    from ..protocols.interfaces import ScenarioSchedule
    from ..protocols.ray_transport import RayNetwork
    from .simulate import client_id

    public = ckks_public(config.privacy) if config.privacy.aggregation == "ckks" else b""
    ray = _init_ray(options)
    clients = sorted({c for stage in scenario.stages for c in stage.client_data})
    n = pool_size(options, len(clients), [node["Resources"] for node in ray.nodes() if node["Alive"]])
    resources = dict(options.resources)
    remote = ray.remote(ClientHost).options(**resources, max_restarts=0, max_task_retries=0)
    threads = max(1, int(resources.get("num_cpus", 1.0)))
    groups = assign_clients(clients, n)
    hosts = [remote.remote(config, group, federation_id, None if privacy_dir is None else str(privacy_dir), threads)
             for group in groups]
    directory: dict[str, bytes] = {}
    try:
        for keys in ray.get([h.public_keys.remote() for h in hosts], timeout=START_TIMEOUT_S):
            directory.update(keys)
        log = None if decryption_log is None else str(decryption_log)
        pids = ray.get([h.attach.remote(directory, log) for h in hosts], timeout=START_TIMEOUT_S)
    except BaseException as exc:
        for h in hosts:
            ray.kill(h)
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise ConfigError(f"the {n} Ray actors did not start within {START_TIMEOUT_S:g} s; is the cluster "
                              f"busy, or short of {dict(resources)} per actor?") from None
        raise
    factory = coordinator_factory(config.privacy, directory, public)
    coordinator = Coordinator(
        federation_id, ScenarioSchedule(scenario, client_id), factory, organizer, organizer.slot_size,
        config.fcit.rounds_per_stage, np.random.default_rng(config.seed), dp=config.dp.enabled,
    )
    by_client = {client_id(c): h for group, h in zip(groups, hosts, strict=True) for c in group}
    placement = ", ".join(f"{k}={v:g}" for k, v in resources.items())
    description = (f"Ray backend: {len(clients)} clients in {n} actors ({placement} each; pids "
                   f"{', '.join(str(p) for p in pids)}), coordinator in the driver")
    return coordinator, RayNetwork(coordinator, by_client), description, hosts
