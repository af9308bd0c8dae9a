from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secure_fcit.errors import ConfigError, RemoteProtocolError
from secure_fcit.protocols import (
    MESSAGE_TYPES,
    Abort,
    Refusal,
    RoundEnd,
    RoundStart,
    SlotPlan,
    StageEnd,
    StageStart,
    StageSync,
    TokenUpload,
    UpdateUpload,
    decode,
    encode,
)
from secure_fcit.protocols.aggregation import ListSignature, SignedList
from secure_fcit.protocols.ckks import DecryptedSum, DecryptRequest
from secure_fcit.protocols.secagg import (
    ConvictionNotice,
    KeyAdvert,
    KeyDirectory,
    PairSeed,
    ShareComplaint,
    ShareDelivery,
    ShareUpload,
    UnmaskRequest,
    UnmaskShares,
)

MAX = 1 << 20
ids = st.from_regex(r"[A-Za-z0-9._:@/-]{1,24}", fullmatch=True)
cohorts = st.lists(ids, max_size=6, unique=True).map(tuple)
text = st.text(max_size=60)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
f64 = st.floats(allow_nan=False, allow_infinity=False)


def common(stage_level: bool | None):
    rounds = (
        st.just(-1) if stage_level else st.integers(0, 50) if stage_level is False else st.integers(-1, 50)
    )
    return dict(
        federation_id=ids, stage=st.integers(0, 1000), round=rounds, attempt=st.integers(0, 3), sender=ids
    )


def tokens(n_min: int = 0):
    return st.tuples(st.integers(n_min, 4), st.integers(1, 5)).flatmap(
        lambda shape: hnp.arrays(np.float32, shape, elements=f32)
    )


@st.composite
def slot_plans(draw):
    toks = draw(tokens())
    active = draw(st.lists(st.integers(0, max(toks.shape[0] - 1, 0)), unique=True, max_size=toks.shape[0]))
    return SlotPlan(
        **{k: draw(v) for k, v in common(True).items()}, tokens=toks, active=tuple(sorted(active))
    )


@st.composite
def round_starts(draw):
    active = tuple(sorted(draw(st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True))))
    p = draw(st.integers(1, 5))
    weights = draw(hnp.arrays(np.float32, (len(active), p), elements=f32))
    return RoundStart(
        **{k: draw(v) for k, v in common(False).items()},
        cohort=draw(cohorts),
        active=active,
        weights=weights,
        aggregation=draw(ids),
    )


def contributions(cls, stage_level):
    payloads = st.one_of(
        hnp.arrays(np.float64, st.integers(0, 8), elements=f64),
        hnp.arrays(np.uint32, st.integers(0, 8)),
        hnp.arrays(np.uint8, st.integers(0, 8)),
    )
    return st.builds(cls, **common(stage_level), payload=payloads, encoding=ids)


messages = st.one_of(
    st.builds(
        StageStart,
        **common(True),
        tokens=tokens(),
        hash_seed=st.binary(min_size=32, max_size=32),
        n_buckets=st.sampled_from([2, 4, 1024]),
        tau=st.floats(min_value=1e-6, max_value=1.0),
        cohort=cohorts,
        aggregation=ids,
    ),
    contributions(TokenUpload, True),
    slot_plans(),
    round_starts(),
    contributions(UpdateUpload, False),
    st.builds(Refusal, **common(None), reason=text),
    st.builds(RoundEnd, **common(False), status=st.sampled_from(["applied", "aborted"]), reason=text),
    st.builds(StageEnd, **common(True)),
    st.builds(Abort, **common(True), reason=text),
)


def _rows(width: int):
    return cohorts.flatmap(
        lambda ids_: st.tuples(st.just(ids_), hnp.arrays(np.uint8, (len(ids_), width)))
    )


@st.composite
def secagg_messages(draw):
    base = {k: draw(v) for k, v in common(None).items()}
    kind = draw(st.integers(0, 12))
    b32, b64 = st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)
    if kind == 0:
        return KeyAdvert(**base, transport_key=draw(b32), mask_key=draw(b32), seed_commitment=draw(b32),
                         signature=draw(b64))
    if kind == 1:
        members, keys = draw(_rows(160))
        return KeyDirectory(**base, members=members, keys=keys)
    if kind in (2, 3):
        who, rows = draw(_rows(288))
        if kind == 2:
            return ShareUpload(**base, recipients=who, ciphertexts=rows)
        return ShareDelivery(**base, senders=who, ciphertexts=rows)
    if kind == 4:
        return SignedList(**base, members=draw(cohorts))
    if kind == 5:
        return ListSignature(**base, signature=draw(b64))
    if kind == 6:
        signers, sigs = draw(_rows(64))
        return UnmaskRequest(**base, survivors=draw(cohorts), signers=signers, signatures=sigs)
    if kind == 7:
        owners, shares = draw(_rows(66))
        return UnmaskShares(**base, seed_owners=owners, seed_shares=shares, key_owners=(),
                            key_shares=np.zeros((0, 66), np.uint8))
    if kind == 10:
        accused = draw(st.lists(ids, min_size=1, max_size=4, unique=True).map(tuple))
        return ShareComplaint(**base, accused=accused, keys=draw(hnp.arrays(np.uint8, (len(accused), 32))),
                              signatures=draw(hnp.arrays(np.uint8, (len(accused), 64))))
    if kind == 11:
        pair = draw(st.lists(ids, min_size=2, max_size=2, unique=True))
        return ConvictionNotice(**base, convicted=pair[draw(st.integers(0, 1))], complainer=pair[0],
                                accused=pair[1], row=draw(st.binary(min_size=288, max_size=288)),
                                key=draw(b32), complaint_signature=draw(b64))
    if kind == 12:
        return PairSeed(**base, convicted=draw(ids), seed=draw(st.sampled_from([b"", bytes(range(32))])))
    if kind == 8:
        contributors = draw(st.lists(ids, min_size=1, max_size=4, unique=True).map(tuple))
        sizes = draw(st.lists(st.integers(65, 80), min_size=len(contributors), max_size=len(contributors)))
        offsets = np.cumsum([0, *sizes]).astype(np.int64)
        return DecryptRequest(**base, contributors=contributors,
                              blobs=draw(hnp.arrays(np.uint8, int(offsets[-1]))), offsets=offsets,
                              list_signatures=draw(hnp.arrays(np.uint8, (len(contributors), 64))),
                              total=draw(hnp.arrays(np.uint8, st.integers(0, 8))))
    return DecryptedSum(**base, vector=draw(hnp.arrays(np.float64, st.integers(0, 8), elements=f64)),
                        n_contributors=draw(st.integers(1, 50)))


@st.composite
def stage_syncs(draw):
    toks = draw(tokens())
    planned = draw(st.booleans())
    base = {k: draw(v) for k, v in common(False if planned else True).items()}
    active = draw(st.lists(st.integers(0, max(toks.shape[0] - 1, 0)), unique=True, max_size=toks.shape[0]))
    return StageSync(**base, tokens=toks, active=tuple(sorted(active)) if planned else (), planned=planned)


messages = st.one_of(messages, secagg_messages(), stage_syncs())


def test_every_registered_type_is_covered():
    assert set(MESSAGE_TYPES) == {
        "StageStart", "TokenUpload", "SlotPlan", "StageSync", "RoundStart", "UpdateUpload",
        "Refusal", "RoundEnd", "StageEnd", "Abort",
        "SignedList", "ListSignature",
        "KeyAdvert", "KeyDirectory", "ShareUpload", "ShareDelivery", "UnmaskRequest", "UnmaskShares",
        "ShareComplaint", "ConvictionNotice", "PairSeed",
        "DecryptRequest", "DecryptedSum",
    }  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(messages)
def test_decode_inverts_encode(message):
    assert decode(encode(message), MAX) == message


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        decode(data, MAX)


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_truncated_or_corrupted_bytes_raise_only_remote_protocol_error(message, data):
    raw = encode(message)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(RemoteProtocolError):
        decode(raw[:cut], MAX)
    flip = data.draw(st.integers(0, len(raw) - 1))
    corrupted = bytearray(raw)
    corrupted[flip] ^= data.draw(st.integers(1, 255))
    try:
        decode(bytes(corrupted), MAX)  # a flip inside an array's bytes can still be a valid message
    except RemoteProtocolError:
        pass


def _frame(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(4, "little") + raw + body


def _header(message) -> dict:
    raw = encode(message)
    size = int.from_bytes(raw[:4], "little")
    return json.loads(raw[4 : 4 + size]), raw[4 + size :]


PLAN = SlotPlan(
    federation_id="f", stage=1, round=-1, sender="coordinator",
    tokens=np.eye(2, 3, dtype=np.float32), active=(0, 1),
)  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda h: h.update(type="Pickle"), "unknown message type"),
        (lambda h: h.update(version=1), "unsupported version"),  # before StageStart carried tau
        (lambda h: h.update(extra=1), "header keys"),
        (lambda h: h["fields"].update(active="0,1"), "JSON tuple-int"),
        (lambda h: h["fields"].update(surprise=1), "fields"),
        (lambda h: h["arrays"][0].update(shape=[3, 3]), "needs 36 bytes"),
        (lambda h: h["arrays"][0].update(shape=[1, 3]), "trailing bytes"),
        (lambda h: h["arrays"][0].update(dtype="<f8"), "dtype"),
        (lambda h: h["arrays"][0].update(dtype="|O"), "dtype"),
        (lambda h: h.update(stage=True), "JSON int"),
        (lambda h: h["fields"].update(active=[1, 0]), "strictly increasing"),
    ],
)
def test_malformed_headers_are_named(mutate, match):
    header, body = _header(PLAN)
    mutate(header)
    with pytest.raises(RemoteProtocolError, match=match):
        decode(_frame(header, body), MAX)


def test_float_fields_travel_as_finite_json_numbers_only():
    start = StageStart(federation_id="f", stage=0, round=-1, sender="coordinator",
                       tokens=np.zeros((0, 3), np.float32), hash_seed=bytes(32), n_buckets=4, tau=0.9,
                       cohort=("client-0",), aggregation="plaintext")  # fmt: skip
    header, body = _header(start)
    assert header["fields"]["tau"] == 0.9 and decode(encode(start), MAX).tau == 0.9
    header["fields"]["tau"] = 1  # an integral JSON number is a float field's value too
    assert decode(_frame(header, body), MAX).tau == 1.0
    for bad in ("0.9", True, None, 10**400):
        header["fields"]["tau"] = bad
        with pytest.raises(RemoteProtocolError, match="JSON float"):
            decode(_frame(header, body), MAX)
    header["fields"]["tau"] = 2.5  # a finite float the message itself refuses
    with pytest.raises(RemoteProtocolError, match="tau must be a number in"):
        decode(_frame(header, body), MAX)


def test_non_finite_arrays_and_json_constants_are_refused():
    header, body = _header(PLAN)
    bad = np.frombuffer(body, dtype="<f4").copy()
    bad[0] = np.nan
    with pytest.raises(RemoteProtocolError, match="NaN or infinite"):
        decode(_frame(header, bad.tobytes()), MAX)
    raw = json.dumps(header).replace('"stage": 1', '"stage": NaN').encode()
    with pytest.raises(RemoteProtocolError, match="non-finite"):
        decode(len(raw).to_bytes(4, "little") + raw + body, MAX)


def test_oversize_and_short_messages():
    raw = encode(PLAN)
    with pytest.raises(RemoteProtocolError, match="exceeds max_size"):
        decode(raw, len(raw) - 1)
    assert decode(raw, len(raw)) == PLAN
    with pytest.raises(RemoteProtocolError, match="no header length"):
        decode(b"\x01", MAX)
    with pytest.raises(RemoteProtocolError, match="header length"):
        decode(b"\xff\xff\xff\xff", MAX)


def test_construction_validates_fields():
    base = dict(federation_id="f", stage=0, sender="coordinator")
    with pytest.raises(ConfigError, match="round must be -1"):
        StageEnd(**base, round=0)
    with pytest.raises(ConfigError, match="round must be >= 0"):
        RoundEnd(**base, round=-1, status="applied")
    with pytest.raises(ConfigError, match="status"):
        RoundEnd(**base, round=0, status="maybe")
    with pytest.raises(ConfigError, match="sender"):
        StageEnd(federation_id="f", stage=0, round=-1, sender="bad id with spaces")
    with pytest.raises(ConfigError, match="hash_seed"):
        StageStart(**base, round=-1, tokens=np.zeros((0, 2), np.float32), hash_seed=b"short",
                   n_buckets=4, tau=0.9, cohort=(), aggregation="plaintext")  # fmt: skip
    with pytest.raises(ConfigError, match="power of two"):
        StageStart(**base, round=-1, tokens=np.zeros((0, 2), np.float32), hash_seed=bytes(32),
                   n_buckets=6, tau=0.9, cohort=(), aggregation="plaintext")  # fmt: skip
    for tau in (0.0, 1.5, float("nan"), True, "0.9"):
        with pytest.raises(ConfigError, match="tau must be a number in"):
            StageStart(**base, round=-1, tokens=np.zeros((0, 2), np.float32), hash_seed=bytes(32),
                       n_buckets=4, tau=tau, cohort=(), aggregation="plaintext")  # fmt: skip
    with pytest.raises(ConfigError, match="dtype"):
        SlotPlan(**base, round=-1, tokens=np.zeros((1, 2)), active=())  # float64, not float32
    with pytest.raises(ConfigError, match="more than once"):
        RoundStart(**base, round=0, cohort=("a", "a"), active=(0,), weights=np.zeros((1, 2), np.float32),
                   aggregation="plaintext")  # fmt: skip
    with pytest.raises(ConfigError, match=r"shape \(1, p >= 1\)"):
        RoundStart(**base, round=0, cohort=("a",), active=(0,), weights=np.zeros((2, 2), np.float32),
                   aggregation="plaintext")  # fmt: skip


def test_messages_are_immutable_copies():
    weights = np.ones((1, 3), np.float32)
    message = RoundStart(
        federation_id="f", stage=0, round=0, sender="coordinator", cohort=("a",), active=(4,),
        weights=weights, aggregation="plaintext",
    )  # fmt: skip
    weights[0, 0] = 7
    assert message.weights[0, 0] == 1
    with pytest.raises(ValueError):
        message.weights[0, 0] = 2
    with pytest.raises(AttributeError):
        message.round = 3  # type: ignore[misc]
