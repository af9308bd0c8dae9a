"""The baselines' organizers: one shared slot, EWC's Fisher consolidation, the aggregate-only gate."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fcit.errors import LocalProtocolError
from secure_fcit.fcit.dko import DKOConfig
from secure_fcit.fcit.organizers import EWC_PARTS, EWCOrganizer, SharedSlotOrganizer
from secure_fcit.protocols import layout
from tests.unit.protocols._support import DIM, aggregate_of, task_token

B = 8
P = 3


def tokens_sum(stage, entries, known=0):
    """entries: (client, token, n_samples, SimHash bucket), blocks after the ``known`` slots' blocks."""
    vectors = {c: layout.token_vector(t, n, known + b, known + B) for c, t, n, b in entries}
    return aggregate_of(vectors, stage=stage, round=-1)


def updates_sum(stage, round, entries):
    return aggregate_of({c: layout.update_vector(np.asarray(d, float), n, 0, 1) for c, d, n in entries},
                        stage=stage, round=round)


def test_shared_slot_keeps_one_slot_over_different_tasks():
    org = SharedSlotOrganizer(DIM, P, DKOConfig(n_buckets=B), slot_init=lambda s: np.full(P, 0.5, np.float32))
    plan = org.plan(0, tokens_sum(0, [("a", task_token(0), 2, 1), ("b", task_token(1), 6, 5)]))
    assert plan.active == (0,) and plan.opened == (0,)
    org.apply(0, 0, updates_sum(0, 0, [("a", [1, 1, 1], 2), ("b", [3, 3, 3], 6)]))
    np.testing.assert_allclose(org.global_weights([0])[0], 0.5 + 2.5)  # (2*1 + 6*3) / 8
    plan = org.plan(1, tokens_sum(1, [("c", task_token(2), 4, 0)], known=1))
    assert plan.active == (0,) and plan.opened == () and org.n_slots == 1


def test_shared_slot_accepts_aggregates_only():
    org = SharedSlotOrganizer(DIM, P, DKOConfig(n_buckets=B))
    vector = layout.token_vector(task_token(0), 3, 1, B)
    with pytest.raises(LocalProtocolError, match="accepts only an Aggregate"):
        org.plan(0, vector)  # type: ignore[arg-type]


def test_ewc_consolidates_the_federated_fisher_at_each_stage():
    p = 2
    org = EWCOrganizer(DIM, EWC_PARTS * p, DKOConfig(n_buckets=B),
                       slot_init=lambda s: np.array([1, 1, 0, 0, 0, 0, 0, 0], np.float32))
    org.plan(0, tokens_sum(0, [("a", task_token(0), 1, 0), ("b", task_token(0), 3, 0)]))
    w = org.global_weights([0])[0]
    np.testing.assert_array_equal(w[p : 2 * p], [1, 1])  # anchor = the weights at stage start
    # Last round of stage 0: the update adds F_k - F_new (F_new = 0) to the Fisher block.
    org.apply(0, 0, updates_sum(0, 0, [("a", [0.5, 0.5, 0, 0, 0, 0, 2.0, 4.0], 1),
                                       ("b", [0.5, 0.5, 0, 0, 0, 0, 6.0, 8.0], 3)]))
    w = org.global_weights([0])[0]
    np.testing.assert_allclose(w[3 * p :], [5.0, 7.0])  # the sample-weighted mean Fisher
    org.plan(1, tokens_sum(1, [("a", task_token(1), 2, 0)], known=1))
    w = org.global_weights([0])[0]
    np.testing.assert_allclose(w[:p], [1.5, 1.5])
    np.testing.assert_allclose(w[p : 2 * p], [1.5, 1.5])  # new anchor
    np.testing.assert_allclose(w[2 * p : 3 * p], [5.0, 7.0])  # accumulated
    np.testing.assert_allclose(w[3 * p :], 0.0)
