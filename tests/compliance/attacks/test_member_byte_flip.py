"""Attack 5 (issue 19): a malicious member seals bad shares so that honest recipients leave.

Adversary: one malicious cohort member, not colluding with the coordinator. It follows the protocol
except for its share rows, which it corrupts before (or after) signing them. Claim: the member is
dropped, never an honest client in its place, and the sum over everyone else completes exactly.
A false complaint drops the complainer, not the accused. Each test mounts the attack with the
project's own ``MaskingClient``/``MaskingAggregator`` plus one adversarial subclass, driven through
the wire codec by ``run_secure_sum``.
"""

from __future__ import annotations

import numpy as np

from secure_fcit.protocols import AggregationRound
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import (
    _KEY,
    MaskingAggregator,
    MaskingClient,
    MaskingParams,
    PairSeed,
    ShareComplaint,
    _split_row,
    make_identities,
)

RID = AggregationRound("fed", 0, 2, 0, "update")
ATTACKER = "c000"


class ByteFlipper(MaskingClient):
    """Malicious member: flips one byte of the AES-GCM ciphertext in the share rows it sends to
    ``targets`` (everyone if None). ``resign``: it signs the flipped row (the strong form: the
    coordinator cannot tell it from an honest row); otherwise the row goes out as flipped bytes."""

    targets: frozenset[str] | None = None
    resign = True

    def _seal_share(self, session, holder, plain):
        row = super()._seal_share(session, holder, plain)
        if self.targets is not None and holder not in self.targets:
            return row
        commitments, sealed, signature = _split_row(row)
        sealed = sealed[:20] + bytes([sealed[20] ^ 0x01]) + sealed[21:]  # inside the ciphertext
        if self.resign:
            return self._sign_row(session, holder, commitments, sealed)
        return commitments + sealed + signature


def federation(n: int, adversary: type[MaskingClient] | None = None, **attrs):
    ids = [f"c{i:03d}" for i in range(n)]
    identities, directory = make_identities(ids)
    params = MaskingParams()
    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
    if adversary is not None:
        bad = adversary(identities[ATTACKER], directory, params)
        for name, value in attrs.items():
            setattr(bad, name, value)
        clients[ATTACKER] = bad
    rng = np.random.default_rng(7)
    vectors = {c: rng.uniform(-3, 3, 32) for c in ids}
    return ids, directory, params, clients, vectors


def run(n: int, adversary: type[MaskingClient] | None = None, **attrs):
    ids, directory, params, clients, vectors = federation(n, adversary, **attrs)
    aggregator = MaskingAggregator(directory, params)
    transcript: list[bytes] = []
    result = run_secure_sum(aggregator, clients, vectors, RID, transcript=transcript)
    return ids, params, vectors, aggregator, result, transcript


def assert_exact_over(result, vectors, params, members):
    assert result.failure is None and result.aggregate is not None, result.failure
    assert set(result.aggregate.contributors) == set(members)
    truth = sum(vectors[c] for c in members)
    bound = params.check_cohort(len(vectors)).error_bound(len(members))
    assert np.max(np.abs(result.aggregate.vector - truth)) <= bound


def complaints_in(transcript) -> int:
    from secure_fcit.protocols import decode

    return sum(isinstance(decode(b, 1 << 30), ShareComplaint) for b in transcript)


def test_member_flipping_every_sealed_share_is_dropped_and_every_honest_client_stays():
    """Malicious member, every row flipped and re-signed (4 honest clients, as in the report):
    each honest recipient complains, the complaint convicts the sender, and the sum over the four
    honest clients is exact. Positive control: four complaints were filed, so the attack ran."""
    ids, params, vectors, aggregator, result, transcript = run(5, ByteFlipper)
    honest = [c for c in ids if c != ATTACKER]
    assert_exact_over(result, vectors, params, honest)
    assert set(aggregator.convicted) == {ATTACKER}
    assert "fail under the key it committed to" in aggregator.convicted[ATTACKER]
    assert complaints_in(transcript) == 4
    assert not set(result.client_errors) & set(honest)


def test_member_flipping_bytes_without_resigning_is_dropped_by_the_coordinator():
    """Malicious member, the literal black-box attack (flipped bytes on the wire, no new signature):
    the coordinator refuses the unsigned rows at the share stage, so no honest client ever sees them."""
    ids, params, vectors, aggregator, result, transcript = run(5, ByteFlipper, resign=False)
    honest = [c for c in ids if c != ATTACKER]
    assert_exact_over(result, vectors, params, honest)
    assert "bad signature" in result.client_errors[ATTACKER]
    assert set(result.client_errors) == {ATTACKER}
    assert complaints_in(transcript) == 0


def test_member_aiming_at_one_client_is_dropped_and_the_target_stays():
    """Malicious member aiming at one client: the target stays in the sum, the attacker is dropped.
    The three neighbours that did mask with the attacker hand over only that pair's seed (a secret
    the attacker knows), so the sum completes although too few holders of the attacker's key share
    remain to rebuild it (t = 4 of 5)."""
    target = "c003"
    ids, params, vectors, aggregator, result, transcript = run(5, ByteFlipper, targets=frozenset({target}))
    honest = [c for c in ids if c != ATTACKER]
    assert_exact_over(result, vectors, params, honest)
    assert target in result.aggregate.contributors
    assert set(aggregator.convicted) == {ATTACKER}
    assert complaints_in(transcript) == 1
    from secure_fcit.protocols import decode

    seeds = [m for m in (decode(b, 1 << 30) for b in transcript) if isinstance(m, PairSeed)]
    assert sorted(m.sender for m in seeds) == [c for c in honest if c != target]
    assert all(len(m.seed) == _KEY for m in seeds)


class FalseComplainer(MaskingClient):
    """Malicious member that claims an honest sender's row failed, revealing the real key."""

    accuse = "c002"

    def _open_share(self, session, sender, row):
        shares, key = super()._open_share(session, sender, row)
        return (None if sender == self.accuse else shares), key


def test_a_false_complaint_drops_the_complainer_not_the_accused():
    """Malicious member filing a false complaint: the accused's row opens under the revealed key,
    so the complainer is dropped and the accused (and everyone else) stays in an exact sum."""
    ids, params, vectors, aggregator, result, transcript = run(5, FalseComplainer)
    honest = [c for c in ids if c != ATTACKER]
    assert_exact_over(result, vectors, params, honest)
    assert "c002" in result.aggregate.contributors
    assert set(aggregator.convicted) == {ATTACKER}
    assert "false complaint" in aggregator.convicted[ATTACKER]
    assert complaints_in(transcript) == 1


class CommitmentLiar(MaskingClient):
    """Malicious member that commits to wrong keys in its rows to ``targets`` (signed, so only the
    other end's commitment can show it): no complaint could blame either end of such a pair."""

    targets = frozenset({"c001"})

    def _sign_row(self, session, holder, commitments, sealed):
        if holder in self.targets:
            commitments = bytes(len(commitments))
        return super()._sign_row(session, holder, commitments, sealed)


def test_a_member_lying_about_its_key_commitments_loses_the_pair_not_the_honest_end():
    """Malicious member committing to wrong keys towards one client: the coordinator cuts that pair
    (neither end is provably at fault), and both stay in an exact sum; the honest end is not evicted."""
    ids, params, vectors, aggregator, result, transcript = run(7, CommitmentLiar)
    assert_exact_over(result, vectors, params, ids)
    assert aggregator.cut_pairs == [(ATTACKER, "c001")]
    assert not result.client_errors


def test_a_coordinator_cannot_strip_a_pair_mask_without_a_checkable_complaint():
    """Malicious coordinator (the complaint path's other side): it sends a neighbour a conviction
    notice with made-up evidence, hoping for that pair's mask seed. The client re-judges the
    evidence, refuses, and reveals nothing."""
    from secure_fcit.protocols.secagg import ConvictionNotice

    class Forger(MaskingAggregator):
        def _after_masked(self, answered):
            row = self._rows[("c002", "c001")]
            forged = self._message(ConvictionNotice, convicted="c002", complainer="c003", accused="c002",
                                   row=row, key=bytes(32), complaint_signature=bytes(64))
            return [("c001", forged), *super()._after_masked(answered)]

    ids, directory, params, clients, vectors = federation(5)
    transcript: list[bytes] = []
    result = run_secure_sum(Forger(directory, params), clients, vectors, RID, transcript=transcript)
    assert "no mask seed revealed" in result.client_errors["c001"]
    from secure_fcit.protocols import decode

    assert not any(isinstance(decode(b, 1 << 30), PairSeed) for b in transcript)


def test_member_flipping_shares_in_a_federation_leaves_every_round_complete():
    """Malicious member inside the honest ``Coordinator``/``Worker`` round machines (in memory; the
    TLS deployment runs the same machines): every token phase and round completes over the four
    honest clients, the attacker contributes to none of them."""
    from secure_fcit.fcit.dko import DKOConfig
    from secure_fcit.protocols import run_federation
    from tests.unit.protocols._support import build_federation, client

    fed = build_federation([{client(i): 0 for i in range(5)}], cohort_size=5, rounds=2,
                           config=DKOConfig(n_buckets=64), aggregation="masking")
    attacker = fed.workers[0]
    attacker.aggregator.__class__ = ByteFlipper  # the same worker, its shares now flipped
    history = run_federation(fed.coordinator, fed.workers)
    assert len(history.of("applied")) == 2 and not history.of("aborted")
    honest = {client(i) for i in range(1, 5)}
    for event in history.of("applied"):
        assert set(event["contributors"]) == honest
        assert set(event["convicted"]) == {client(0)}  # the events name who was dropped, and why
