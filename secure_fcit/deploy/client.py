"""A client process: its own data, keys, DP accountant and spend journal, and the sans-IO ``Worker``
driven over mutual TLS 1.3.

``FederationClient`` loads the client's LLaVA-JSON data per stage (``<data>/stage-NN/train.json``),
builds the configured strategy's learner on the model, signs secure-sum messages with the private
key of its own certificate, and answers the coordinator's rounds. It keeps under ``<state>/``:

- ``privacy/<id>/``: the spend journal and accountant (DP on), continued across restarts; a round
  over the budget is refused, with the reason sent to the server and printed here;
- ``worker.json``: the round machine between phases (atomically replaced), so a client that lost
  its connection or was restarted rejoins at the last boundary it saw.

It connects with exponential backoff (0.5 s doubling to ``deploy.backoff_max``) and reconnects after
any loss; it exits when the server says the stream is finished.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..crypto.certs import client_directory, load_private_key, load_revoked
from ..data.llava_json import load_train
from ..dp.journal import atomic_write_json
from ..errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ..protocols.codec import encode
from ..protocols.tls import client_context, connect
from ..protocols.worker import Worker
from .common import CertFolder, client_aggregation, model_dir_for, n_stages_for, parse_control
from .gate import set_keepalive
from .roster import stage_dir

__all__ = ["FederationClient", "load_client_data"]


def load_client_data(data: str | Path, n_stages: int, processor
                     ) -> tuple[dict[int, list], dict[int, list[str]], dict[int, tuple[str, ...]]]:
    """Encoded samples, instructions and task labels per stage from ``<data>/stage-NN/train.json``
    (absent: no data) and the optional ``stage-NN/tasks.json`` (a JSON list of the task names of
    that stage's samples, for per-task accounting; absent: the stage composes with every other)."""
    from ..fcit.evaluate import encode_train_records

    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"client data folder {root} does not exist")
    samples: dict[int, list] = {}
    instructions: dict[int, list[str]] = {}
    tasks: dict[int, tuple[str, ...]] = {}
    for stage in range(n_stages):
        path = stage_dir(root, stage) / "train.json"
        if not path.is_file():
            continue
        labels = path.with_name("tasks.json")
        if labels.is_file():
            try:
                names = json.loads(labels.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{labels}: not readable JSON ({exc})") from None
            if not isinstance(names, list) or not names or not all(isinstance(t, str) and t for t in names):
                raise ConfigError(f"{labels}: must be a non-empty JSON list of task names")
            tasks[stage] = tuple(dict.fromkeys(names))
        records = load_train(path)
        samples[stage] = encode_train_records(processor, records, desc=f"stage {stage}")
        instructions[stage] = [r.turns[0][0] for r in records]
    if not samples:
        raise ConfigError(f"client data folder {root} holds no stage-NN/train.json for the {n_stages} stages")
    return samples, instructions, tasks


def _snapshot_json(snap: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": snap["client_id"], "state": snap["state"],
        "stage_key": snap["stage_key"], "round_key": snap["round_key"],
        "tokens": np.asarray(snap["tokens"], np.float32).tolist(),
        "active": list(snap["active"]),
        "token": None if snap["token"] is None else np.asarray(snap["token"], np.float64).tolist(),
        "n_samples": snap["n_samples"],
        "slots": [[s, r, slot] for (s, r), slot in snap["slots"].items()],
        "started": None if snap.get("started") is None else list(snap["started"]),
        "released": _released_json(snap.get("released", {})),
    }


def _released_json(released: dict[tuple[int, int, str], int]) -> list[list[Any]]:
    return [[s, r, phase, attempt] for (s, r, phase), attempt in sorted(released.items())]


def _released_from_json(raw: list[list[Any]]) -> dict[tuple[int, int, str], int]:
    return {(int(s), int(r), str(phase)): int(attempt) for s, r, phase, attempt in raw}


def _snapshot_from_json(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": raw["client_id"], "state": raw["state"],
        "stage_key": None if raw["stage_key"] is None else tuple(raw["stage_key"]),
        "round_key": None if raw["round_key"] is None else tuple(raw["round_key"]),
        "tokens": np.asarray(raw["tokens"], np.float32).reshape(len(raw["tokens"]), -1)
        if raw["tokens"] else np.zeros((0, 1), np.float32),
        "active": tuple(raw["active"]),
        "token": None if raw["token"] is None else np.asarray(raw["token"], np.float64),
        "n_samples": int(raw["n_samples"]),
        "slots": {(int(s), int(r)): int(slot) for s, r, slot in raw["slots"]},
        "started": None if raw.get("started") is None else tuple(raw["started"]),
        "released": _released_from_json(raw.get("released", [])),
    }


class FederationClient:
    """See the module docstring."""

    def __init__(self, config: Config, client_id: str, data: str | Path, state_dir: str | Path, *,
                 certs: str | None = None, log: Callable[[str], None] | None = None,
                 noise_prg: Callable[[str, int, int], Any] | None = None) -> None:
        from ..dp.client import planned_by_task, planned_rounds
        from ..fcit.simulate import build_learner, build_slots, slot_layout
        from ..model.encoder import load_encoder
        from ..model.loading import load_llava

        self.config = config
        self.client_id = client_id
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.certs = CertFolder.from_config(config, certs, holder=client_id)
        self.federation_id = self.certs.federation_id
        self._print = log or (lambda m: print(m, file=sys.stderr, flush=True))
        cert, key = self.certs.client(client_id)
        if not cert.is_file() or not key.is_file():
            raise ConfigError(f"no certificate for {client_id!r} in {self.certs.root} "
                              f"(run `python -m secure_fcit certs issue --client {client_id}`)")
        self._tls = client_context(self.certs.ca, cert, key, crl=self.certs.crl)
        n_stages = n_stages_for(config)
        # Every peer's identity key, each certificate checked against the federation CA: the
        # coordinator cannot substitute a key it controls.
        crl = self.certs.crl  # a revoked peer's key is not in the directory: its signatures count nowhere
        revoked = load_revoked(crl, self.certs.ca) if crl is not None else frozenset()
        directory = client_directory(self.certs.root, _roster_ids(self.certs.root), revoked)
        if client_id not in directory:
            raise ConfigError(f"{client_id!r} is not enrolled in {self.certs.root / 'clients'}")
        identity_key = load_private_key(key)  # also signs the spend journal (verified against the certificate)
        aggregator = client_aggregation(config, client_id, identity_key, directory,
                                        decryption_log=self.state_dir / "decryptions.jsonl")
        model_dir = model_dir_for(config)
        model, processor = load_llava(model_dir)
        slots = build_slots(model, slot_layout(config, n_stages))
        encoder = load_encoder(config.fcit.encoder, model_dir)
        samples, instructions, tasks = load_client_data(data, n_stages, processor)
        planned = planned_by_task(config, tasks, n_stages) if config.dp.per_task else planned_rounds(config, n_stages)
        self.learner = build_learner(config, client_id, slots, encoder, samples, instructions,
                                     processor.tokenizer.pad_token_id, planned,
                                     self.state_dir / "privacy", noise_prg, ledger_key=identity_key, tasks=tasks)
        self._released_path = self.state_dir / "released.json"
        self.worker = self._new_worker(aggregator)
        self._snapshot_path = self.state_dir / "worker.json"
        self._boundary = self.worker.snapshot()
        if self._snapshot_path.is_file():
            try:
                self._boundary = _snapshot_from_json(json.loads(self._snapshot_path.read_text()))
                self.worker.restore(self._boundary)
            except (ValueError, KeyError, TypeError, LocalProtocolError) as exc:
                raise ConfigError(f"{self._snapshot_path} is not a worker snapshot of {client_id!r}: {exc}") from None
        self._started_path = self.state_dir / "started.json"
        if self._started_path.is_file():
            self.worker.mark_started(tuple(json.loads(self._started_path.read_text())["started"]))
        if self._released_path.is_file():  # a release outlives any snapshot: never send an input twice
            self.worker.restore_released(_released_from_json(json.loads(self._released_path.read_text())))
        self.rounds_trained = 0
        self.refusals: list[str] = []

    def log(self, line: str) -> None:
        self._print(f"[{time.strftime('%H:%M:%S')}] {self.client_id}: {line}")

    def _keep_boundary(self) -> None:
        if self.worker.state in ("idle", "ready"):
            snap = self.worker.snapshot()
            atomic_write_json(self._snapshot_path, _snapshot_json(snap))
            self._boundary = snap

    def _rewind(self) -> None:
        """Back to the last boundary: the server dropped us from whatever phase was in flight."""
        started = self.worker.started  # in memory what started.json holds: never begin a sum twice
        released = dict(self.worker.released)
        self.worker = self._new_worker(self.worker.aggregator)
        self.worker.restore(self._boundary)
        self.worker.mark_started(started)
        self.worker.restore_released(released)

    def _new_worker(self, aggregator) -> Worker:
        from ..fcit.simulate import worker_options

        return Worker(self.federation_id, self.client_id, self.learner, aggregator,
                      max_message_size=self.config.deploy.max_message_size,
                      on_release=lambda released: atomic_write_json(self._released_path, _released_json(released)),
                      **worker_options(self.config))

    async def run(self) -> int:
        """Serve rounds until the server says the stream is finished; 0 then, 1 when it gave up."""
        d = self.config.deploy
        delay, started = 0.5, time.monotonic()
        while True:
            try:
                conn = await connect(d.host, d.port, self._tls, federation_id=self.federation_id,
                                     max_size=d.max_message_size, timeout=d.read_timeout)
            except RemoteProtocolError as exc:
                reason = str(exc)
                if "the server refused:" in reason or "CERTIFICATE_VERIFY_FAILED" in reason:
                    # a version or federation mismatch, not enrolled, a server of another CA:
                    # retrying cannot help, so say why and stop
                    self.log(f"cannot join: {reason}")
                    return 2
                if d.give_up_after and time.monotonic() - started > d.give_up_after:
                    self.log(f"giving up after {d.give_up_after:g} s: {reason}")
                    return 1
                self.log(f"server not reachable ({reason}); retrying in {delay:g} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, d.backoff_max)
                continue
            self.log(f"connected to {d.host}:{d.port}")
            set_keepalive(conn.writer, d.keepalive)
            delay, started = 0.5, time.monotonic()
            finished = await self._session(conn)
            await conn.close()
            if finished:
                self.log(f"the stream is finished: {self.rounds_trained} rounds trained this run, "
                         f"{len(self.refusals)} refused")
                return 0
            self._rewind()

    async def _session(self, conn) -> bool:
        from ..protocols.tls import read_frame

        d = self.config.deploy
        while True:
            try:
                data = await read_frame(conn.reader, d.max_message_size, d.read_timeout, idle=None)
            except RemoteProtocolError as exc:
                self.log(f"connection lost ({exc}); reconnecting")
                return False
            control = parse_control(data)
            if control is not None:
                if control.get("bye") == "finished":
                    return True
                self.log(f"the server ended the session: {str(control.get('bye', control))[:300]}; reconnecting")
                return False
            started = self.worker.started
            try:
                replies = await asyncio.to_thread(self.worker.receive_bytes, data)
            except ProtocolError as exc:
                self.log(f"refused a coordinator message and left the phase: {exc}")
                return False
            if self.worker.started != started:  # on disk before anything of this sum leaves
                atomic_write_json(self._started_path, {"started": list(self.worker.started)})
            for reply in replies:
                kind = type(reply).__name__
                if kind == "Refusal":
                    self.refusals.append(reply.reason)
                    self.log(f"refused stage {reply.stage + 1} round {reply.round + 1}: {reply.reason}")
                elif kind == "UpdateUpload":
                    self.rounds_trained += 1
                try:
                    await conn.send(encode(reply))
                except (ConnectionError, OSError) as exc:
                    self.log(f"connection lost while sending ({exc}); reconnecting")
                    return False
            self._keep_boundary()


def _roster_ids(certs_root: Path) -> list[str]:
    return sorted(p.stem for p in (certs_root / "clients").glob("*.pem"))
