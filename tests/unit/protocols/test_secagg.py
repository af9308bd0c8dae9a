"""Pairwise masking: exact sums under dropouts at every stage, thresholds, graphs, bad peers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secure_fcit.errors import ConfigError
from secure_fcit.protocols import AggregationRound, UpdateUpload, encode
from secure_fcit.protocols.aggregation import ListSignature
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import (
    KeyAdvert,
    MaskingAggregator,
    MaskingClient,
    MaskingParams,
    ShareUpload,
    UnmaskShares,
    make_identities,
    neighbour_graph,
    threshold,
)

RID = AggregationRound("fed", 0, 3, 0, "update")
STAGES = {  # the protocol stage -> the message a client sends in it
    "advertise": "KeyAdvert",
    "share": "ShareUpload",
    "masked": "UpdateUpload",
    "consistency": "ListSignature",
    "unmask": "UnmaskShares",
}


def setup(n: int, params: MaskingParams | None = None, length: int = 64, seed: int = 0):
    ids = [f"c{i:03d}" for i in range(n)]
    identities, directory = make_identities(ids)
    params = params or MaskingParams()
    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
    rng = np.random.default_rng(seed)
    vectors = {c: rng.uniform(-3, 3, length) for c in ids}
    return ids, directory, params, clients, vectors


def dropping(fraction: float, n: int) -> int:
    """Clients dropped for ``fraction`` of ``n``: floor, but at least one when fraction > 0."""
    return max(1, int(np.floor(fraction * n))) if fraction else 0


def run(n, drop_stage=None, fraction=0.0, params=None, length=64, **kw):
    ids, directory, params, clients, vectors = setup(n, params, length)
    k = dropping(fraction, n)
    drop = {STAGES[drop_stage]: ids[:k]} if drop_stage else {}
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, vectors, RID, drop=drop, **kw)
    return result, vectors, aggregator


def check_exact(result, vectors, params: MaskingParams):
    assert result.failure is None and result.aggregate is not None, result.failure
    contributors = result.aggregate.contributors
    truth = sum(vectors[c] for c in contributors)
    fp = params.check_cohort(len(vectors))
    assert np.max(np.abs(result.aggregate.vector - truth)) <= fp.error_bound(len(contributors))
    assert result.aggregate.kind == "masking"


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_five_clients_survive_dropouts_at_every_stage(stage, fraction):
    result, vectors, _ = run(5, stage, fraction)
    check_exact(result, vectors, MaskingParams())
    expected = 5 - dropping(fraction, 5) if stage in ("advertise", "share", "masked") else 5
    assert result.aggregate.n_contributors == expected


@pytest.mark.parametrize("stage", list(STAGES))
def test_fifty_clients_survive_thirty_percent_dropping(stage):
    result, vectors, aggregator = run(50, stage, 0.3)
    check_exact(result, vectors, MaskingParams())
    survivors = aggregator.stage_sets["masked"]
    assert len(survivors) == (35 if stage in ("advertise", "share", "masked") else 50)


def test_no_dropout_sums_everyone():
    result, vectors, aggregator = run(5)
    check_exact(result, vectors, MaskingParams())
    assert result.aggregate.n_contributors == 5
    assert set(aggregator.stage_sets) == {"advertised", "shared", "masked", "signed", "unmasked"}


def test_below_threshold_the_sum_aborts_and_releases_nothing():
    # 5 clients: t = floor(2/3 * 5) + 1 = 4; two dropping after the masked input leaves 3 holders.
    assert threshold(2 / 3, 5) == 4
    ids, directory, params, clients, vectors = setup(5)
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, vectors, RID, drop={"ListSignature": ids[:2]})
    assert result.aggregate is None and aggregator.result() is None
    assert "signed the survivor list" in result.failure or "too few signatures" in result.failure


def test_dropping_below_two_at_advertise_aborts():
    ids, directory, params, clients, vectors = setup(3)
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, vectors, RID, drop={"KeyAdvert": ids[:2]})
    assert result.aggregate is None and "advert" in result.failure


def test_k_regular_graph_is_symmetric_public_and_sums_exactly():
    # colluders=0: an honest-but-curious coordinator (t = 5 of 9 would not survive one colluder)
    params = MaskingParams(degree=8, threshold=0.5, colluders=0)
    ids = [f"c{i:03d}" for i in range(30)]
    graph = neighbour_graph(ids, b"binding", 8)
    assert all(len(graph[u]) == 8 and u not in graph[u] for u in ids)
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert graph == neighbour_graph(list(reversed(ids)), b"binding", 8)  # both sides derive the same
    assert graph != neighbour_graph(ids, b"another round", 8)
    result, vectors, _ = run(30, "masked", 0.1, params=params)
    check_exact(result, vectors, params)
    assert result.aggregate.n_contributors == 27


def test_fixed_point_refuses_a_cohort_that_could_wrap():
    with pytest.raises(ConfigError, match="without wrapping"):
        MaskingParams(bound=2.0**31)
    params = MaskingParams(bound=32768.0, min_frac_bits=8)
    params.check_cohort(200)
    with pytest.raises(ConfigError, match="cannot be encoded"):
        params.check_cohort(300)
    with pytest.raises(ConfigError, match="degree"):
        MaskingParams(degree=3)


def test_a_value_outside_the_bound_is_refused_by_its_client():
    result, _, _ = run(3, params=MaskingParams(bound=1.0), length=8)
    assert result.aggregate is None and result.failure is not None
    assert len(result.client_errors) == 3
    assert all("exceeds privacy.bound" in e for e in result.client_errors.values())


def corrupt(kind: str):
    """A rewrite of one client's message of stage ``kind`` (through the driver's queue)."""

    def rewrite(message):
        if kind == "replay-round":
            return dataclasses.replace(message, round=message.round + 1)
        if kind == "wrong-length":
            return dataclasses.replace(message, payload=message.payload[:-1].copy())
        if kind == "bad-signature":
            return dataclasses.replace(message, signature=bytes(64))
        if kind == "malformed":
            return b"\x00\x01garbage"
        raise AssertionError(kind)

    return rewrite


@pytest.mark.parametrize(
    ("kind", "message_type"),
    [
        ("malformed", KeyAdvert),
        ("bad-signature", KeyAdvert),
        ("replay-round", ShareUpload),
        ("wrong-length", UpdateUpload),
        ("bad-signature", ListSignature),
    ],
)
def test_a_bad_message_drops_its_sender_and_the_sum_completes(kind, message_type):
    ids, directory, params, clients, vectors = setup(6)
    offender = ids[2]
    inner = clients[offender]

    class Rewriting:
        message_types = inner.message_types
        kind_ = inner.kind

        def begin(self, *a):
            return [self._fix(m) for m in inner.begin(*a)]

        def receive(self, m):
            return [self._fix(x) for x in inner.receive(m)]

        def _fix(self, m):
            return corrupt(kind)(m) if isinstance(m, message_type) else m

    clients[offender] = Rewriting()
    aggregator = MaskingAggregator(directory, params)
    result = run_secure_sum(aggregator, clients, vectors, RID)
    assert offender in result.client_errors
    check_exact(result, vectors, params)
    if message_type is ListSignature:  # its masked input is in; only its signature is out
        assert offender in result.aggregate.contributors
    else:
        assert offender not in result.aggregate.contributors


def test_a_replayed_message_is_refused():
    ids, directory, params, clients, vectors = setup(4)
    aggregator = MaskingAggregator(directory, params)
    aggregator.begin(RID, ids, 64)
    advert = clients[ids[0]].begin(RID, ids, vectors[ids[0]], lambda p, e: None)[0]
    aggregator.receive(ids[0], advert)
    from secure_fcit.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError, match="duplicate"):
        aggregator.receive(ids[0], advert)
    other_round = dataclasses.replace(advert, round=RID.round + 1)
    with pytest.raises(RemoteProtocolError, match="another sum"):
        aggregator.receive(ids[1], dataclasses.replace(other_round, sender=ids[1]))
    assert encode(advert)  # the advert itself is a well-formed wire message
    assert UnmaskShares.__name__ in {t.__name__ for t in aggregator.message_types}


@pytest.mark.parametrize(
    ("message_type", "action"),
    [(ShareUpload, "lose"), (UpdateUpload, "lose"), (UnmaskShares, "lose"), (KeyAdvert, "replay")],
)
def test_federation_rounds_complete_when_a_worker_is_lost_or_replays(message_type, action):
    from secure_fcit.fcit.dko import DKOConfig
    from secure_fcit.protocols import Fault, run_federation
    from tests.unit.protocols._support import build_federation, client

    stages = [{client(i): 0 for i in range(6)}]
    fed = build_federation(stages, cohort_size=6, rounds=2, config=DKOConfig(n_buckets=64), aggregation="masking")
    victim = client(3)
    fault = Fault(match=lambda c, m: c == victim and isinstance(m, message_type) and m.round >= 0, action=action)
    history = run_federation(fed.coordinator, fed.workers, faults=[fault])
    assert len(history.of("applied")) == 2 and not history.of("aborted")
    first = history.of("applied")[0]
    assert victim in first["dropped"]
    if message_type in (ShareUpload, KeyAdvert):
        assert victim not in first["contributors"]
    elif message_type is UnmaskShares:  # its masked input was in before it vanished
        assert victim in first["contributors"]


def test_a_signed_low_order_key_drops_its_sender_not_its_neighbours():
    from secure_fcit.protocols.secagg import _advert_bytes

    ids, directory, params, clients, vectors = setup(5)
    offender = ids[0]
    inner = clients[offender]

    class LowOrder:
        message_types = inner.message_types

        def begin(self, rid, cohort, vector, upload):
            advert = inner.begin(rid, cohort, vector, upload)[0]
            binding = inner._session.rnd.binding
            zero = bytes(32)  # the identity point: every exchange with it is all-zero
            body = _advert_bytes(binding, offender, advert.transport_key, zero, advert.seed_commitment)
            return [dataclasses.replace(advert, mask_key=zero, signature=inner.identity.signing.sign(body))]

        def receive(self, m):
            return inner.receive(m)

    clients[offender] = LowOrder()
    result = run_secure_sum(MaskingAggregator(directory, params), clients, vectors, RID)
    assert "low-order" in result.client_errors[offender]
    assert set(result.client_errors) == {offender}
    check_exact(result, vectors, params)
    assert offender not in result.aggregate.contributors


def test_a_wrong_share_among_spare_ones_does_not_spoil_the_sum():
    ids, directory, params, clients, vectors = setup(7)  # t = 5 of 7 holders: two spare shares
    liar = ids[3]
    inner = clients[liar]

    class Liar:
        message_types = inner.message_types

        def begin(self, *a):
            return inner.begin(*a)

        def receive(self, m):
            out = inner.receive(m)
            if out and isinstance(out[0], UnmaskShares):
                shares = out[0].seed_shares.copy()
                shares[:, -1] ^= 1  # every seed share it reveals is off by one bit
                out = [dataclasses.replace(out[0], seed_shares=shares)]
            return out

    clients[liar] = Liar()
    result = run_secure_sum(MaskingAggregator(directory, params), clients, vectors, RID)
    check_exact(result, vectors, params)
    assert result.aggregate.n_contributors == 7
