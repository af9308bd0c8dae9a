"""The worker checks that each coordinator message is the one it expects next."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secure_fcit.errors import LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols import (
    ClientAggregator,
    PlaintextClient,
    RoundEnd,
    RoundStart,
    SlotPlan,
    StageStart,
    TokenUpload,
    UpdateUpload,
    Worker,
    decode,
    encode,
    layout,
)
from tests.unit.protocols._support import DIM, FED, SLOT, FakeLearner, task_token

ME = "client-00"
HEAD = dict(federation_id=FED, stage=0, attempt=0, sender="coordinator")


SEED = layout.public_hash_seed(FED, 0, 0)


def stage_start(**changes) -> StageStart:
    fields = dict(HEAD, round=-1, tokens=np.zeros((0, DIM), np.float32), hash_seed=SEED,
                  n_buckets=16, tau=0.9, cohort=(ME, "client-01"), aggregation="plaintext")  # fmt: skip
    fields.update(changes)
    if "hash_seed" not in changes:
        fields["hash_seed"] = layout.public_hash_seed(FED, fields["stage"], fields["attempt"])
    return StageStart(**fields)


PLAN = SlotPlan(
    **HEAD, round=-1, tokens=np.stack([task_token(1), task_token(0)]).astype(np.float32), active=(0, 1)
)


def round_start(round=0, attempt=0, **changes) -> RoundStart:
    fields = dict(HEAD, round=round, cohort=(ME, "client-01"), active=(0, 1), weights=np.ones((2, SLOT), np.float32),
                  aggregation="plaintext")  # fmt: skip
    fields.update(changes, attempt=attempt)
    return RoundStart(**fields)


def ready_worker(samples=7) -> Worker:
    worker = Worker(FED, ME, FakeLearner(ME, {0: 0}, samples=samples), PlaintextClient())
    worker.receive(stage_start())
    worker.receive(PLAN)
    return worker


def test_token_upload_carries_the_simhash_bucket_vector():
    learner = FakeLearner(ME, {0: 0}, samples=7)
    (upload,) = Worker(FED, ME, learner, PlaintextClient()).receive_bytes(encode(stage_start()))
    assert isinstance(upload, TokenUpload) and upload.round == -1 and upload.sender == ME
    token = learner.identity_token(0)
    bucket = layout.simhash_bucket(token, layout.simhash_planes(SEED, 16, DIM))
    np.testing.assert_allclose(upload.payload, layout.token_vector(token, 7, bucket, 16))


def test_a_token_matching_a_known_slot_goes_to_that_slots_block_and_no_other_is_hashed():
    known = np.stack([task_token(3), task_token(0), task_token(5)]).astype(np.float32)  # slot 1 is task 0
    planes = layout.simhash_planes(SEED, 16, DIM)
    learner = FakeLearner(ME, {0: 0}, samples=7)
    token = learner.identity_token(0)
    (upload,) = Worker(FED, ME, learner, PlaintextClient()).receive(stage_start(tokens=known))
    np.testing.assert_allclose(upload.payload, layout.token_vector(token, 7, 1, 3 + 16))
    # Below tau to every known token (a task the federation does not know): its SimHash bucket,
    # after the three known blocks.
    learner = FakeLearner(ME, {0: 7}, samples=7)
    token = learner.identity_token(0)
    assert layout.cosine(token, known).max() < 0.9
    (upload,) = Worker(FED, ME, learner, PlaintextClient()).receive(stage_start(tokens=known))
    bucket = layout.simhash_bucket(token, planes)
    np.testing.assert_allclose(upload.payload, layout.token_vector(token, 7, 3 + bucket, 3 + 16))
    # The same tokens under a tau no pair reaches: hashed, whatever the known tokens are.
    learner = FakeLearner(ME, {0: 0}, samples=7)
    (upload,) = Worker(FED, ME, learner, PlaintextClient()).receive(stage_start(tokens=known, tau=1.0))
    bucket = layout.simhash_bucket(learner.identity_token(0), planes)
    np.testing.assert_allclose(upload.payload, layout.token_vector(learner.identity_token(0), 7, 3 + bucket, 19))


def test_update_upload_trains_the_closest_slot_and_lays_out_the_vector():
    worker = ready_worker()
    (upload,) = worker.receive(round_start())
    assert isinstance(upload, UpdateUpload)
    assert worker.slots == {(0, 0): 1}  # task 0's token is PLAN's slot 1
    _, _, slot, weights = worker.learner.trained[0]
    assert slot == 1 and np.array_equal(weights, np.ones(SLOT))
    delta = worker.learner.train(0, 0, 1, weights)
    np.testing.assert_allclose(upload.payload, layout.update_vector(delta, 7, 1, 2))
    assert worker.receive(RoundEnd(**HEAD, round=0, status="applied")) == []
    assert worker.state == "ready"


def test_replayed_round_start_is_refused_and_the_worker_stops():
    worker = ready_worker()
    worker.receive(round_start())
    worker.receive(RoundEnd(**HEAD, round=0, status="applied"))
    with pytest.raises(RemoteProtocolError, match=r"\[stage 0\] RoundStart \(0, 0\) does not follow"):
        worker.receive(round_start())
    assert worker.state == "error"
    with pytest.raises(LocalProtocolError, match="is in error"):
        worker.receive(round_start(round=1))
    assert len(worker.learner.trained) == 1  # the replay cost no training (and no privacy budget)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (round_start(), "unexpected RoundStart while 'idle'"),
        (stage_start(federation_id="other-fed"), "of federation 'other-fed'"),
        (stage_start(sender="mallory"), "from 'mallory'"),
        (stage_start(aggregation="masking"), "announces 'masking' aggregation"),
    ],
)
def test_unexpected_messages_from_an_idle_worker_view(message, match):
    worker = Worker(FED, ME, FakeLearner(ME, {0: 0}), PlaintextClient())
    with pytest.raises(RemoteProtocolError, match=match):
        worker.receive(message)


def test_a_worker_configured_for_masking_never_falls_back_to_plaintext():
    class Masking(ClientAggregator):
        kind = "masking"

        def begin(self, round_id, cohort, vector, upload):
            raise AssertionError("must not be reached")

        def receive(self, message):
            return []

    worker = Worker(FED, ME, FakeLearner(ME, {0: 0}), Masking())
    with pytest.raises(RemoteProtocolError, match="configured for 'masking'"):
        worker.receive(stage_start(aggregation="plaintext"))


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (round_start(cohort=("client-01",)), "outside its cohort"),
        (round_start(active=(1,), weights=np.ones((1, SLOT), np.float32)), "differ from the plan"),
        (RoundEnd(**HEAD, round=0, status="applied"), "unexpected RoundEnd while 'ready'"),
        (dataclasses.replace(round_start(), stage=1), "not for the current stage"),
    ],
)
def test_round_level_checks(message, match):
    with pytest.raises(RemoteProtocolError, match=match):
        ready_worker().receive(message)


def test_refusal_and_no_data():
    worker = ready_worker()
    worker.learner.refuse = {(0, 0)}
    (refusal,) = worker.receive(round_start())
    assert refusal.reason == "privacy budget exhausted" and worker.learner.trained == []
    (refusal,) = Worker(FED, ME, FakeLearner(ME, {}), PlaintextClient()).receive(stage_start())
    assert refusal.reason == "no training data in this stage"


def test_bad_learner_output_is_a_local_error():
    learner = FakeLearner(ME, {0: 0})
    learner.identity_token = lambda stage: np.ones(DIM)  # not unit-norm
    with pytest.raises(LocalProtocolError, match="unit-norm"):
        Worker(FED, ME, learner, PlaintextClient()).receive(stage_start())


def test_bytes_that_do_not_decode_stop_the_worker():
    worker = ready_worker()
    with pytest.raises(RemoteProtocolError, match="codec"):
        worker.receive_bytes(b"\x00\x00")
    assert worker.state == "error"
    assert decode(encode(PLAN), 1 << 20) == PLAN
