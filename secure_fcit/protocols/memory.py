"""In-memory transport: one Coordinator and N Workers in one process, moving encoded bytes.

It does what the TLS transport will do (encode, deliver, decode, report lost peers, call
``advance()`` at boundaries) with a message queue instead of sockets, plus hooks for tests:
``Fault`` rules on worker uploads (lose one, replay it, hold it back, rewrite it), ``Injection``
of arbitrary messages or bytes from any peer name (a hostile sender), and random reordering
across links (each link stays FIFO, as a TLS connection is). The simulation drives federations
through ``run_federation``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_fcit.errors import ConfigError, LocalProtocolError, ProtocolError
from secure_fcit.protocols.codec import encode
from secure_fcit.protocols.coordinator import Coordinator
from secure_fcit.protocols.messages import Message
from secure_fcit.protocols.worker import Worker

__all__ = ["FAULT_ACTIONS", "Fault", "Injection", "History", "MemoryNetwork", "run_federation"]

FAULT_ACTIONS: tuple[str, ...] = ("lose", "replay", "hold", "rewrite")
_HUB = "<coordinator>"  # link endpoint name of the coordinator; not a valid peer id


@dataclass
class Fault:
    """A rule on worker -> coordinator messages, applied the first ``times`` times it matches.

    ``lose``: the message vanishes and the coordinator is told the worker was lost (a timeout);
    ``replay``: delivered twice; ``hold``: delivered only once nothing else is in flight;
    ``rewrite``: ``rewrite(message)`` is sent instead (a buggy or malicious worker).
    """

    match: Callable[[str, Message], bool]
    action: str
    rewrite: Callable[[Message], Message | bytes] | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ConfigError(f"action must be one of {FAULT_ACTIONS}, got {self.action!r}")
        if (self.action == "rewrite") != (self.rewrite is not None):
            raise ConfigError("a rewrite function goes with action 'rewrite' and only with it")


@dataclass
class Injection:
    """When the coordinator sends a message matching ``after(recipient, message)``, ``peer`` sends
    ``make(message)`` (a message or raw bytes) to the coordinator, ``times`` times at most."""

    after: Callable[[str, Message], bool]
    peer: str
    make: Callable[[Message], Message | bytes]
    times: int = 1


@dataclass
class History:
    """What a run produced: the coordinator's event log and transport counters."""

    events: list[dict[str, Any]]
    messages: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    worker_errors: dict[str, str] = field(default_factory=dict)

    def of(self, event: str) -> list[dict[str, Any]]:
        """The events named ``event``, in order."""
        return [e for e in self.events if e["event"] == event]


class MemoryNetwork:
    """Queue-driven transport between one coordinator and its workers."""

    def __init__(
        self,
        coordinator: Coordinator,
        workers: Sequence[Worker],
        *,
        faults: Sequence[Fault] = (),
        injections: Sequence[Injection] = (),
        reorder: bool = False,
        rng: np.random.Generator | None = None,  # link reordering in tests; not secret
    ) -> None:
        self.coordinator = coordinator
        self.workers = {w.client_id: w for w in workers}
        if len(self.workers) != len(workers):
            raise ConfigError("two workers share a client_id")
        self.faults = list(faults)
        self.injections = list(injections)
        self.reorder = reorder
        self._rng = rng if rng is not None else np.random.default_rng(0)  # not secret
        self._pending: list[tuple[str, str, bytes]] = []  # (source, destination, data)
        self._held: list[tuple[str, str, bytes]] = []
        self.history = History(events=coordinator.events)

    def run(
        self,
        *,
        until: Callable[[Coordinator], bool] | None = None,
        on_boundary: Callable[[Coordinator], None] | None = None,
        max_deliveries: int = 1_000_000,
    ) -> History:
        """Deliver until the coordinator is done, or ``until(coordinator)`` holds at a boundary."""
        for _ in range(max_deliveries):
            if not self._pending and self._held:
                self._pending, self._held = self._held, []
            if not self._pending:
                if self.coordinator.done or (until is not None and until(self.coordinator)):
                    break
                if not self.coordinator.at_boundary:
                    raise LocalProtocolError(
                        f"federation stalled: coordinator in {self.coordinator.state!r} at "
                        f"{self.coordinator.position} and nothing in flight"
                    )
                if on_boundary is not None:
                    on_boundary(self.coordinator)
                self._from_coordinator(self.coordinator.advance())
                continue
            self._deliver(self._pending.pop(self._next_index()))
        else:
            raise LocalProtocolError(f"no end after {max_deliveries} deliveries")
        self.history.events = self.coordinator.events  # restore() may have replaced the list
        return self.history

    def _next_index(self) -> int:
        if not self.reorder:
            return 0
        heads: dict[tuple[str, str], int] = {}
        for i, (src, dst, _) in enumerate(self._pending):
            heads.setdefault((src, dst), i)  # the oldest message of each link: links stay FIFO
        choices = sorted(heads.values())
        return choices[int(self._rng.integers(len(choices)))]

    def _deliver(self, item: tuple[str, str, bytes]) -> None:
        src, dst, data = item
        self.history.messages += 1
        if dst == _HUB:
            self.history.bytes_up += len(data)
            self._from_coordinator(self.coordinator.receive_bytes(src, data))
            return
        self.history.bytes_down += len(data)
        worker = self.workers.get(dst)
        if worker is None or dst in self.history.worker_errors:
            return  # nobody listening: a hostile peer's address, or a worker that failed
        try:
            replies = worker.receive_bytes(data)
        except ProtocolError as exc:
            # The worker hangs up, as it would on a TLS connection; the coordinator sees a lost peer.
            self.history.worker_errors[dst] = str(exc)
            self._from_coordinator(self.coordinator.peer_lost(dst))
            return
        for reply in replies:
            self._from_worker(dst, reply)

    def _from_coordinator(self, outgoing: list[tuple[str, Message]]) -> None:
        for recipient, message in outgoing:
            self._pending.append((_HUB, recipient, encode(message)))
            for injection in self.injections:
                if injection.times > 0 and injection.after(recipient, message):
                    injection.times -= 1
                    made = injection.make(message)
                    data = made if isinstance(made, bytes) else encode(made)
                    self._pending.append((injection.peer, _HUB, data))

    def _from_worker(self, client_id: str, message: Message) -> None:
        for fault in self.faults:
            if fault.times > 0 and fault.match(client_id, message):
                fault.times -= 1
                if fault.action == "lose":
                    self._from_coordinator(self.coordinator.peer_lost(client_id))
                    return
                if fault.action == "rewrite" and fault.rewrite is not None:
                    made = fault.rewrite(message)
                    self._pending.append((client_id, _HUB, made if isinstance(made, bytes) else encode(made)))
                    return
                data = encode(message)
                if fault.action == "hold":
                    self._held.append((client_id, _HUB, data))
                    return
                self._pending.extend([(client_id, _HUB, data)] * 2)  # replay
                return
        self._pending.append((client_id, _HUB, encode(message)))


def run_federation(
    coordinator: Coordinator,
    workers: Sequence[Worker],
    *,
    faults: Sequence[Fault] = (),
    injections: Sequence[Injection] = (),
    reorder: bool = False,
    rng: np.random.Generator | None = None,  # not secret
    until: Callable[[Coordinator], bool] | None = None,
    on_boundary: Callable[[Coordinator], None] | None = None,
) -> History:
    """Run ``coordinator`` with ``workers`` in memory to the end (or ``until``); returns the history."""
    network = MemoryNetwork(
        coordinator, workers, faults=faults, injections=injections, reorder=reorder, rng=rng
    )
    return network.run(until=until, on_boundary=on_boundary)
