"""Drive one secure sum in memory, through the wire codec, with dropouts at chosen stages.

For tests and benchmarks of the aggregators on their own (without the round machines): every
message is encoded and decoded as on the network, and ``transcript`` (if given) receives every
byte string the coordinator received, in order. ``drop[stage]`` names clients that vanish when
the sum reaches that stage (before sending their message of it); the stage names are the
aggregator's (``stage_of``) and for a one-shot aggregator just ``"upload"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from secure_fcit.errors import LocalProtocolError, ProtocolError
from secure_fcit.protocols.aggregation import Aggregate, AggregationRound, ClientAggregator, SecureAggregator
from secure_fcit.protocols.codec import decode, encode
from secure_fcit.protocols.messages import Message, TokenUpload, UpdateUpload

__all__ = ["SumRun", "run_secure_sum"]

_MAX = 1 << 30


@dataclass
class SumRun:
    """What one driven sum produced."""

    aggregate: Aggregate | None
    failure: str | None
    bytes_up: dict[str, int] = field(default_factory=dict)  # per client
    bytes_down: dict[str, int] = field(default_factory=dict)
    client_seconds: dict[str, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    client_errors: dict[str, str] = field(default_factory=dict)


def run_secure_sum(
    aggregator: SecureAggregator,
    clients: Mapping[str, ClientAggregator],
    vectors: Mapping[str, np.ndarray],
    round_id: AggregationRound,
    *,
    drop: Mapping[str, Sequence[str]] | None = None,
    stage_of: Callable[[Message], str] | None = None,
    transcript: list[bytes] | None = None,
) -> SumRun:
    """Run ``aggregator`` with ``clients`` summing ``vectors`` (see the module docstring)."""
    cohort = sorted(clients)
    lengths = {np.asarray(v).size for v in vectors.values()}
    if len(lengths) != 1 or set(vectors) != set(cohort):
        raise LocalProtocolError("one vector of one length per client is needed")
    length = lengths.pop()
    drop = {k: set(v) for k, v in (drop or {}).items()}
    stage_of = stage_of or _default_stage
    run = SumRun(None, None, dict.fromkeys(cohort, 0), dict.fromkeys(cohort, 0), dict.fromkeys(cohort, 0.0))
    gone: set[str] = set()
    contribution = TokenUpload if round_id.phase == "token" else UpdateUpload
    queue: list[tuple[str, str, bytes]] = []  # (direction, client, bytes)

    def upload_factory(client: str) -> Callable[[np.ndarray, str], Message]:
        def make(payload: np.ndarray, encoding: str) -> Message:
            return contribution(
                federation_id=round_id.federation_id, stage=round_id.stage, round=round_id.round,
                attempt=round_id.attempt, sender=client, payload=payload, encoding=encoding,
            )
        return make

    def server(call: Callable[[], list]) -> None:
        t0 = time.perf_counter()
        out = call()
        run.server_seconds += time.perf_counter() - t0
        for recipient, message in out:
            queue.append(("down", recipient, encode(message)))

    def lose(client: str, reason: str) -> None:
        run.client_errors[client] = reason
        gone.add(client)
        server(lambda: aggregator.dropped(client))

    def from_client(client: str, messages: list[Message | bytes]) -> None:
        for message in messages:  # raw bytes: a hostile or broken client
            if not isinstance(message, bytes) and client in drop.get(stage_of(message), ()):
                gone.add(client)
                server(lambda c=client: aggregator.dropped(c))
                return
            queue.append(("up", client, message if isinstance(message, bytes) else encode(message)))

    server(lambda: aggregator.begin(round_id, cohort, length))
    for client in cohort:
        t0 = time.perf_counter()
        try:
            messages = clients[client].begin(round_id, cohort, np.asarray(vectors[client]), upload_factory(client))
        except ProtocolError as exc:
            lose(client, str(exc))
            continue
        finally:
            run.client_seconds[client] += time.perf_counter() - t0
        from_client(client, messages)
    while queue:
        direction, client, data = queue.pop(0)
        if client in gone:
            continue
        if direction == "up":
            run.bytes_up[client] += len(data)
            if transcript is not None:
                transcript.append(data)
            try:
                message = decode(data, _MAX)
                server(lambda c=client, m=message: aggregator.receive(c, m))
            except ProtocolError as exc:
                lose(client, f"coordinator refused: {exc}")
            continue
        run.bytes_down[client] += len(data)
        t0 = time.perf_counter()
        try:
            replies = clients[client].receive(decode(data, _MAX))
        except ProtocolError as exc:
            lose(client, str(exc))
            continue
        finally:
            run.client_seconds[client] += time.perf_counter() - t0
        from_client(client, replies)
        if aggregator.failure is not None:
            break
    run.aggregate = aggregator.result()
    run.failure = aggregator.failure
    return run


def _default_stage(message: Message) -> str:
    return type(message).__name__
