"""CKKS aggregation: accuracy, dropouts (contributor and decryptor), key ceremony, bad peers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from secure_fcit.cli import main
from secure_fcit.errors import ConfigError
from secure_fcit.protocols import AggregationRound, UpdateUpload
from secure_fcit.protocols.ckks import (
    CKKSAggregator,
    CKKSClient,
    CKKSParams,
    _signed_bytes,
    create_keys,
    load_secret,
    write_keys,
)
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import make_identities

RID = AggregationRound("fed", 0, 1, 0, "update")
SMALL = CKKSParams(k_min=2)  # protocol mechanics on cohorts of 3-5; the shipped floor (5) is tested in attacks/


@pytest.fixture(scope="module")
def keys():
    return create_keys()


def setup(keys, n=4, params=None, length=5000, seed=0):
    ids = [f"c{i}" for i in range(n)]
    identities, directory = make_identities(ids)
    params = params or SMALL
    clients = {c: CKKSClient(identities[c], directory, keys.secret, params) for c in ids}
    rng = np.random.default_rng(seed)
    vectors = {c: rng.normal(0, 0.05, length) * 50 for c in ids}  # weighted updates: n_k * delta
    return ids, directory, params, clients, vectors


def relative_error(result, vectors):
    truth = sum(vectors[c] for c in result.aggregate.contributors)
    return np.linalg.norm(result.aggregate.vector - truth) / np.linalg.norm(truth)


def test_aggregate_is_within_one_millionth_relative(keys):
    ids, directory, params, clients, vectors = setup(keys, n=5, length=20000)
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID)
    assert result.failure is None and result.aggregate.kind == "ckks"
    assert relative_error(result, vectors) <= 1e-6
    assert result.aggregate.n_contributors == 5
    decryptor = clients[ids[0]]  # the first contributor in id order
    assert len(decryptor.decryptions) == 1 and decryptor.decryptions[0]["contributors"] == ids
    assert decryptor.decryptions[0]["flood_std"] > 0
    assert all(not clients[c].decryptions for c in ids[1:])


def test_dropped_contributor_and_dropped_decryptor(keys):
    ids, directory, params, clients, vectors = setup(keys)
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID,
                            drop={"UpdateUpload": [ids[3]]})
    assert result.aggregate.contributors == tuple(ids[:3]) and relative_error(result, vectors) <= 1e-6
    ids, directory, params, clients, vectors = setup(keys)
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID,
                            drop={"DecryptedSum": [ids[0]]})
    assert result.aggregate.n_contributors == 4  # the next contributor decrypted
    assert clients[ids[1]].decryptions and relative_error(result, vectors) <= 1e-6


def test_too_few_contributions_abort(keys):
    ids, directory, params, clients, vectors = setup(keys, n=3)
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID,
                            drop={"UpdateUpload": ids[:2]})
    assert result.aggregate is None and "k_min" in result.failure


@pytest.mark.parametrize("kind", ["garbage", "bad-signature", "wrong-length", "wrong-round", "not-ntt"])
def test_a_bad_contribution_drops_its_sender(keys, kind):
    ids, directory, params, clients, vectors = setup(keys)
    offender = ids[2]
    inner = clients[offender]

    class Bad:
        message_types = inner.message_types

        def begin(self, rid, cohort, vector, upload):
            # a length is visible at ciphertext granularity (4096 values): 4000 values make one, not two
            message = inner.begin(rid, cohort, vector[:4000] if kind == "wrong-length" else vector, upload)[0]
            if kind == "garbage":
                return [dataclasses.replace(message, payload=np.frombuffer(os.urandom(200), np.uint8).copy())]
            if kind == "bad-signature":
                payload = message.payload.copy()
                payload[0] ^= 1
                return [dataclasses.replace(message, payload=payload)]
            if kind == "wrong-round":
                return [dataclasses.replace(message, round=message.round + 1)]
            if kind == "not-ntt":  # a well-formed, correctly signed ciphertext SEAL cannot add
                ctx = inner.context
                parts = ctx.parse(message.payload.tobytes()[64:], vector.size)
                for part in parts:
                    ctx.evaluator.transform_from_ntt_inplace(part)
                blob = ctx.serialize(parts)
                sig = inner.identity.signing.sign(_signed_bytes(rid.binding("ckks"), offender, blob))
                return [dataclasses.replace(message, payload=np.frombuffer(sig + blob, np.uint8).copy())]
            return [message]

        def receive(self, m):
            return inner.receive(m)

    clients[offender] = Bad()
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID)
    assert offender in result.client_errors and offender not in result.aggregate.contributors
    assert relative_error(result, vectors) <= 1e-6


def test_keys_init_writes_a_private_secret_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "init", "--out", str(out)]) == 0
    secret = out / "ckks-secret.ctx"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "public context" in capsys.readouterr().out
    load_secret(secret.read_bytes(), secret)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_keys(out)
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret(secret.read_bytes(), secret)
    with pytest.raises(ConfigError, match="no secret key"):
        load_secret((out / "ckks-public.ctx").read_bytes())
    with pytest.raises(ConfigError, match="not a secure-fcit CKKS context"):
        load_secret(b"not a context")


def test_params_are_checked():
    with pytest.raises(ConfigError, match="k_min"):
        CKKSParams(k_min=1)
    with pytest.raises(ConfigError, match="flood_bits"):
        CKKSParams(flood_bits=40)
    assert CKKSParams(flood_bits=3).flood_std(4) == 2 * CKKSParams(flood_bits=2).flood_std(4)
    assert CKKSParams().k_min == 5
    with pytest.raises(ConfigError, match="ckks_bound"):
        CKKSParams(bound=float("inf"))
    with pytest.raises(ConfigError, match="wrap around"):
        CKKSParams(k_min=5, bound=1e5)  # even the smallest decryptable sum could wrap
    assert UpdateUpload.__name__ == "UpdateUpload"


def test_a_contributor_leaving_before_confirming_the_list_fails_the_sum_for_a_retry(keys):
    ids, directory, params, clients, vectors = setup(keys)
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, vectors, RID,
                            drop={"ListSignature": [ids[2]]})
    assert result.aggregate is None and "before confirming" in result.failure
    assert not any(c.decryptions for c in clients.values())  # nothing was decrypted
