"""Compliance: what the coordinator receives under secure aggregation reveals no individual update.

Each test backs a claim of threat_model.md §2 (secure aggregation).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.fcit.dko import DKOConfig
from secure_fcit.protocols import Aggregate, AggregationRound, UpdateUpload, decode, run_federation
from secure_fcit.protocols.aggregation import ListSignature, SignedList
from secure_fcit.protocols.ckks import (
    CKKSAggregator,
    CKKSClient,
    CKKSParams,
    DecryptRequest,
    _pack,
    _unpack,
    create_keys,
    load_public,
)
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import (
    KeyAdvert,
    MaskingAggregator,
    MaskingClient,
    MaskingParams,
    ShareUpload,
    UnmaskRequest,
    UnmaskShares,
    make_identities,
)
from tests.unit.protocols._support import DIM, FakeLearner, build_federation, client

RID = AggregationRound("fed", 1, 2, 0, "update")
LENGTH = 8192
MAX = 1 << 30


def _clients(n: int, params: MaskingParams):
    ids = [f"c{i}" for i in range(n)]
    identities, directory = make_identities(ids)
    return ids, directory, {c: MaskingClient(identities[c], directory, params) for c in ids}


def test_masked_uploads_are_uniform_and_the_transcript_holds_no_plaintext():
    params = MaskingParams()
    ids, directory, clients = _clients(5, params)
    rng = np.random.default_rng(7)
    vectors = {c: rng.uniform(-1, 1, LENGTH) for c in ids}
    vectors[ids[0]] = np.zeros(LENGTH)  # the most structured input there is
    transcript: list[bytes] = []
    result = run_secure_sum(MaskingAggregator(directory, params), clients, vectors, RID, transcript=transcript)
    assert result.aggregate is not None
    fp = params.check_cohort(5)
    received = [decode(data, MAX) for data in transcript]
    # Every byte the coordinator received is one of these messages, and nothing else.
    assert {type(m) for m in received} == {KeyAdvert, ShareUpload, UpdateUpload, ListSignature, UnmaskShares}
    for message in received:
        if not isinstance(message, UpdateUpload):
            continue
        masked = message.payload
        assert masked.dtype == np.uint32 and masked.size == LENGTH
        # Indistinguishable from uniform over Z_2^32: the top byte and the low byte are flat
        # (chi-square), and the values as fractions of 2^32 pass Kolmogorov-Smirnov.
        for byte in (masked >> 24, masked & 0xFF):
            counts = np.bincount(byte.astype(np.int64), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
        assert stats.kstest(masked / 2.0**32, "uniform").pvalue > 1e-4
        # Uncorrelated with the sender's own encoding.
        plain = fp.encode(vectors[message.sender]).astype(np.float64)
        if plain.std() > 0:
            assert abs(np.corrcoef(plain, masked.astype(np.float64))[0, 1]) < 0.05
    # No run of 32 plaintext-encoded bytes of any client appears anywhere in the transcript.
    blob = b"".join(transcript)
    for c in ids[1:]:
        encoded = fp.encode(vectors[c]).tobytes()
        for start in range(0, len(encoded) - 32, 4096):
            assert encoded[start : start + 32] not in blob


def test_without_dropouts_no_mask_key_share_is_ever_revealed():
    # The coordinator rebuilds self-mask seeds of survivors only; it never gets a survivor's mask
    # key, so it cannot strip any pairwise mask from an individual upload.
    params = MaskingParams()
    ids, directory, clients = _clients(6, params)
    vectors = {c: np.ones(16) for c in ids}
    transcript: list[bytes] = []
    run_secure_sum(MaskingAggregator(directory, params), clients, vectors, RID, transcript=transcript)
    reveals = [m for m in map(lambda d: decode(d, MAX), transcript) if isinstance(m, UnmaskShares)]
    assert len(reveals) == 6 and all(m.key_owners == () for m in reveals)
    # With one client dropped after sharing keys, its key is revealed and its seed never is.
    transcript.clear()
    ids, directory, clients = _clients(6, params)
    run_secure_sum(MaskingAggregator(directory, params), clients, vectors, RID,
                   drop={"UpdateUpload": [ids[0]]}, transcript=transcript)
    reveals = [m for m in map(lambda d: decode(d, MAX), transcript) if isinstance(m, UnmaskShares)]
    assert all(m.key_owners == (ids[0],) and ids[0] not in m.seed_owners for m in reveals)


def _until_unmask(n: int):
    """Run a masking sum by hand up to the coordinator's UnmaskRequests (not yet delivered)."""
    params = MaskingParams()
    ids, directory, clients = _clients(n, params)
    aggregator = MaskingAggregator(directory, params)
    aggregator.begin(RID, ids, 16)

    def upload(c):
        return lambda payload, encoding: UpdateUpload(
            federation_id=RID.federation_id, stage=RID.stage, round=RID.round, attempt=RID.attempt,
            sender=c, payload=payload, encoding=encoding)

    pending = [(c, m) for c in ids for m in clients[c].begin(RID, ids, np.ones(16), upload(c))]
    requests: dict[str, UnmaskRequest] = {}
    while pending:
        sender, message = pending.pop(0)
        for recipient, out in aggregator.receive(sender, message):
            if isinstance(out, UnmaskRequest):
                requests[recipient] = out
            else:
                pending += [(recipient, r) for r in clients[recipient].receive(out)]
    return ids, clients, requests


def test_a_coordinator_asking_for_both_shares_of_a_client_is_refused():
    ids, clients, requests = _until_unmask(5)
    victim, holder = ids[0], ids[1]
    first = clients[holder].receive(requests[holder])[0]
    assert victim in first.seed_owners  # the victim survived: its seed share went out
    # A second request that now claims the victim dropped would yield its mask-key share too.
    forged = dataclasses.replace(requests[holder], survivors=tuple(i for i in ids if i != victim))
    with pytest.raises(RemoteProtocolError, match="already unmasked"):
        clients[holder].receive(forged)
    # Another holder shown a survivor list other than the one it signed reveals nothing at all.
    other = ids[2]
    with pytest.raises(RemoteProtocolError, match="differs from the one this client signed"):
        clients[other].receive(forged)
    # And a reveal naming one owner under both kinds cannot even be built.
    with pytest.raises(ConfigError, match="never revealed together"):
        dataclasses.replace(first, key_owners=(victim,), key_shares=first.seed_shares[:1].copy())


def test_an_unmask_request_without_enough_valid_signatures_is_refused():
    ids, clients, requests = _until_unmask(5)
    request = requests[ids[1]]
    tampered = request.signatures.copy()
    tampered[0, 0] ^= 1
    with pytest.raises(RemoteProtocolError, match="signature is bad"):
        clients[ids[1]].receive(dataclasses.replace(request, signatures=tampered))
    few = dataclasses.replace(request, signers=request.signers[:2], signatures=request.signatures[:2].copy())
    with pytest.raises(RemoteProtocolError, match="signed the survivor list"):
        clients[ids[2]].receive(few)


def test_the_coordinators_ckks_context_cannot_decrypt_and_refuses_secret_keys():
    keys = create_keys()
    ids = ["a", "b", "c"]
    identities, directory = make_identities(ids)
    params = CKKSParams(k_min=2)  # three clients: below the shipped floor of 5
    clients = {c: CKKSClient(identities[c], directory, keys.secret, params) for c in ids}
    rng = np.random.default_rng(1)
    vectors = {c: rng.normal(size=3000) for c in ids}
    transcript: list[bytes] = []
    aggregator = CKKSAggregator(directory, keys.public, params)
    result = run_secure_sum(aggregator, clients, vectors, RID, transcript=transcript)
    truth = sum(vectors.values())
    assert np.linalg.norm(result.aggregate.vector - truth) / np.linalg.norm(truth) <= 1e-6
    server_ctx = load_public(keys.public)
    uploads = [m for m in map(lambda d: decode(d, MAX), transcript) if isinstance(m, UpdateUpload)]
    assert len(uploads) == 3
    for upload in uploads:
        parts = server_ctx.parse(upload.payload.tobytes()[64:], 3000)  # valid ciphertexts ...
        with pytest.raises(LocalProtocolError, match="cannot decrypt"):  # ... it cannot open
            server_ctx.decrypt(parts, 3000)
        assert not hasattr(server_ctx, "decryptor") and not hasattr(server_ctx, "encryptor")
    with pytest.raises(ConfigError, match="secret key"):
        load_public(keys.secret)
    sections = _unpack(keys.public, "public")
    with pytest.raises(ConfigError, match="Galois"):
        load_public(_pack({**sections, "galois_keys": b"\x00" * 64}))


def _subset(request, keep):
    """``request`` cut down to the contributors in ``keep`` (its rows and signatures)."""
    index = [request.contributors.index(c) for c in keep]
    rows = [request.blobs[int(request.offsets[i]) : int(request.offsets[i + 1])] for i in index]
    return dataclasses.replace(
        request, contributors=tuple(keep), blobs=np.concatenate(rows),
        offsets=np.cumsum([0] + [r.size for r in rows]).astype(np.int64),
        list_signatures=request.list_signatures[index].copy(),
    )


def test_the_ckks_decryptor_decrypts_one_confirmed_list_once():
    keys = create_keys()
    ids = ["a", "b", "c"]
    identities, directory = make_identities(ids)
    params = CKKSParams(k_min=2)
    clients = {c: CKKSClient(identities[c], directory, keys.secret, params) for c in ids}
    vectors = {c: np.full(100, float(i + 1)) for i, c in enumerate(ids)}
    real = {c: clients[c].receive for c in ids}
    captured: dict = {}

    def spy(c):
        def receive(message):
            if isinstance(message, DecryptRequest):
                captured[c] = message
                # A coordinator handing over one contribution as "the sum" is refused, and the
                # refusal consumes nothing: the honest request below still works.
                one = message.blobs[64 + int(message.offsets[1]) : int(message.offsets[2])].copy()
                with pytest.raises(RemoteProtocolError, match="differs from the sum"):
                    real[c](dataclasses.replace(message, total=one))
            return real[c](message)
        return receive

    for c in ids:
        clients[c].receive = spy(c)  # type: ignore[method-assign]
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID)
    np.testing.assert_allclose(result.aggregate.vector, np.full(100, 6.0), rtol=1e-6)
    assert list(captured) == ["a"] and len(clients["a"].decryptions) == 1
    request = captured["a"]
    # The difference attack: {a, b, c} decrypted, then {a, c} would give b's vector.
    subset = _subset(request, ["a", "c"])
    with pytest.raises(RemoteProtocolError, match="already decrypted"):
        real["a"](subset)  # the same decryptor: once per sum
    with pytest.raises(RemoteProtocolError, match="other than the one this client confirmed"):
        real["c"](subset)  # another one: only the list it confirmed
    with pytest.raises(RemoteProtocolError, match="second, different contributor list"):
        real["c"](SignedList(federation_id=RID.federation_id, stage=RID.stage, round=RID.round,
                                  attempt=RID.attempt, sender="coordinator", members=("a", "c")))
    # Below k_min a client confirms nothing and decrypts nothing.
    strict = CKKSClient(identities["b"], directory, keys.secret, CKKSParams(k_min=3))
    strict.begin(RID, ids, vectors["b"], lambda payload, encoding: None)
    with pytest.raises(RemoteProtocolError, match="k_min = 3"):
        strict.receive(SignedList(federation_id=RID.federation_id, stage=RID.stage, round=RID.round,
                                       attempt=RID.attempt, sender="coordinator", members=("a", "b")))
    with pytest.raises(RemoteProtocolError, match="k_min = 3"):
        strict.receive(_subset(request, ["a", "b"]))


@pytest.mark.parametrize("aggregation", ["masking", "ckks"])
def test_the_organizer_receives_only_secure_aggregates(aggregation):
    stages = [{client(i): i % 2 for i in range(6)}, {client(i): 2 for i in range(6)}]
    plain = build_federation(stages, cohort_size=4, config=DKOConfig(n_buckets=256))
    run_federation(plain.coordinator, plain.workers)
    fed = build_federation(stages, cohort_size=4, config=DKOConfig(n_buckets=256), aggregation=aggregation)
    seen: list[object] = []
    organizer = fed.coordinator.organizer
    plan, apply = organizer.plan, organizer.apply
    organizer.plan = lambda *a, **k: (seen.append(a[1]), plan(*a, **k))[1]  # type: ignore[method-assign]
    organizer.apply = lambda *a, **k: (seen.append(a[2]), apply(*a, **k))[1]  # type: ignore[method-assign]
    history = run_federation(fed.coordinator, fed.workers)
    assert len(seen) == len(history.of("planned")) + len(history.of("applied")) == 2 + 4
    assert all(type(a) is Aggregate and a.kind == aggregation for a in seen)
    assert not history.worker_errors and not history.of("aborted")
    # Same slots, and the same global weights within the encodings' error (slots may open in
    # another order when two buckets tie up to that error).
    assert fed.organizer.n_slots == plain.organizer.n_slots
    active = list(range(fed.organizer.n_slots))

    def rows(org):
        return sorted(map(tuple, np.round(org.global_weights(active), 3)))

    np.testing.assert_allclose(rows(fed.organizer), rows(plain.organizer), atol=2e-3)
    assert isinstance(fed.learners[client(0)], FakeLearner) and DIM > 0


def test_ckks_keys_and_encryption_randomness_come_from_os_urandom(monkeypatch):
    import secure_fcit.protocols.ckks as ckks

    assert create_keys().secret != create_keys().secret  # fresh randomness each time
    monkeypatch.setattr(ckks.os, "urandom", lambda n: bytes(range(n)))  # every seed now fixed
    first, second = create_keys(), create_keys()
    assert first.secret == second.secret  # so SEAL's key generator drew only from os.urandom
    a, b = ckks.load_secret(first.secret), ckks.load_secret(first.secret)
    x = np.arange(10.0)
    assert a.encrypt(x) == b.encrypt(x)  # and so did encryption's masks and errors
