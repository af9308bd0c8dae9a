from __future__ import annotations

import numpy as np
import pytest

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.fcit.dko import DKOConfig, DKOOrganizer, Release
from secure_fcit.protocols import UpdateUpload, layout
from tests.unit.protocols._support import DIM, FED, aggregate_of, task_token

B = 8  # buckets
P = 4  # slot size


def organizer(**config) -> DKOOrganizer:
    return DKOOrganizer(DIM, P, DKOConfig(n_buckets=B, **config))


def tokens_sum(stage: int, entries, known: int = 0) -> object:
    """Aggregate of token vectors; entries: (client, token, n_samples, where), ``where`` a SimHash
    bucket (its block follows the ``known`` slots' blocks) or ("slot", j), known slot j's block."""
    def block(where) -> int:
        return where[1] if isinstance(where, tuple) else known + where

    vectors = {c: layout.token_vector(t, n, block(w), known + B) for c, t, n, w in entries}
    return aggregate_of(vectors, stage=stage, round=-1)


def updates_sum(stage: int, round: int, n_active: int, entries) -> object:
    """Aggregate of update vectors; entries: (client, delta, n_samples, position)."""
    return aggregate_of(
        {c: layout.update_vector(np.asarray(d, float), n, j, n_active) for c, d, n, j in entries},
        stage=stage,
        round=round,
    )


def two_slot_organizer(**config) -> DKOOrganizer:
    org = organizer(**config)
    org.plan(0, tokens_sum(0, [("a", task_token(0), 3, 1), ("b", task_token(0), 5, 1),
                               ("c", task_token(1), 4, 2), ("d", task_token(1), 4, 2)]))  # fmt: skip
    assert org.active == (0, 1)
    return org


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"k_min": 0}, "k_min"), ({"tau": 0.0}, "tau"), ({"tau": 1.5}, "tau"), ({"tau": float("nan")}, "tau"),
     ({"max_slots": 0}, "max_slots"), ({"policy": "sometimes"}, "policy"), ({"n_buckets": 6}, "n_buckets"),
     ({"min_open_share": 1.0}, "min_open_share"), ({"min_open_share": -0.1}, "min_open_share"),
     ({"min_open_share": True}, "min_open_share")],
)  # fmt: skip
def test_config_validation_names_the_parameter(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        DKOConfig(**kwargs)


def test_organizer_never_receives_a_single_clients_vector():
    """Proof of invariant 1: anything but an aggregator-built Aggregate is refused, whatever it is."""
    org = two_slot_organizer()
    vector = layout.update_vector(np.ones(P), 3, 0, 2)
    single = UpdateUpload(
        federation_id=FED, stage=0, round=0, sender="a", payload=vector, encoding="plaintext-f64"
    )
    for not_an_aggregate in (vector, single, {"vector": vector, "n_contributors": 5}, [vector]):
        with pytest.raises(
            LocalProtocolError, match="accepts only an Aggregate built by a secure aggregator"
        ):
            org.apply(0, 0, not_an_aggregate)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError, match="accepts only an Aggregate"):
            org.plan(1, not_an_aggregate)  # type: ignore[arg-type]
    np.testing.assert_array_equal(org.global_weights([0, 1]), 0)


def test_aggregate_of_the_wrong_phase_or_round_is_refused():
    org = two_slot_organizer()
    with pytest.raises(LocalProtocolError, match="token phase stage 0 round -1, expected update"):
        org.apply(0, 0, tokens_sum(0, [("a", task_token(0), 3, 1)]))
    with pytest.raises(LocalProtocolError, match="round 1"):
        org.apply(0, 0, updates_sum(0, 1, 2, [("a", np.ones(P), 3, 0)]))


def test_tokens_open_one_slot_per_task_and_returning_tasks_reuse_it():
    org = two_slot_organizer()
    assert org.n_slots == 2
    np.testing.assert_allclose(org.tokens[0], task_token(0), atol=1e-6)
    np.testing.assert_allclose(org.tokens[1], task_token(1), atol=1e-6)
    # Task 0 returns with a slightly different token: slot 0 is reused, its token the running mean.
    nudged = task_token(0) + 0.05 * task_token(1)
    nudged /= np.linalg.norm(nudged)
    plan = org.plan(1, tokens_sum(1, [("a", nudged, 4, ("slot", 0)), ("e", nudged, 4, ("slot", 0))], known=2))
    assert plan.active == (0,) and plan.opened == () and org.n_slots == 2
    np.testing.assert_allclose(org.tokens[0], (8 * task_token(0) + 8 * nudged) / 16, atol=1e-6)
    # A SimHash bucket whose mean matches a known token at tau joins that slot as well.
    plan = org.plan(2, tokens_sum(2, [("a", task_token(1), 4, 5), ("e", task_token(1), 4, 5)], known=2))
    assert plan.active == (1,) and plan.opened == () and org.n_slots == 2


def test_a_returning_task_matched_on_the_clients_cannot_collide_with_a_new_task():
    """A returning task's clients match its slot's broadcast token themselves, so only new tasks
    are hashed: a new task whose tokens share a SimHash bucket with a returning one still opens
    its slot. Had the returning clients been hashed into the same bucket, the mixed bucket would be
    discarded as incoherent and the new task's clients would train another task's slot."""
    returning = [("a", task_token(0), 400, ("slot", 0)), ("b", task_token(0), 500, ("slot", 0))]
    new = [("c", task_token(2), 600, 3), ("d", task_token(2), 400, 3)]
    org = two_slot_organizer()
    plan = org.plan(1, tokens_sum(1, returning + new, known=2))
    assert plan.opened == (2,) and plan.active == (0, 2) and plan.incoherent_buckets == ()
    np.testing.assert_allclose(org.tokens[2], task_token(2), atol=1e-6)
    hashed_together = [(c, t, n, 3) for c, t, n, _ in returning] + new
    org = two_slot_organizer()
    plan = org.plan(1, tokens_sum(1, hashed_together, known=2))
    assert plan.opened == () and plan.active == () and plan.incoherent_buckets == (2 + 3,)


def test_a_known_slot_block_below_k_min_is_withheld_under_refuse_and_logged():
    org = two_slot_organizer(policy="refuse", k_min=2)
    before = org.tokens.copy()
    plan = org.plan(1, tokens_sum(1, [("a", task_token(0), 9, ("slot", 0)),
                                      ("c", task_token(1), 4, ("slot", 1)), ("d", task_token(1), 4, ("slot", 1))],
                                  known=2))  # fmt: skip
    assert plan.active == (1,) and plan.withheld_buckets == (0,)
    np.testing.assert_array_equal(org.tokens[0], before[0])  # the lone client's token changed nothing
    assert org.releases[-1] == Release(1, -1, "token", 0, 1, "refuse", False)


def test_bucket_means_that_match_each_other_merge_into_one_new_slot():
    org = organizer()
    plan = org.plan(0, tokens_sum(0, [("a", task_token(3), 2, 0), ("b", task_token(3), 2, 0),
                                      ("c", task_token(3), 6, 7), ("d", task_token(3), 6, 7)]))  # fmt: skip
    assert plan.opened == (0,) and plan.active == (0,)


def test_slot_limit_is_refused_and_nothing_changes():
    org = organizer(max_slots=1)
    entries = [("a", task_token(0), 3, 1), ("b", task_token(0), 3, 1),
               ("c", task_token(1), 3, 2), ("d", task_token(1), 3, 2)]  # fmt: skip
    with pytest.raises(LocalProtocolError, match="needs 2 slots, more than max_slots=1"):
        org.plan(0, tokens_sum(0, entries))
    assert org.n_slots == 0 and org.releases == ()


def test_small_token_buckets_follow_the_policy_and_mixed_buckets_are_not_used():
    org = organizer()  # refuse, k_min=2
    plan = org.plan(0, tokens_sum(0, [("a", task_token(0), 3, 1), ("b", task_token(0), 3, 1),
                                      ("c", task_token(1), 3, 4),  # alone in its bucket
                                      ("d", task_token(2), 3, 6), ("e", task_token(5), 3, 6)]))  # fmt: skip
    assert plan.opened == (0,) and plan.withheld_buckets == (4,) and plan.incoherent_buckets == (6,)
    assert org.releases == (Release(0, -1, "token", 4, 1, "refuse", False),)


def test_round_update_is_the_sample_weighted_mean_delta():
    org = two_slot_organizer()
    da, db, dc, dd = [0.5, -1, 2, 0], [1, 1, 1, 1], [3, 0, 0, 3], [-1, 0, 2, 2]
    outcome = org.apply(0, 0, updates_sum(0, 0, 2, [("a", da, 3, 0), ("b", db, 5, 0), ("c", dc, 2, 1),
                                                    ("d", dd, 6, 1)]))  # fmt: skip
    assert outcome.applied == (0, 1) and outcome.withheld == () and outcome.clients == {0: 2, 1: 2}
    by_hand_0 = (3 * np.array(da) + 5 * np.array(db)) / 8
    by_hand_1 = (2 * np.array(dc) + 6 * np.array(dd)) / 8
    np.testing.assert_allclose(org.global_weights([0, 1]), np.stack([by_hand_0, by_hand_1]), rtol=1e-6)
    # A second round adds to the first; a slot nobody trained stays as it was.
    org.apply(0, 1, updates_sum(0, 1, 2, [("a", db, 1, 0), ("b", db, 1, 0)]))
    np.testing.assert_allclose(org.global_weights([0])[0], by_hand_0 + 1, rtol=1e-6)
    np.testing.assert_allclose(org.global_weights([1])[0], by_hand_1, rtol=1e-6)


def test_slot_below_k_min_is_withheld_under_refuse_and_logged():
    org = two_slot_organizer(policy="refuse", k_min=2)
    outcome = org.apply(0, 3, updates_sum(0, 3, 2, [("a", np.ones(P), 3, 0), ("b", np.ones(P), 3, 0),
                                                    ("c", 5 * np.ones(P), 4, 1)]))  # fmt: skip
    assert outcome.applied == (0,) and outcome.withheld == (1,)
    np.testing.assert_array_equal(org.global_weights([1]), 0)  # unchanged
    assert org.releases == (Release(0, 3, "update", 1, 1, "refuse", False),)


@pytest.mark.parametrize(("policy", "dp", "applied"), [("allow", False, True), ("allow-with-dp", False, False),
                                                       ("allow-with-dp", True, True)])  # fmt: skip
def test_slot_below_k_min_under_allow_policies(policy, dp, applied):
    org = two_slot_organizer(policy=policy, k_min=2)
    org.apply(0, 0, updates_sum(0, 0, 2, [("c", 5 * np.ones(P), 4, 1)]), dp=dp)
    np.testing.assert_array_equal(org.global_weights([1])[0], 5.0 if applied else 0.0)
    assert org.releases == (Release(0, 0, "update", 1, 1, policy, applied),)


def test_sum_with_a_malformed_contribution_is_refused_whole():
    org = two_slot_organizer()
    bad = layout.update_vector(np.ones(P), 3, 0, 2)
    bad[-2] = 2.0  # claims two clients in slot 0
    good = layout.update_vector(np.ones(P), 3, 1, 2)
    with pytest.raises(RemoteProtocolError, match="inconsistent with 2 well-formed contributions"):
        org.apply(0, 0, aggregate_of({"a": bad, "b": good}, stage=0, round=0))
    np.testing.assert_array_equal(org.global_weights([0, 1]), 0)


def test_snapshot_restore_round_trips():
    org = two_slot_organizer()
    org.apply(0, 0, updates_sum(0, 0, 2, [("c", 5 * np.ones(P), 4, 1)]))
    copy = organizer()
    copy.restore(org.snapshot())
    for name in ("tokens", "active", "releases", "n_slots"):
        assert np.array_equal(getattr(copy, name), getattr(org, name)), name
    np.testing.assert_array_equal(copy.global_weights([0, 1]), org.global_weights([0, 1]))
    with pytest.raises(ConfigError, match="does not match"):
        DKOOrganizer(DIM + 1, P, DKOConfig(n_buckets=B)).restore(org.snapshot())


def test_new_slots_start_from_slot_init():
    org = DKOOrganizer(DIM, P, DKOConfig(n_buckets=B), slot_init=lambda s: np.full(P, s + 0.5))
    org.plan(0, tokens_sum(0, [("a", task_token(0), 3, 1), ("b", task_token(0), 5, 1)]))
    np.testing.assert_array_equal(org.global_weights([0])[0], 0.5)


def test_an_unmatched_bucket_with_too_few_samples_opens_no_slot():
    org = organizer(min_open_samples=10)
    plan = org.plan(0, tokens_sum(0, [("a", task_token(0), 6, 0), ("b", task_token(0), 6, 0),
                                      ("c", task_token(1), 2, 3), ("d", task_token(1), 3, 3)]))  # fmt: skip
    assert plan.opened == (0,) and plan.undersized_buckets == (3,) and org.n_slots == 1
    # The same task with enough samples behind it later opens its slot.
    plan = org.plan(1, tokens_sum(1, [("c", task_token(1), 7, 3), ("d", task_token(1), 5, 3)], known=1))
    assert plan.opened == (1,) and plan.undersized_buckets == ()


def test_a_group_below_the_share_floor_opens_no_duplicate_slot():
    """A few clients of a task whose tokens fall below tau from the rest of their task (here a
    task-2 bucket of 11 samples beside task 0's 200) found no slot of their own under
    min_open_share; without the floor they would."""
    entries = [("a", task_token(0), 100, 0), ("b", task_token(0), 100, 0),
               ("c", task_token(2), 5, 5), ("d", task_token(2), 6, 5)]  # fmt: skip
    plan = organizer(min_open_samples=10).plan(0, tokens_sum(0, entries))
    assert plan.opened == (0, 1)
    org = organizer(min_open_samples=10, min_open_share=0.1)
    plan = org.plan(0, tokens_sum(0, entries))
    assert plan.opened == (0,) and plan.undersized_buckets == (5,) and org.n_slots == 1
    # A group holding at least the share of the stage's samples still opens its slot.
    plan = org.plan(1, tokens_sum(1, [("a", task_token(0), 50, ("slot", 0)), ("b", task_token(0), 50, ("slot", 0)),
                                      ("c", task_token(2), 12, 5), ("d", task_token(2), 12, 5)], known=1))  # fmt: skip
    assert plan.opened == (1,) and plan.active == (0, 1)


def test_server_adam_matches_torch_adam_and_survives_a_snapshot():
    # dp.server_optimizer = "adam": the coordinator's step on the decoded mean gradients of a slot
    # is Adam's, checked against torch.optim.Adam on the same gradient sequence (an independent
    # implementation), and the moments travel in the organizer's snapshot (a restarted coordinator
    # takes the same next step).
    import torch

    from secure_fcit.fcit.dko import DistributedStep

    rng = np.random.default_rng(0)
    step = DistributedStep(FED, np.arange(P), count_scale=0.25, server_lr=0.01, adam=True)
    org = organizer()
    w = torch.zeros(P, dtype=torch.float64, requires_grad=True)
    ref = torch.optim.Adam([w], lr=step.server_lr, betas=step.adam_betas, eps=step.adam_eps)
    grads = [rng.normal(size=P) for _ in range(5)]
    ours = np.zeros(P)
    for i, g in enumerate(grads):
        if i == 3:
            restored = organizer()
            restored.restore(org.snapshot())
            org = restored
        ours -= step.server_lr * org._adam_direction(7, g, step)
        w.grad = torch.from_numpy(g.copy())
        ref.step()
    np.testing.assert_allclose(ours, w.detach().numpy(), rtol=1e-9, atol=1e-12)
    # the first step is lr * sign(g) (bias-corrected moments): noise-sized and signal-sized
    # coordinates move alike, which is why the demo keeps momentum (docs/privacy.md)
    fresh = organizer()
    np.testing.assert_allclose(fresh._adam_direction(0, np.array([1e-3, -5.0, 2.0, -1e-6]), step),
                               [1, -1, 1, -1], rtol=1e-2)
