from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import secure_fcit
from secure_fcit.errors import LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols import (
    Aggregate,
    AggregationRound,
    PlaintextAggregator,
    PlaintextClient,
    TokenUpload,
    UpdateUpload,
)
from tests.unit.protocols._support import FED

RID = AggregationRound(FED, 2, 3, 0, "update")


def upload(sender: str, vector, *, round_id=RID, encoding="plaintext-f64", cls=UpdateUpload):
    return cls(
        federation_id=round_id.federation_id, stage=round_id.stage, round=round_id.round,
        attempt=round_id.attempt, sender=sender, payload=np.asarray(vector), encoding=encoding,
    )  # fmt: skip


def started(min_contributors=2, cohort=("a", "b", "c"), length=3) -> PlaintextAggregator:
    aggregator = PlaintextAggregator(min_contributors=min_contributors)
    assert aggregator.begin(RID, cohort, length) == []
    return aggregator


def test_aggregate_cannot_be_built_outside_an_aggregator():
    for key in (None, object(), "_AGGREGATOR_KEY"):
        with pytest.raises(LocalProtocolError, match="built by secure aggregators only"):
            Aggregate(key, round_id=RID, vector=np.zeros(3), contributors=["a"], kind="plaintext")


def test_plaintext_sum_completes_when_everyone_contributed_or_dropped():
    aggregator = started()
    aggregator.receive("a", upload("a", [1.0, 2.0, 3.0]))
    assert aggregator.result() is None
    aggregator.receive("c", upload("c", [0.5, 0.5, 0.5]))
    assert aggregator.result() is None  # b is still pending
    aggregator.dropped("b")
    result = aggregator.result()
    assert isinstance(result, Aggregate)
    assert result.kind == "plaintext" and result.contributors == ("a", "c") and result.n_contributors == 2
    np.testing.assert_array_equal(result.vector, [1.5, 2.5, 3.5])
    assert result.round_id == RID
    with pytest.raises(ValueError):
        result.vector[0] = 0
    with pytest.raises(AttributeError):
        result.kind = "masking"  # type: ignore[misc]


def test_plaintext_sum_fails_below_min_contributors():
    aggregator = started(min_contributors=2)
    aggregator.receive("a", upload("a", [1.0, 1.0, 1.0]))
    aggregator.dropped("b")
    assert aggregator.failure is None
    aggregator.dropped("c")
    assert "only 1 of 3 cohort members" in aggregator.failure and "min_contributors=2" in aggregator.failure
    assert aggregator.result() is None


@pytest.mark.parametrize(
    ("sender", "message", "match"),
    [
        ("z", upload("z", [1.0, 1.0, 1.0]), "not in this sum's cohort"),
        ("a", upload("b", [1.0, 1.0, 1.0]), "expected a UpdateUpload"),
        ("a", upload("a", [1.0, 1.0]), "sent 2 values"),
        ("a", upload("a", np.array([1, 1, 1], np.uint32)), "encoding"),
        ("a", upload("a", [1.0, 1.0, 1.0], encoding="masked-u32"), "encoding"),
        ("a", upload("a", [1.0, 1.0, 1.0], round_id=AggregationRound(FED, 2, 4, 0, "update")), "expected"),
        ("a", upload("a", [1.0, 1.0, 1.0], cls=TokenUpload, round_id=AggregationRound(FED, 2, -1, 0, "token")),
         "expected a UpdateUpload"),
    ],
)  # fmt: skip
def test_plaintext_rejects_bad_contributions(sender, message, match):
    with pytest.raises(RemoteProtocolError, match=match):
        started().receive(sender, message)


def test_duplicates_and_dropped_senders_are_rejected_and_a_dropped_contribution_leaves_the_sum():
    aggregator = started(min_contributors=1)
    aggregator.receive("a", upload("a", [1.0, 1.0, 1.0]))
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        aggregator.receive("a", upload("a", [1.0, 1.0, 1.0]))
    aggregator.dropped("a")  # e.g. dropped for a replay: its input leaves the sum
    with pytest.raises(RemoteProtocolError, match="already dropped"):
        aggregator.receive("a", upload("a", [1.0, 1.0, 1.0]))
    aggregator.receive("b", upload("b", [2.0, 2.0, 2.0]))
    aggregator.dropped("c")
    assert aggregator.result().contributors == ("b",)
    np.testing.assert_array_equal(aggregator.result().vector, [2.0, 2.0, 2.0])


def test_misuse_is_a_local_error():
    aggregator = PlaintextAggregator()
    with pytest.raises(LocalProtocolError, match="before begin"):
        aggregator.receive("a", upload("a", [1.0]))
    aggregator.begin(RID, ["a"], 1)
    with pytest.raises(LocalProtocolError, match="twice"):
        aggregator.begin(RID, ["a"], 1)
    with pytest.raises(LocalProtocolError, match="not in this sum's cohort"):
        aggregator.dropped("z")


def test_plaintext_client_sends_its_vector_as_float64():
    sent = PlaintextClient().begin(
        RID, ["a"], np.array([1, 2], np.float32), lambda payload, enc: upload("a", payload, encoding=enc)
    )
    assert len(sent) == 1 and sent[0].payload.dtype == np.float64 and sent[0].encoding == "plaintext-f64"
    with pytest.raises(RemoteProtocolError, match="no further phases"):
        PlaintextClient().receive(sent[0])
    with pytest.raises(LocalProtocolError, match="finite"):
        PlaintextClient.prepare(np.array([np.nan]))


def test_only_aggregator_modules_import_the_capability():
    """The audit behind "only aggregators build Aggregates": who names ``_AGGREGATOR_KEY``."""
    root = Path(secure_fcit.__file__).parent
    users = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if "_AGGREGATOR_KEY" in p.read_text()}
    assert users <= {"protocols/aggregation.py", "protocols/secagg.py", "protocols/ckks.py"}, users
