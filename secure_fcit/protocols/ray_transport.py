"""Ray transport: the Coordinator in the driver, its workers in Ray actors, moving encoded bytes.

It does what the in-memory transport does (encode, deliver, decode, report lost peers, call
``advance()`` at boundaries), but a delivery is a remote call on the actor that hosts the
recipient, and every call in flight runs at once: the workers of a cohort train in parallel, one
actor per core (or per GPU fraction). Each link stays FIFO: Ray runs one caller's calls on an actor
in the order they were submitted, and replies are read in that order.

A host is any Ray actor with ``deliver(client_id, data) -> (replies, error)``: the replies are
encoded messages, ``error`` the text of a `ProtocolError` that made the worker hang up (the
coordinator sees a lost peer, as on a TLS connection). An actor that dies (killed, out of memory,
its node gone) loses every client it hosted: each is a lost peer, now and whenever the
coordinator sends to it later, and the secure sum recovers from them as from any dropout.

The messages are the codec's bytes; nothing the workers send is unpickled by the coordinator
(``receive_bytes`` decodes them). Ray itself serializes the call arguments inside the cluster,
which is one operator's trust domain (threat_model.md, the simulation backends).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from secure_fcit.errors import LocalProtocolError
from secure_fcit.protocols.aggregation import Outgoing
from secure_fcit.protocols.codec import encode
from secure_fcit.protocols.coordinator import Coordinator
from secure_fcit.protocols.memory import History
from secure_fcit.protocols.messages import Message

__all__ = ["RayNetwork"]


class RayNetwork:
    """Drive ``coordinator`` with workers hosted by Ray actors: ``hosts`` maps client id -> actor."""

    def __init__(self, coordinator: Coordinator, hosts: Mapping[str, Any]) -> None:
        import ray  # optional dependency: pip install secure-fcit[ray]

        self._ray = ray
        self.coordinator = coordinator
        self.hosts = dict(hosts)
        self._inflight: dict[Any, tuple[str, Any]] = {}  # ObjectRef -> (client id, host)
        self._dead_hosts: list[Any] = []
        self.dead: set[str] = set()  # clients whose actor died
        self.history = History(events=coordinator.events)

    def run(
        self,
        *,
        until: Callable[[Coordinator], bool] | None = None,
        on_boundary: Callable[[Coordinator], None] | None = None,
        max_deliveries: int = 10_000_000,
    ) -> History:
        """Deliver until the coordinator is done, or ``until(coordinator)`` holds at a boundary."""
        coord = self.coordinator
        for _ in range(max_deliveries):
            if not self._inflight:
                if coord.done or (until is not None and until(coord)):
                    break
                if not coord.at_boundary:
                    raise LocalProtocolError(
                        f"federation stalled: coordinator in {coord.state!r} at {coord.position} and nothing in flight")
                if on_boundary is not None:
                    on_boundary(coord)
                self._send(coord.advance())
                continue
            self._receive_one()
        else:
            raise LocalProtocolError(f"no end after {max_deliveries} deliveries")
        self.history.events = coord.events  # restore() may have replaced the list
        return self.history

    # ------------------------------------------------------------------ internals
    def _receive_one(self) -> None:
        ray = self._ray
        ready, _ = ray.wait(list(self._inflight), num_returns=1)
        ref = ready[0]
        client, host = self._inflight.pop(ref)
        try:
            replies, error = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._host_died(host, exc)
            return
        self.history.messages += 1
        if client in self.dead or client in self.history.worker_errors:
            return  # its host died after answering, or it already hung up
        if error is not None:  # the worker hung up on a protocol error
            self.history.worker_errors[client] = str(error)
            self._send(self.coordinator.peer_lost(client))
            return
        for data in replies:
            if not isinstance(data, bytes):
                raise LocalProtocolError(f"the actor of {client} answered {type(data).__name__}, not bytes")
            self.history.messages += 1
            self.history.bytes_up += len(data)
            self._send(self.coordinator.receive_bytes(client, data))
            if client in self.dead:
                return

    def _host_died(self, host: Any, exc: BaseException) -> None:
        if any(host is h for h in self._dead_hosts):
            return
        self._dead_hosts.append(host)
        lost = sorted(c for c, h in self.hosts.items() if h is host)
        self.dead.update(lost)
        for client in lost:
            self.history.worker_errors.setdefault(client, f"its Ray actor died: {type(exc).__name__}")
        for ref in [r for r, (_, h) in self._inflight.items() if h is host]:
            del self._inflight[ref]
        for client in lost:
            self._send(self.coordinator.peer_lost(client))

    def _send(self, outgoing: list[Outgoing]) -> None:
        lost: list[str] = []
        for recipient, message in outgoing:
            data = encode(message)
            self.history.bytes_down += len(data)
            host = self.hosts.get(recipient)
            if host is None or recipient in self.history.worker_errors:
                if recipient in self.dead:
                    lost.append(recipient)  # like a TLS peer that is gone: the send fails
                continue  # nobody listening
            self._inflight[self._submit(host, recipient, message, data)] = (recipient, host)
        for recipient in dict.fromkeys(lost):
            self._send(self.coordinator.peer_lost(recipient))

    def _submit(self, host: Any, recipient: str, message: Message, data: bytes) -> Any:
        """One delivery of ``message`` (encoded: ``data``) as a remote call; tests subclass this to
        kill an actor mid-round."""
        return host.deliver.remote(recipient, data)
