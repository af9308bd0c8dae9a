"""The coordinator process: the sans-IO ``Coordinator`` driven by an asyncio mutual-TLS transport.

``FederationServer`` accepts TLS 1.3 connections from clients holding a certificate of the
federation CA (identity = certificate common name, bound to every frame), feeds their frames to
the same ``Coordinator`` the simulation runs, and sends what it answers. At every boundary
(nothing in flight) it checkpoints the coordinator atomically (``state/checkpoints``) and, when
restarted on the same state folder, resumes from the last checkpoint: a round that was in
flight when the server died is run again from its start.

Admission (``gate.Gate``): a certificate that is revoked or not on the roster is refused before
its first byte is read; a member's hello must arrive within ``deploy.hello_timeout``; each
identity may open ``deploy.connect_rate`` connections per ``deploy.connect_window``.

Faults: a frame that is not a valid message for the peer's current step, a frame over
``deploy.max_message_size`` (refused from its length prefix), a truncated frame, or more than
``deploy.send_queue`` frames waiting for a peer that does not read cuts the connection off with a
logged reason; the coordinator drops that peer from the phase, and the secure sum recovers as from
a dropout. Each step has a deadline of ``deploy.phase_timeout`` from its start (answers do not
move it); then exactly the peers it still waits for are dropped. Checkpoints carry an HMAC-SHA256
under a key kept outside the checkpoint folder (``deploy.checkpoint_key``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import Config
from ..crypto.certs import CRL_FILE, client_directory, load_revoked
from ..errors import ConfigError, RemoteProtocolError
from ..protocols.codec import encode
from ..protocols.coordinator import Coordinator
from ..protocols.tls import Connection, read_frame, server_context
from .checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from .common import CertFolder, control_frame, model_dir_for, n_stages_for, server_aggregation
from .gate import Gate
from .roster import Roster

__all__ = ["FederationServer"]

_TOKEN_EVENTS = frozenset({"stage-start", "planned", "aborted", "retry", "drop", "refusal"})


class StepClock:
    """The deadline of the current secure-sum step: ``timeout`` seconds from the step's start.

    Answers within a step do not move it (peers trickling one answer per almost-timeout cannot
    stall a step forever). A new step starts a new deadline: a new phase (``phase`` changes), or
    the phase's next step, seen as the set of peers it waits for growing (within a step that set
    only shrinks, by answers and drops). A next step that waits for exactly the one peer that
    ended the previous one shares its deadline: stricter, never longer."""

    def __init__(self, timeout: float, clock=time.monotonic) -> None:
        self.timeout, self._clock = timeout, clock
        self._phase: Hashable = object()
        self._waiting: frozenset[str] = frozenset()
        self._deadline = 0.0

    def left(self, phase: Hashable, waiting: frozenset[str]) -> float:
        """Seconds left for the step of ``phase`` now waiting for ``waiting``."""
        if phase != self._phase or not waiting <= self._waiting:
            self._phase, self._deadline = phase, self._clock() + self.timeout
        self._waiting = waiting
        return self._deadline - self._clock()

    def expired(self) -> None:
        """The step's late peers were dropped: whatever is awaited next gets a full deadline."""
        self._phase = object()


class _Peer:
    """One authenticated connection and its outgoing queue (at most ``limit`` frames)."""

    def __init__(self, conn: Connection, limit: int = 0) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(limit)
        self.closed = False
        self.writer_task: asyncio.Task | None = None
        # Joined while a phase was in flight: it is not part of that phase (the coordinator dropped
        # it), gets none of its messages, and is synced with a StageSync at the next boundary.
        self.needs_sync = False

    async def write_loop(self) -> None:
        try:
            while (data := await self.queue.get()) is not None:
                await self.conn.send(data)
        except (ConnectionError, ssl.SSLError, RuntimeError):
            pass
        finally:
            self.closed = True
            await self.conn.close()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False when the queue is full (the peer does not read)."""
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def stop(self) -> None:
        """End the writer after what is queued, or at once when the queue is full."""
        if not self.put(None):  # type: ignore[arg-type]
            self.closed = True
            if self.writer_task is not None:
                self.writer_task.cancel()


class FederationServer:
    """See the module docstring. ``run()`` returns the run's summary once the stream is done."""

    def __init__(self, config: Config, roster: Roster, state_dir: str | Path, *, certs: str | None = None,
                 evaluate: bool = False, progress: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.roster = roster
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.certs = CertFolder.from_config(config, certs)
        self.federation_id = self.certs.federation_id
        self.deploy = config.deploy
        self.progress = progress
        self._print = log or (lambda m: print(m, file=sys.stderr, flush=True))
        if roster.n_stages != n_stages_for(config):
            raise ConfigError(f"the roster has {roster.n_stages} stages; the config's stream has {n_stages_for(config)}")
        self.clients = roster.clients
        directory = client_directory(self.certs.root, list(self.clients))
        factory = server_aggregation(config, directory)

        from ..fcit.simulate import build_organizer, build_slots, slot_layout
        from ..model.encoder import load_encoder
        from ..model.loading import load_llava

        self.model_dir = model_dir_for(config, progress=progress)
        model, _ = load_llava(self.model_dir)
        self.layout = slot_layout(config, roster.n_stages)
        self.slots = build_slots(model, self.layout)
        self.encoder = load_encoder(config.fcit.encoder, self.model_dir)
        self.organizer = build_organizer(config, self.encoder.dim, self.slots, self.layout, self.federation_id)
        self.coordinator = Coordinator(
            self.federation_id, roster.schedule(), factory, self.organizer, self.organizer.slot_size,
            config.fcit.rounds_per_stage, np.random.default_rng(config.seed), dp=config.dp.enabled,
            max_message_size=self.deploy.max_message_size,
        )
        self.evaluate = evaluate
        self.matrix: list[list[float | None]] = []
        self.task_scores: list[dict[str, float]] = []
        self.round_seconds: list[float] = []
        self.resumed_from: tuple[int, int] | None = None
        # The MAC key lives outside the checkpoint folder, so a checkpoint folder copied or edited
        # elsewhere cannot be made to verify.
        self._checkpoint_key = checkpoint_key(self.deploy.checkpoint_key or self.state_dir / "checkpoint.key",
                                              self.state_dir / "checkpoints")
        snap = load_checkpoint(self.state_dir / "checkpoints", key=self._checkpoint_key)
        if snap is not None:
            self.coordinator.restore(snap["coordinator"])
            self.matrix = snap["server"]["matrix"]
            self.task_scores = snap["server"]["task_scores"]
            self.round_seconds = snap["server"]["round_seconds"]
            self.resumed_from = self.coordinator.position[:2]
        self._events_file = self.state_dir / "events.jsonl"
        self._logged = len(self.coordinator.events)
        self._checkpointed: tuple | None = (self.coordinator.state, self.coordinator.position) if snap else None
        crl = self.certs.root / CRL_FILE
        if crl.is_file():
            load_revoked(crl, self.certs.ca)  # a CRL that does not verify stops the server at start
        self.gate: Gate | None = None
        self._peers: dict[str, _Peer] = {}
        self._changed: asyncio.Event = None  # type: ignore[assignment]  # made in run(), on its loop
        self._bar = None
        self._evaluator = None
        self.cut_off: dict[str, dict[str, Any]] = {}  # connections closed for a fault, per peer

    # ------------------------------------------------------------------ logging and state
    def log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.progress and getattr(self, "_bar", None) is not None:
            self._bar.write(f"[{stamp}] {line}", file=sys.stderr)
        else:
            self._print(f"[{stamp}] {line}")

    def _flush_events(self) -> None:
        events = self.coordinator.events
        if len(events) <= self._logged:
            return
        with self._events_file.open("a") as f:
            for e in events[self._logged:]:
                f.write(json.dumps(e) + "\n")
                if e["event"] == "finished":
                    self.log("the stream is finished")
                elif e["event"] != "drop" or e.get("in_phase"):
                    detail = {k: v for k, v in e.items() if k not in ("event", "stage", "round", "attempt")}
                    phase = " tokens" if e["event"] in _TOKEN_EVENTS else ""
                    where = f"stage {e['stage'] + 1}" + (phase if e["round"] < 0 else f" round {e['round'] + 1}")
                    self.log(f"{where} (attempt {e['attempt']}): {e['event']} "
                             + " ".join(f"{k}={v}" for k, v in detail.items())[:300])
        # Offences of peers outside the phase (hostile or stray frames) stay in events.jsonl only, so
        # the coordinator's memory and checkpoints do not grow with what strangers send.
        events[:] = [e for e in events if e["event"] != "drop" or e.get("in_phase")]
        self._logged = len(events)

    def _checkpoint(self) -> None:
        save_checkpoint(self.state_dir / "checkpoints", {
            "coordinator": self.coordinator.snapshot(),
            "server": {"matrix": self.matrix, "task_scores": self.task_scores, "round_seconds": self.round_seconds},
        }, key=self._checkpoint_key)
        self._checkpointed = (self.coordinator.state, self.coordinator.position)

    # ------------------------------------------------------------------ transport
    def _dispatch(self, outgoing: list) -> None:
        lost: list[str] = []
        for recipient, message in outgoing:
            peer = self._peers.get(recipient)
            if peer is None or peer.closed:
                lost.append(recipient)
                continue
            if peer.needs_sync:
                continue
            if not peer.put(encode(message)):
                reason = f"{self.deploy.send_queue} frames queued and not read (deploy.send_queue)"
                self._note_cut_off(recipient, reason)
                self.log(f"cut off {recipient}: {reason}")
                self._peers.pop(recipient, None)
                peer.stop()
                lost.append(recipient)
        for recipient in dict.fromkeys(lost):
            self._dispatch(self.coordinator.peer_lost(recipient))
        coord = self.coordinator
        if coord.at_boundary and (coord.state, coord.position) != self._checkpointed:
            self._checkpoint()  # before the log says "applied": a logged round is a saved round
        self._flush_events()
        self._changed.set()

    def _cut_off(self, identity: str, reason: str) -> None:
        self._note_cut_off(identity, reason)
        self.log(f"cut off {identity}: {reason[:200]}")
        peer = self._peers.pop(identity, None)
        if peer is not None:
            peer.stop()
        self._dispatch(self.coordinator.peer_lost(identity))

    def _note_cut_off(self, identity: str, reason: str) -> None:
        """Counted per peer; the first reasons are kept (events.jsonl and the log have them all)."""
        entry = self.cut_off.setdefault(identity, {"count": 0, "first_reasons": []})
        entry["count"] += 1
        if len(entry["first_reasons"]) < 5:
            entry["first_reasons"].append(reason[:300])

    def _make_gate(self) -> Gate:
        d = self.deploy
        return Gate(federation_id=self.federation_id, allowed=frozenset(self.clients), max_size=d.max_message_size,
                    read_timeout=d.read_timeout, hello_timeout=d.hello_timeout, connect_rate=d.connect_rate,
                    connect_window=d.connect_window, keepalive=d.keepalive,
                    crl=self.certs.root / CRL_FILE, ca=self.certs.ca,
                    log=self.log, on_refusal=lambda reason: self._note_cut_off("<handshake>", reason))

    async def _handle(self, conn: Connection) -> None:
        """Serve one admitted member's connection (``gate.Gate`` did the hello)."""
        d = self.deploy
        reader = conn.reader
        identity = conn.identity
        if self.coordinator.done:
            await conn.send(control_frame({"bye": "finished"}))
            await conn.close()
            return
        old = self._peers.pop(identity, None)
        if old is not None:  # a reconnect replaces the old connection; its phase state is gone
            old.stop()
            self._dispatch(self.coordinator.peer_lost(identity))
        peer = _Peer(conn, d.send_queue)
        peer.writer_task = asyncio.create_task(peer.write_loop())
        self._peers[identity] = peer
        self._sync(identity, peer)
        self.log(f"{identity} connected ({len(self._connected())}/{len(self.clients)} clients)")
        self._changed.set()
        reason = "closed the connection"
        try:
            while True:
                data = await read_frame(reader, d.max_message_size, d.read_timeout, idle=None)
                if self._peers.get(identity) is not peer:
                    return
                before = len(self.coordinator.events)
                out = self.coordinator.receive_bytes(identity, data)
                offences = [e for e in self.coordinator.events[before:]
                            if e["event"] == "drop" and e.get("peer") == identity]
                self._dispatch(out)
                if offences:
                    self._cut_off(identity, offences[0]["reason"])
                    return
        except RemoteProtocolError as exc:
            reason = str(exc)
        if self._peers.get(identity) is not peer:
            return
        if reason.endswith("connection closed"):  # the peer hung up between frames: no fault of its frames
            self._peers.pop(identity, None)
            peer.stop()
            if not self.coordinator.done:
                self.log(f"{identity} disconnected")
            self._dispatch(self.coordinator.peer_lost(identity))
        else:
            self._cut_off(identity, reason)

    def _sync(self, identity: str, peer: _Peer) -> None:
        """Tell a (re)connected peer where the stream stands, now at a boundary, else at the next."""
        if self.coordinator.at_boundary:
            peer.needs_sync = False
            self._dispatch(self.coordinator.sync(identity))
        else:
            peer.needs_sync = True

    def _connected(self) -> list[str]:
        return [c for c, p in self._peers.items() if not p.closed and c in self.clients]

    # ------------------------------------------------------------------ driving the stream
    async def _wait_for_clients(self, need: int | None = None) -> None:
        """Until ``need`` roster clients are connected (default ``deploy.min_clients`` or all of
        them), at most ``deploy.join_timeout`` seconds; then the stream goes on with those present."""
        need = need or self.deploy.min_clients or len(self.clients)
        if len(self._connected()) >= need:
            return
        self.log(f"waiting for clients: {len(self._connected())} of {need} connected")
        deadline = time.monotonic() + self.deploy.join_timeout
        while len(self._connected()) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                self.log(f"join timeout: going on with {len(self._connected())} of {len(self.clients)} clients")
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    def _signature(self) -> tuple:
        c = self.coordinator
        return c.state, c.position, c.pending()

    async def _drive(self) -> None:
        coord = self.coordinator
        applied = sum(1 for e in coord.events if e["event"] == "applied")
        t_round = time.perf_counter()
        while not coord.done:
            if coord.at_boundary:
                now_applied = sum(1 for e in coord.events if e["event"] == "applied")
                if now_applied > applied:
                    self.round_seconds.append(time.perf_counter() - t_round)
                    if self._bar is not None:
                        self._bar.update(now_applied - applied)
                    applied = now_applied
                if coord.state == "before-stage" and coord.position[0] > len(self.matrix):
                    self._evaluate_stage(coord.position[0] - 1)
                self._checkpoint()
                # A phase started with fewer clients than a cohort would only abort: wait for them
                # (and for deploy.min_clients, so a restarting site is back before the next phase).
                cohort = min(self.config.scenario.clients_per_round, len(self.clients))
                await self._wait_for_clients(max(cohort, min(self.deploy.min_clients, len(self.clients))))
                for identity, peer in list(self._peers.items()):
                    if peer.needs_sync:
                        self._sync(identity, peer)
                t_round = time.perf_counter()
                self._dispatch(coord.advance())
                await asyncio.sleep(0)
                continue
            signature = self._signature()
            step = (coord.state, coord.position)
            while not coord.at_boundary and self._signature() == signature:
                left = self._clock.left(step, coord.pending())
                if left <= 0:
                    silent = sorted(coord.pending())
                    self.log(f"phase timeout: no answer from {', '.join(silent)} within "
                             f"{self.deploy.phase_timeout:g} s")
                    self._dispatch(coord.expire(f"no answer within {self.deploy.phase_timeout:g} s"))
                    self._clock.expired()
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 5.0))
                except TimeoutError:
                    pass
                if self.gate is not None:
                    self.gate.refresh_crl()  # a revocation also cuts off a member connected now
        self._flush_events()
        self._checkpoint()

    def _evaluate_stage(self, done: int) -> None:
        """After stage ``done`` (0-based): the accuracy row on every stage seen so far (``--eval``)."""
        from ..fcit.simulate import global_state

        if not self.evaluate:
            self.matrix.append([])
            return
        if self._evaluator is None:
            from ..fcit.simulate import _evaluator, stream_tasks
            from ..fcit.workspace import prepare_workspace

            ws = prepare_workspace(self.config, stream_tasks(self.config), progress=False)
            self._evaluator = _evaluator(self.config, ws, self.slots, self.encoder)
        stage_tasks = self.roster.stage_tasks
        seen = list(dict.fromkeys(t for tasks in stage_tasks[: done + 1] for t in tasks))
        scores = self._evaluator(global_state(self.organizer, self.layout, self.slots.slot_size), seen)
        row = [float(np.mean([scores[t] for t in stage_tasks[i]])) for i in range(done + 1)]
        self.matrix.append(row + [None] * (self.roster.n_stages - done - 1))
        self.task_scores.append(scores)
        self.log(f"after stage {done + 1}/{self.roster.n_stages}: "
                 + ", ".join(f"{t} {s:.1f}" for t, s in scores.items()))

    async def run(self) -> dict[str, Any]:
        d = self.deploy
        self._changed = asyncio.Event()
        self._clock = StepClock(d.phase_timeout)
        ctx = server_context(self.certs.ca, *self.certs.server())
        self.gate = self._make_gate()
        server = await asyncio.start_server(self.gate.handler(self._handle), d.host, d.port, ssl=ctx,
                                            ssl_handshake_timeout=min(d.read_timeout, d.hello_timeout))
        self.gate.refresh_crl()  # logs the revocation list's size when there is one
        total = self.roster.n_stages * self.config.fcit.rounds_per_stage
        self._bar = tqdm(total=total, desc=f"federation {self.federation_id}", unit="round", disable=not self.progress,
                         initial=sum(1 for e in self.coordinator.events if e["event"] == "applied"))
        where = "" if self.resumed_from is None else (
            f", resuming at stage {self.resumed_from[0] + 1} round {self.resumed_from[1] + 1}")
        self.log(f"listening on {d.host}:{d.port} (TLS 1.3, mutual auth) for federation {self.federation_id!r}: "
                 f"{len(self.clients)} clients, {self.roster.n_stages} stages x {self.config.fcit.rounds_per_stage} "
                 f"rounds, {self.config.privacy.aggregation} aggregation{', DP-SGD' if self.config.dp.enabled else ''}"
                 f"{where}")
        try:
            await self._wait_for_clients()
            await self._drive()
            for peer in list(self._peers.values()):
                peer.put(control_frame({"bye": "finished"}))
                peer.stop()
            await asyncio.gather(*(p.writer_task for p in self._peers.values() if p.writer_task),
                                 return_exceptions=True)
        finally:
            self._bar.close()
            server.close()
            await self.gate.close()  # connections still in their hello end quietly, no traceback
            for peer in self._peers.values():
                if peer.writer_task is not None and not peer.writer_task.done():
                    peer.writer_task.cancel()
            await asyncio.gather(*(p.writer_task for p in self._peers.values() if p.writer_task),
                                 return_exceptions=True)
            await server.wait_closed()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        from ..fcit.metrics import summarize
        from ..fcit.simulate import global_state, stream_shortfalls

        events: dict[str, int] = {}
        for e in self.coordinator.events:
            events[e["event"]] = events.get(e["event"], 0) + 1
        state = global_state(self.organizer, self.layout, self.slots.slot_size)
        full = [row for row in self.matrix if row]
        return {
            "federation_id": self.federation_id,
            "events": events,
            "slots_opened": self.organizer.n_slots,
            "round_seconds": self.round_seconds,
            "accuracy_matrix": self.matrix if self.evaluate else None,
            "task_scores": self.task_scores,
            "summary": summarize(full) if self.evaluate and len(full) == self.roster.n_stages else None,
            "state": state,
            "cut_off": self.cut_off,
            "shortfalls": stream_shortfalls(self.coordinator.events),
            "releases": [asdict(r) for r in self.organizer.releases],
        }
