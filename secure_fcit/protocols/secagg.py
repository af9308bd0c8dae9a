"""Pairwise masking (Bonawitz et al. 2017) with neighbour graphs (Bell et al. 2020), sans-IO.

One secure sum runs five request/response stages between the coordinator (``MaskingAggregator``)
and each cohort member (``MaskingClient``):

1. **advertise**: each client makes two fresh X25519 key pairs (share transport ``c``, masks ``s``)
   and a 256-bit self-mask seed ``b``, and sends the public keys signed with its long-term Ed25519
   key. The coordinator sends each client the signed keys of its neighbours (``KeyDirectory``);
   the client checks every signature against the federation's identity directory.
2. **share**: the client Shamir-shares ``b`` and its ``s`` private key among its neighbourhood
   (threshold t) and sends each neighbour its two shares, sealed with AES-GCM under the pairwise
   ``c`` key; the coordinator only forwards ciphertexts (``ShareDelivery``).
3. **masked input**: y_u = x_u + PRG(b_u) + sum over neighbours v that shared of ±PRG(s_uv) (mod 2^32),
   where x_u is the fixed-point encoding and s_uv the X25519 + HKDF key of u and v; ``+`` if u < v.
4. **consistency**: the coordinator announces the survivors (who sent a masked input); each client
   signs that list. The signatures go back to every signer (``UnmaskRequest``), who checks that at
   least t of them sign the same list it signed, so a coordinator that lies about who dropped is
   caught.
5. **unmask**: for each neighbour v whose shares it holds, a client reveals the share of ``b_v`` if v
   survived, or the share of ``s_v`` if v dropped: never both, and only once per sum. With t shares
   the coordinator rebuilds every survivor's self mask and every dropped client's pairwise masks and
   removes them; what is left is the sum of the survivors' vectors.

The neighbour graph is complete, or (``degree > 0``) a Harary graph over a permutation drawn from a
public seed that both sides derive from the round (Bell et al.), so the coordinator cannot choose it.
Every value the coordinator sees is a ciphertext, a public key, a signature or a masked vector
uniform in Z_{2^32}; the sum is the only plaintext, and it goes out as an ``Aggregate``.
Secrets (key pairs, seeds, Shamir coefficients) come from ``cryptography``/``os.urandom``/``secrets``;
masks from ChaCha20.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_fcit.crypto import shamir
from secure_fcit.crypto.fixed_point import FixedPoint
from secure_fcit.crypto.keys import KeyPair, SigningKey, agree, open_sealed, seal, verify
from secure_fcit.crypto.prg import ChaCha20PRG, expand_mask
from secure_fcit.errors import ConfigError, CryptoError, LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols.aggregation import (
    _AGGREGATOR_KEY,
    CONTRIBUTION_TYPES,
    Aggregate,
    AggregationRound,
    ClientAggregator,
    ListSignature,
    Outgoing,
    SecureAggregator,
    SignedList,
    UploadFactory,
)
from secure_fcit.protocols.messages import (
    COORDINATOR_ID,
    Contribution,
    Message,
    check_bytes,
    check_id,
    check_ids,
    message_type,
)

__all__ = [
    "ENCODING",
    "MaskingParams",
    "Identity",
    "make_identities",
    "neighbour_graph",
    "threshold",
    "fixed_point_for",
    "KeyAdvert",
    "KeyDirectory",
    "ShareUpload",
    "ShareDelivery",
    "UnmaskRequest",
    "UnmaskShares",
    "ShareComplaint",
    "ConvictionNotice",
    "PairSeed",
    "MaskingAggregator",
    "MaskingClient",
]

ENCODING = "masking-u32"
_STAGE = "secagg"
_KEY = 32
_SIG = 64
_DIR_ENTRY = 3 * _KEY + _SIG  # transport key | mask key | seed commitment | signature
_SHARES = 2 * shamir.SHARE_BYTES
_SEALED = 12 + _SHARES + 16
#: One share row, sender -> recipient: the pair's two key commitments | sealed shares | the sender's
#: Ed25519 signature of the row (so a recipient can prove what the sender sent; see ``_judge``).
_ROW = 2 * _KEY + _SEALED + _SIG
_U8 = ("|u1",)
_MAX_FRAC_BITS = 24


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class MaskingParams:
    """Settings of the masking protocol (``[privacy]`` in the config)."""

    #: t = floor(threshold * neighbourhood size) + 1 shares rebuild a secret; the neighbourhood
    #: counts the client itself. 2/3 tolerates just under a third of each neighbourhood dropping.
    threshold: float = 2 / 3
    #: 0: complete graph. k > 0 (even): each client masks with k neighbours (Harary graph).
    degree: int = 0
    #: Fixed-point clip range: every contributed value must satisfy |x| <= bound.
    bound: float = 32768.0
    #: The fewest fractional bits a round may use; a cohort too large for them is refused.
    min_frac_bits: int = 8
    #: c: the most clients assumed to collude with a malicious coordinator. Every neighbourhood N
    #: must have t > (|N| + min(c, |N| - 1)) / 2, or one view split between colluders and honest
    #: share holders rebuilds both secrets of a client (Bonawitz et al. 2017, Bell et al. 2020).
    colluders: int = 1

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold < 1:
            raise ConfigError(f"privacy.threshold must be in [0.5, 1), got {self.threshold}")
        if self.degree < 0 or self.degree % 2:
            raise ConfigError(f"privacy.degree must be 0 (complete graph) or an even k >= 2, got {self.degree}")
        if isinstance(self.colluders, bool) or not isinstance(self.colluders, int) or self.colluders < 0:
            raise ConfigError(f"privacy.colluders must be an integer >= 0, got {self.colluders!r}")
        if self.degree:
            why = self.unsafe(self.degree + 1)
            if why is not None:
                raise ConfigError(f"privacy.degree {self.degree} is too small: {why}")
        if not 0 <= self.min_frac_bits <= _MAX_FRAC_BITS:
            raise ConfigError(f"privacy.min_frac_bits must be in 0..{_MAX_FRAC_BITS}, got {self.min_frac_bits}")
        try:
            fixed_point_for(self.bound, 1, self.min_frac_bits)
        except ConfigError as exc:
            raise ConfigError(f"privacy.bound: {exc}") from None

    def check_cohort(self, n: int) -> FixedPoint:
        """The fixed point a cohort of ``n`` uses; ``ConfigError`` if it could wrap around."""
        return fixed_point_for(self.bound, n, self.min_frac_bits)

    def unsafe(self, size: int) -> str | None:
        """Why a neighbourhood of ``size`` members (the client included) is unsafe against
        ``colluders`` colluding clients, or None. A coordinator that tells some share holders a
        client survived and others that it dropped gets both of its secrets when the honest holders
        of either view plus the colluders reach t twice: 2t <= |N| + c. The colluders are assumed to
        sit wherever suits the coordinator (it picks cohorts), so no graph or cohort it grinds can
        beat the rule."""
        t = threshold(self.threshold, size)
        c = min(self.colluders, size - 1)
        if size >= 2 and 2 * t <= size + c:
            return (
                f"a neighbourhood of {size} with threshold {self.threshold:.4g} has t = {t}, and "
                f"{c} colluder(s) need t > (|N| + c)/2 = {(size + c) / 2:g}; raise privacy.threshold "
                f"or privacy.degree, or lower privacy.colluders"
            )
        return None


def fixed_point_for(bound: float, n: int, min_frac_bits: int) -> FixedPoint:
    """The finest ``FixedPoint`` (most fractional bits, at most 24) that sums ``n`` values in
    [-bound, bound] without wrapping around 2^32; refused below ``min_frac_bits``."""
    for bits in range(_MAX_FRAC_BITS, min_frac_bits - 1, -1):
        try:
            fp = FixedPoint(bound, bits)
        except ConfigError:
            continue
        if fp.max_contributors() >= n:
            return fp
    raise ConfigError(
        f"a sum of {n} values in [-{bound:g}, {bound:g}] cannot be encoded in 32 bits with at least "
        f"{min_frac_bits} fractional bits without wrapping; lower privacy.bound or the cohort size"
    )


def threshold(fraction: float, size: int) -> int:
    """Shares needed to rebuild a secret shared among ``size`` holders."""
    return min(size, int(np.floor(fraction * size)) + 1)


@dataclass
class Identity:
    """A client's long-term Ed25519 signing key; its public half goes in the federation directory."""

    client_id: str
    signing: SigningKey

    @property
    def public(self) -> bytes:
        return self.signing.public


def make_identities(client_ids: Sequence[str]) -> tuple[dict[str, Identity], dict[str, bytes]]:
    """Fresh identities for ``client_ids`` and the public directory {id: Ed25519 public key}
    (the simulation's stand-in for enrolment; a deployment reads keys from its enrolment)."""
    identities = {c: Identity(check_id("client id", c), SigningKey.generate()) for c in client_ids}
    return identities, {c: i.public for c, i in identities.items()}


def neighbour_graph(cohort: Sequence[str], binding: bytes, degree: int) -> dict[str, frozenset[str]]:
    """Each member's neighbours (not itself). Complete for ``degree == 0`` or a small cohort, else
    a Harary graph H(degree, n) over a permutation drawn from a public seed of the round.

    ``binding`` names the round without its attempt or broadcast (``_graph_binding``): a retry
    under a new attempt number gets the same graph for the same cohort, so re-running a phase
    draws nothing new. The coordinator still picks cohorts; ``MaskingParams.unsafe`` assumes the
    colluders sit wherever suits it, so no graph it could reach that way breaks the threshold."""
    ids = sorted(cohort)
    n = len(ids)
    if degree == 0 or degree >= n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    prg = ChaCha20PRG(hashlib.sha256(binding + b"|graph").digest())  # public seed: graph is public
    order = list(ids)
    draws = prg.uint64(n)
    for i in range(n - 1, 0, -1):  # Fisher-Yates
        j = int(draws[i] % np.uint64(i + 1))
        order[i], order[j] = order[j], order[i]
    out: dict[str, set[str]] = {u: set() for u in ids}
    for i, u in enumerate(order):
        for step in range(1, degree // 2 + 1):
            for v in (order[(i + step) % n], order[(i - step) % n]):
                out[u].add(v)
                out[v].add(u)
    return {u: frozenset(v) for u, v in out.items()}


def _graph_binding(round_id: AggregationRound) -> bytes:
    """The graph's public seed: the round without its attempt number or broadcast digest."""
    return json.dumps(
        ["secure-fcit/secagg-graph/v1", round_id.federation_id, round_id.stage, round_id.round, round_id.phase],
        separators=(",", ":"),
    ).encode()


def _advert_bytes(binding: bytes, sender: str, transport: bytes, mask: bytes, commitment: bytes) -> bytes:
    return b"|".join([binding, b"advert", sender.encode(), transport, mask, commitment])


def _commit(binding: bytes, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (the 256-bit seed is uniformly random: it hides it)."""
    return hashlib.sha256(binding + b"|seed|" + seed).digest()


@functools.cache
def _probe() -> KeyPair:
    """One throwaway key per process for ``_check_public`` (its exchanges are discarded)."""
    return KeyPair.generate()


def _check_public(key: bytes) -> bool:
    """Whether ``key`` is an X25519 public key of large order (a low-order key gives a zero secret)."""
    try:
        agree(_probe(), key, b"probe")
    except CryptoError:
        return False
    return True


def _combine_checked(shares: Mapping[int, int], t: int, check) -> bytes | None:
    """A secret from ``shares`` that passes ``check``: the first t shares, else leave-one-out and
    sliding windows of t, so one or a few wrong shares among spare ones do not spoil the sum."""
    xs = sorted(shares)
    if len(xs) < t:
        return None
    tried: set[tuple[int, ...]] = set()
    subsets = [xs[:t]]
    subsets += [[x for x in xs if x != skip][:t] for skip in xs]
    subsets += [(xs + xs)[i : i + t] for i in range(len(xs))]
    for subset in subsets:
        key = tuple(sorted(subset))
        if len(key) < t or key in tried:
            continue
        tried.add(key)
        try:
            secret = shamir.combine({x: shares[x] for x in key}, t)
        except CryptoError:
            continue
        if check(secret):
            return secret
    return None


def _survivors_bytes(binding: bytes, survivors: Sequence[str]) -> bytes:
    return b"|".join([binding, b"survivors", json.dumps(sorted(survivors)).encode()])


def _share_ad(binding: bytes, sender: str, recipient: str) -> bytes:
    return b"|".join([binding, b"share", sender.encode(), recipient.encode()])


# ----------------------------------------------------------------------------- share rows, complaints
# A sealed share row is accountable. Each direction of a pair has its own key for this sum only,
# k(u->v) = HKDF(X25519(c_u, C_v), info = binding|share|u|v), and every row u sends v carries
# H(k(lo->hi)) || H(k(hi->lo)) and u's signature. Both ends of a pair compute the same two
# commitments before either has seen the other's row; the coordinator compares them and cuts a pair
# that disagrees (neither end can prove the X25519 result, so neither is blamed; each loses one
# neighbour, as if the other had dropped). When a row from u fails to open at v, v reveals
# k(u->v) and signs the complaint. Anyone holding the directory then checks: u signed the row;
# H(k) is the commitment u signed, so k is the key u bound itself to; the row does not open under
# k: u is guilty. A key that is not the committed one, or a row that opens, convicts v instead.
#
# What k(u->v) exposes: it is used for exactly one ciphertext, u's row to v in this sum (the
# other direction and the mask keys are separate HKDF outputs, SHA-256 hides k until revealed).
# That row holds u's shares at v's x-coordinate, which v was meant to hold anyway. If u is guilty,
# they are the attacker's own shares; if v complained falsely about an honest u, they are what the
# malicious v already decrypted and could hand over. Either way the coordinator learns no more than
# the party it drops already knew: no share of the complainer's secrets, no other pair's shares.
def _direction(binding: bytes, sender: str, recipient: str) -> bytes:
    return b"|".join([binding, b"share", sender.encode(), recipient.encode()])


def _key_commitment(binding: bytes, sender: str, recipient: str, key: bytes) -> bytes:
    return hashlib.sha256(b"|".join([binding, b"share-key", sender.encode(), recipient.encode(), key])).digest()


def _pair_commitments(binding: bytes, me: str, peer: str, k_out: bytes, k_in: bytes) -> bytes:
    """H(k(lo->hi)) || H(k(hi->lo)): the same 64 bytes at both ends of an honest pair."""
    ours, theirs = _key_commitment(binding, me, peer, k_out), _key_commitment(binding, peer, me, k_in)
    return ours + theirs if me < peer else theirs + ours


def _commitment_of(commitments: bytes, sender: str, recipient: str) -> bytes:
    return commitments[:_KEY] if sender < recipient else commitments[_KEY:]


def _row_body(binding: bytes, sender: str, recipient: str, commitments: bytes, sealed: bytes) -> bytes:
    return b"|".join([binding, b"share-row", sender.encode(), recipient.encode()]) + commitments + sealed


def _split_row(row: bytes) -> tuple[bytes, bytes, bytes]:
    """(commitments, sealed shares, signature) of one share row."""
    return row[: 2 * _KEY], row[2 * _KEY : 2 * _KEY + _SEALED], row[2 * _KEY + _SEALED :]


def _open_row(binding: bytes, sender: str, recipient: str, key: bytes, sealed: bytes) -> tuple[int, int] | None:
    """The (seed share, key share) in ``sealed`` under ``key``, or None if it fails to open or parse."""
    try:
        plain = open_sealed(key, sealed, _share_ad(binding, sender, recipient))
        return (shamir.share_from_bytes(plain[: shamir.SHARE_BYTES]),
                shamir.share_from_bytes(plain[shamir.SHARE_BYTES :]))
    except CryptoError:
        return None


def _complaint_bytes(binding: bytes, complainer: str, accused: str, key: bytes, row: bytes) -> bytes:
    return b"|".join([binding, b"complaint", complainer.encode(), accused.encode()]) + key + row


def _judge(
    binding: bytes, directory: Mapping[str, bytes], complainer: str, accused: str, row: bytes, key: bytes,
    signature: bytes,
) -> tuple[str, str]:
    """(guilty party, why) for ``complainer``'s signed complaint that ``accused``'s ``row`` failed.

    Needs only public data and the revealed key, so the coordinator and every neighbour reach the
    same verdict. Raises ``CryptoError`` when the complaint or the row is not signed by its author
    (then there is nothing to judge: whoever produced it misbehaved)."""
    verify(directory[complainer], signature, _complaint_bytes(binding, complainer, accused, key, row))
    commitments, sealed, row_signature = _split_row(row)
    verify(directory[accused], row_signature, _row_body(binding, accused, complainer, commitments, sealed))
    if _key_commitment(binding, accused, complainer, key) != _commitment_of(commitments, accused, complainer):
        return complainer, f"{complainer!r} revealed a key {accused!r} never committed to (a false complaint)"
    if _open_row(binding, accused, complainer, key, sealed) is not None:
        return complainer, f"{complainer!r} complained about {accused!r}'s shares, which open (a false complaint)"
    return accused, f"{accused!r}'s sealed shares to {complainer!r} fail under the key it committed to"


def _key_matches(raw: bytes, public: bytes) -> bool:
    """Whether ``raw`` is the X25519 private key of ``public``."""
    try:
        return KeyPair(X25519PrivateKey.from_private_bytes(raw)).public == public
    except ValueError:
        return False


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


# ----------------------------------------------------------------------------- messages
def _check_rows(name: str, ids: tuple[str, ...], rows: np.ndarray, width: int) -> None:
    if rows.shape != (len(ids), width):
        raise ConfigError(f"{name} must have shape ({len(ids)}, {width}), got {rows.shape}")


@message_type
class KeyAdvert(Message):
    """Client -> coordinator: fresh public keys for this sum, signed with the long-term key."""

    transport_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def _validate(self) -> None:
        check_bytes("transport_key", self.transport_key, _KEY)
        check_bytes("mask_key", self.mask_key, _KEY)
        check_bytes("seed_commitment", self.seed_commitment, _KEY)
        check_bytes("signature", self.signature, _SIG)


@message_type
class KeyDirectory(Message):
    """Coordinator -> client: the signed adverts of its neighbourhood (row = transport|mask|commitment|sig)."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"keys": (_U8, 2)}
    members: tuple[str, ...]
    keys: np.ndarray

    def _validate(self) -> None:
        check_ids("members", self.members)
        _check_rows("keys", self.members, self.keys, _DIR_ENTRY)


@message_type
class ShareUpload(Message):
    """Client -> coordinator: one signed share row (sealed seed share and key share) per neighbour."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"ciphertexts": (_U8, 2)}
    recipients: tuple[str, ...]
    ciphertexts: np.ndarray

    def _validate(self) -> None:
        check_ids("recipients", self.recipients)
        _check_rows("ciphertexts", self.recipients, self.ciphertexts, _ROW)


@message_type
class ShareDelivery(Message):
    """Coordinator -> client: the signed share rows its neighbours made for it."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"ciphertexts": (_U8, 2)}
    senders: tuple[str, ...]
    ciphertexts: np.ndarray

    def _validate(self) -> None:
        check_ids("senders", self.senders)
        _check_rows("ciphertexts", self.senders, self.ciphertexts, _ROW)


@message_type
class UnmaskRequest(Message):
    """Coordinator -> signers: the survivor list and everyone's signatures of it."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"signatures": (_U8, 2)}
    survivors: tuple[str, ...]
    signers: tuple[str, ...]
    signatures: np.ndarray

    def _validate(self) -> None:
        check_ids("survivors", self.survivors)
        check_ids("signers", self.signers)
        _check_rows("signatures", self.signers, self.signatures, _SIG)


@message_type
class UnmaskShares(Message):
    """Client -> coordinator: seed shares of surviving neighbours, key shares of dropped ones."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {
        "seed_shares": (_U8, 2),
        "key_shares": (_U8, 2),
    }
    seed_owners: tuple[str, ...]
    seed_shares: np.ndarray
    key_owners: tuple[str, ...]
    key_shares: np.ndarray

    def _validate(self) -> None:
        check_ids("seed_owners", self.seed_owners)
        check_ids("key_owners", self.key_owners)
        if set(self.seed_owners) & set(self.key_owners):
            raise ConfigError("a client's seed share and key share are never revealed together")
        _check_rows("seed_shares", self.seed_owners, self.seed_shares, shamir.SHARE_BYTES)
        _check_rows("key_shares", self.key_owners, self.key_shares, shamir.SHARE_BYTES)


@message_type
class ShareComplaint(Message):
    """Client -> coordinator, before its masked input: the rows from ``accused`` failed to open.

    Per accused sender: the revealed key k(accused -> complainer) of this sum and the complainer's
    signature of (accused, key, row). See ``_judge`` for the verdict and what the key exposes."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"keys": (_U8, 2), "signatures": (_U8, 2)}
    accused: tuple[str, ...]
    keys: np.ndarray
    signatures: np.ndarray

    def _validate(self) -> None:
        check_ids("accused", self.accused)
        if not self.accused:
            raise ConfigError("a complaint names at least one sender")
        _check_rows("keys", self.accused, self.keys, _KEY)
        _check_rows("signatures", self.accused, self.signatures, _SIG)


@message_type
class ConvictionNotice(Message):
    """Coordinator -> a neighbour that masked with ``convicted``: the evidence of one complaint.

    The neighbour re-runs ``_judge`` on it and, only if it convicts ``convicted`` too, answers with
    a ``PairSeed``."""

    convicted: str
    complainer: str
    accused: str
    row: bytes
    key: bytes
    complaint_signature: bytes

    def _validate(self) -> None:
        for name in ("convicted", "complainer", "accused"):
            check_id(name, getattr(self, name))
        if self.convicted not in (self.complainer, self.accused) or self.complainer == self.accused:
            raise ConfigError("a conviction names the complainer or the accused of one complaint")
        check_bytes("row", self.row, _ROW)
        check_bytes("key", self.key, _KEY)
        check_bytes("complaint_signature", self.complaint_signature, _SIG)


@message_type
class PairSeed(Message):
    """Client -> coordinator: its pairwise mask seed with a convicted neighbour (empty if it did
    not mask with it), so the coordinator takes that mask out of the client's masked input."""

    convicted: str
    seed: bytes

    def _validate(self) -> None:
        check_id("convicted", self.convicted)
        if not isinstance(self.seed, bytes) or len(self.seed) not in (0, _KEY):
            raise ConfigError(f"seed must be empty or {_KEY} bytes")


def _rows(items: Sequence[bytes], width: int) -> np.ndarray:
    if not items:
        return np.zeros((0, width), dtype=np.uint8)
    return np.frombuffer(b"".join(items), dtype=np.uint8).reshape(len(items), width).copy()


# ----------------------------------------------------------------------------- common round facts
class _Round:
    """What both sides derive from (round, cohort, params): binding, graph, thresholds, encoding."""

    def __init__(self, round_id: AggregationRound, cohort: Sequence[str], params: MaskingParams) -> None:
        if not isinstance(round_id, AggregationRound):
            raise ConfigError("round_id must be an AggregationRound")
        ids = tuple(sorted(check_id("cohort member", c) for c in cohort))
        if len(set(ids)) != len(ids):
            raise LocalProtocolError("the cohort lists a member twice", stage=_STAGE)
        self.round_id = round_id
        self.cohort = ids
        self.binding = round_id.binding("secagg")
        self.graph = neighbour_graph(ids, _graph_binding(round_id), params.degree)
        self.x = {c: i + 1 for i, c in enumerate(ids)}  # Shamir x-coordinate of each holder
        self.fp = params.check_cohort(len(ids))
        self.params = params
        for size in sorted({len(self.graph[u]) + 1 for u in ids}):
            why = params.unsafe(size)
            if why is not None:
                raise LocalProtocolError(f"refusing this secure sum: {why}", stage=_STAGE)

    def closed(self, u: str) -> frozenset[str]:
        """u's neighbourhood including u: the holders of u's shares."""
        return self.graph[u] | {u}

    def t(self, u: str) -> int:
        return threshold(self.params.threshold, len(self.closed(u)))


# ----------------------------------------------------------------------------- client side
class _ClientSession:
    def __init__(self, rnd: _Round, me: str, encoded: np.ndarray, upload: UploadFactory) -> None:
        self.rnd, self.me, self.encoded, self.upload = rnd, me, encoded, upload
        self.transport = KeyPair.generate()
        self.mask = KeyPair.generate()
        self.seed = os.urandom(32)
        self.stage = "advertise"
        self.adverts: dict[str, tuple[bytes, bytes]] = {}  # id -> (transport pk, mask pk)
        self.held: dict[str, tuple[int, int]] = {}  # owner -> (seed share, key share) I hold
        self.signed: tuple[str, ...] | None = None
        self.revealed: dict[str, str] = {}  # owner -> "seed" | "key"
        self.masked_with: set[str] = set()  # neighbours whose rows opened: a pairwise mask each


class MaskingClient(ClientAggregator):
    """Worker side of ``MaskingAggregator`` (see the module docstring)."""

    kind: ClassVar[str] = "masking"
    message_types: ClassVar[tuple[type[Message], ...]] = (
        KeyDirectory, ShareDelivery, SignedList, UnmaskRequest, ConvictionNotice,
    )

    def __init__(self, identity: Identity, directory: Mapping[str, bytes], params: MaskingParams) -> None:
        if not isinstance(identity, Identity):
            raise ConfigError("identity must be an Identity")
        self.identity = identity
        self.client_id = identity.client_id
        if directory.get(self.client_id) != identity.public:
            raise ConfigError(f"the identity directory does not hold {self.client_id!r}'s own public key")
        self.directory = dict(directory)
        self.params = params
        self._session: _ClientSession | None = None

    # -- phase 1: advertise
    def begin(
        self, round_id: AggregationRound, cohort: Sequence[str], vector: np.ndarray, upload: UploadFactory
    ) -> list[Message]:
        rnd = _Round(round_id, cohort, self.params)
        if self.client_id not in rnd.cohort:
            raise LocalProtocolError(f"{self.client_id!r} is not in the cohort it was asked to sum for", stage=_STAGE)
        if len(rnd.cohort) < 2:
            raise LocalProtocolError("masking needs a cohort of at least 2", stage=_STAGE)
        strangers = [c for c in rnd.cohort if c not in self.directory]
        if strangers:
            raise RemoteProtocolError(f"cohort members {strangers[:5]} have no enrolled identity key", stage=_STAGE)
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or not np.isfinite(x).all():
            raise LocalProtocolError("the contribution must be a finite 1-D vector", stage=_STAGE)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > rnd.fp.bound:
            raise LocalProtocolError(
                f"a contributed value of magnitude {peak:g} exceeds privacy.bound {rnd.fp.bound:g}; "
                "raise the bound (the cohort limit shrinks) or lower the weights",
                stage=_STAGE,
            )
        session = _ClientSession(rnd, self.client_id, rnd.fp.encode(x), upload)
        self._session = session
        transport, mask = session.transport.public, session.mask.public
        commitment = _commit(rnd.binding, session.seed)
        signature = self.identity.signing.sign(
            _advert_bytes(rnd.binding, self.client_id, transport, mask, commitment)
        )
        return [self._message(
            KeyAdvert, transport_key=transport, mask_key=mask, seed_commitment=commitment, signature=signature
        )]

    def receive(self, message: Message) -> list[Message]:
        session = self._session
        if session is None:
            raise RemoteProtocolError(f"{type(message).__name__} outside a secure sum", stage=_STAGE)
        rnd = session.rnd
        if not rnd.round_id.binds(message):
            raise RemoteProtocolError(f"{type(message).__name__} is for another sum", stage=_STAGE)
        if isinstance(message, ConvictionNotice):  # between the masked input and the survivor list
            return self._on_conviction(session, message)
        expected = {
            "advertise": KeyDirectory,
            "share": ShareDelivery,
            "masked": SignedList,
            "consistency": UnmaskRequest,
        }.get(session.stage)
        if expected is None or type(message) is not expected:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} in secure-sum stage {session.stage!r}"
                + (" (this sum was already unmasked: a second unmask request is refused)"
                   if session.stage == "done" else ""),
                stage=_STAGE,
            )
        if isinstance(message, KeyDirectory):
            return self._on_directory(session, message)
        if isinstance(message, ShareDelivery):
            return self._on_shares(session, message)
        if isinstance(message, SignedList):
            return self._on_survivors(session, message)
        return self._on_unmask(session, message)  # UnmaskRequest

    # -- phase 2: share keys
    def _on_directory(self, session: _ClientSession, message: KeyDirectory) -> list[Message]:
        rnd, me = session.rnd, self.client_id
        closed = rnd.closed(me)
        members = message.members
        if not set(members) <= closed or me not in members:
            raise RemoteProtocolError("the key directory lists non-neighbours or omits this client", stage=_STAGE)
        if len(members) < rnd.t(me):
            raise RemoteProtocolError(
                f"only {len(members)} of this client's neighbourhood advertised keys; t = {rnd.t(me)}",
                stage=_STAGE,
            )
        seen: set[bytes] = set()
        for i, member in enumerate(members):
            row = message.keys[i].tobytes()
            transport, mask, commitment = row[:_KEY], row[_KEY : 2 * _KEY], row[2 * _KEY : 3 * _KEY]
            signature = row[3 * _KEY :]
            try:
                verify(self.directory[member], signature,
                       _advert_bytes(rnd.binding, member, transport, mask, commitment))
            except CryptoError:
                raise RemoteProtocolError(f"{member!r}'s advertised keys carry a bad signature", stage=_STAGE) from None
            if not (_check_public(transport) and _check_public(mask)):
                raise RemoteProtocolError(f"{member!r} advertised a low-order X25519 key", stage=_STAGE)
            if transport in seen or mask in seen:
                raise RemoteProtocolError("two advertised keys are equal", stage=_STAGE)
            seen |= {transport, mask}
            session.adverts[member] = (transport, mask)
        if session.adverts[me] != (session.transport.public, session.mask.public) or message.keys[
            members.index(me)
        ].tobytes()[2 * _KEY : 3 * _KEY] != _commit(rnd.binding, session.seed):
            raise RemoteProtocolError("the key directory altered this client's own keys", stage=_STAGE)
        holders = sorted(members)
        xs = [rnd.x[h] for h in holders]
        t = rnd.t(me)
        seed_shares = shamir.split(session.seed, len(holders), t, xs)
        key_shares = shamir.split(_raw_private(session.mask.private), len(holders), t, xs)
        recipients, sealed = [], []
        for holder in holders:
            x = rnd.x[holder]
            if holder == me:
                session.held[me] = (seed_shares[x], key_shares[x])
                continue
            plain = shamir.share_to_bytes(seed_shares[x]) + shamir.share_to_bytes(key_shares[x])
            recipients.append(holder)
            sealed.append(self._seal_share(session, holder, plain))
        session.stage = "share"
        return [self._message(ShareUpload, recipients=tuple(recipients), ciphertexts=_rows(sealed, _ROW))]

    # -- share rows (sealing, opening, complaints)
    def _pair_keys(self, session: _ClientSession, peer: str) -> tuple[bytes, bytes]:
        """(k(me -> peer), k(peer -> me)) for this sum."""
        rnd, me, theirs = session.rnd, self.client_id, session.adverts[peer][0]
        return (self._agree(session.transport, theirs, _direction(rnd.binding, me, peer), peer),
                self._agree(session.transport, theirs, _direction(rnd.binding, peer, me), peer))

    def _seal_share(self, session: _ClientSession, holder: str, plain: bytes) -> bytes:
        """The signed row carrying ``plain`` (this client's two shares at ``holder``) to ``holder``."""
        k_out, k_in = self._pair_keys(session, holder)
        commitments = _pair_commitments(session.rnd.binding, self.client_id, holder, k_out, k_in)
        return self._sign_row(session, holder, commitments, seal(k_out, plain, _share_ad(
            session.rnd.binding, self.client_id, holder)))

    def _sign_row(self, session: _ClientSession, holder: str, commitments: bytes, sealed: bytes) -> bytes:
        body = _row_body(session.rnd.binding, self.client_id, holder, commitments, sealed)
        return commitments + sealed + self.identity.signing.sign(body)

    def _open_share(self, session: _ClientSession, sender: str, row: bytes) -> tuple[tuple[int, int] | None, bytes]:
        """(the shares in ``sender``'s row or None if they fail, k(sender -> me)). A row the sender
        did not sign, or whose commitments are not this pair's, was altered by the coordinator (it
        checks both before forwarding): refused, since no complaint could pin it on the sender."""
        rnd, me = session.rnd, self.client_id
        commitments, sealed, signature = _split_row(row)
        try:
            verify(self.directory[sender], signature, _row_body(rnd.binding, sender, me, commitments, sealed))
        except CryptoError:
            raise RemoteProtocolError(
                f"the coordinator forwarded a share row that {sender!r} did not sign", stage=_STAGE
            ) from None
        k_out, k_in = self._pair_keys(session, sender)
        if commitments != _pair_commitments(rnd.binding, me, sender, k_out, k_in):
            raise RemoteProtocolError(
                f"the coordinator forwarded {sender!r}'s row although its key commitments differ from "
                "this client's (it must cut that pair)",
                stage=_STAGE,
            )
        return _open_row(rnd.binding, sender, me, k_in, sealed), k_in

    # -- phase 3: masked input
    def _on_shares(self, session: _ClientSession, message: ShareDelivery) -> list[Message]:
        rnd, me = session.rnd, self.client_id
        senders = message.senders
        if not set(senders) <= set(session.adverts) - {me}:
            raise RemoteProtocolError("shares delivered from clients outside the key directory", stage=_STAGE)
        if len(senders) + 1 < rnd.t(me):
            raise RemoteProtocolError(
                f"only {len(senders)} neighbours shared keys; t = {rnd.t(me)}", stage=_STAGE
            )
        # A row that fails to open does not make this client leave (that let one member evict every
        # honest neighbour): it stays, masks only with the senders whose rows opened, and files a
        # complaint the coordinator and every neighbour can check (``_judge``).
        accused, keys, signatures = [], [], []
        for i, sender in enumerate(senders):
            row = message.ciphertexts[i].tobytes()
            shares, k_in = self._open_share(session, sender, row)
            if shares is None:
                accused.append(sender)
                keys.append(k_in)
                signatures.append(self.identity.signing.sign(_complaint_bytes(rnd.binding, me, sender, k_in, row)))
                continue
            session.held[sender] = shares
            session.masked_with.add(sender)
        n = session.encoded.size
        y = session.encoded + expand_mask(session.seed, n)  # uint32 arithmetic wraps mod 2^32
        for sender in sorted(session.masked_with):
            pair = self._mask_seed(session, sender)
            if me < sender:
                y += expand_mask(pair, n)
            else:
                y -= expand_mask(pair, n)
        session.stage = "masked"
        session.encoded = np.zeros(0, dtype=np.uint32)  # the plain encoding is no longer needed
        out: list[Message] = []
        if accused:  # before the masked input: the coordinator must not close the stage without it
            out.append(self._message(
                ShareComplaint, accused=tuple(accused), keys=_rows(keys, _KEY), signatures=_rows(signatures, _SIG)
            ))
        return [*out, session.upload(y, ENCODING)]

    def _mask_seed(self, session: _ClientSession, peer: str) -> bytes:
        return self._agree(session.mask, session.adverts[peer][1], session.rnd.binding + b"|mask", peer)

    def _on_conviction(self, session: _ClientSession, message: ConvictionNotice) -> list[Message]:
        """Re-judge the complaint; if ``convicted`` is guilty, reveal this pair's mask seed and drop
        its shares. The seed is a secret only between this client and a proven-bad member, which
        knows it already; this client's input stays under its self mask and its other pairs' masks.
        Without a valid proof nothing is revealed: a coordinator cannot strip masks at will."""
        rnd, me = session.rnd, self.client_id
        convicted = message.convicted
        if session.stage != "masked":
            raise RemoteProtocolError(f"a conviction notice in secure-sum stage {session.stage!r}", stage=_STAGE)
        if convicted == me or convicted not in session.adverts:
            raise RemoteProtocolError("a conviction notice about a non-neighbour or this client", stage=_STAGE)
        if message.complainer not in self.directory or message.accused not in self.directory:
            raise RemoteProtocolError("a conviction notice names a client outside the directory", stage=_STAGE)
        try:
            guilty, _ = _judge(rnd.binding, self.directory, message.complainer, message.accused, message.row,
                               message.key, message.complaint_signature)
        except CryptoError:
            guilty = None
        if guilty != convicted:
            raise RemoteProtocolError(
                f"the evidence against {convicted!r} does not convict it; no mask seed revealed", stage=_STAGE
            )
        seed = b""
        if convicted in session.masked_with:
            seed = self._mask_seed(session, convicted)
            session.masked_with.discard(convicted)
        session.held.pop(convicted, None)  # a convicted member's shares are never revealed
        return [self._message(PairSeed, convicted=convicted, seed=seed)]

    # -- phase 4: consistency check
    def _on_survivors(self, session: _ClientSession, message: SignedList) -> list[Message]:
        rnd, me = session.rnd, self.client_id
        survivors = tuple(sorted(message.members))
        if me not in survivors or not set(survivors) <= set(rnd.cohort):
            raise RemoteProtocolError("the survivor list omits this client or names non-members", stage=_STAGE)
        if len(set(survivors) & rnd.closed(me)) < rnd.t(me):
            raise RemoteProtocolError(
                f"only {len(set(survivors) & rnd.closed(me))} survivors in this client's neighbourhood; "
                f"t = {rnd.t(me)}",
                stage=_STAGE,
            )
        session.signed = survivors
        session.stage = "consistency"
        signature = self.identity.signing.sign(_survivors_bytes(rnd.binding, survivors))
        return [self._message(ListSignature, signature=signature)]

    # -- phase 5: unmask
    def _on_unmask(self, session: _ClientSession, message: UnmaskRequest) -> list[Message]:
        rnd, me = session.rnd, self.client_id
        session.stage = "done"  # whatever happens next, this sum never answers a second request
        survivors = tuple(sorted(message.survivors))
        if survivors != session.signed:
            raise RemoteProtocolError(
                "the unmask request's survivor list differs from the one this client signed; "
                "refusing to reveal any share",
                stage=_STAGE,
            )
        body = _survivors_bytes(rnd.binding, survivors)
        valid = 0
        neighbourhood = rnd.closed(me)
        for i, signer in enumerate(message.signers):
            if signer not in survivors:
                raise RemoteProtocolError(f"signer {signer!r} is not a survivor", stage=_STAGE)
            try:
                verify(self.directory[signer], message.signatures[i].tobytes(), body)
            except CryptoError:
                raise RemoteProtocolError(f"{signer!r}'s survivor-list signature is bad", stage=_STAGE) from None
            # Only the holders of this client's shares count: signatures from elsewhere in the
            # cohort say nothing about what this client's neighbours were told (split view).
            valid += signer in neighbourhood
        need = rnd.t(me)
        if valid < need:
            raise RemoteProtocolError(
                f"only {valid} of this client's neighbours signed the survivor list; t = {need}", stage=_STAGE
            )
        self._released(rnd.round_id)  # persisted before any share leaves: the sum can complete after
        seed_owners, seed_shares, key_owners, key_shares = [], [], [], []
        alive = set(survivors)
        for owner in sorted(session.held):
            seed_share, key_share = session.held[owner]
            kind = "seed" if owner in alive else "key"
            self._reveal(session, owner, kind)
            if kind == "seed":
                seed_owners.append(owner)
                seed_shares.append(shamir.share_to_bytes(seed_share))
            else:
                key_owners.append(owner)
                key_shares.append(shamir.share_to_bytes(key_share))
        return [
            self._message(
                UnmaskShares,
                seed_owners=tuple(seed_owners),
                seed_shares=_rows(seed_shares, shamir.SHARE_BYTES),
                key_owners=tuple(key_owners),
                key_shares=_rows(key_shares, shamir.SHARE_BYTES),
            )
        ]

    @staticmethod
    def _agree(mine: KeyPair, theirs: bytes, info: bytes, peer: str) -> bytes:
        try:
            return agree(mine, theirs, info)
        except CryptoError:
            raise RemoteProtocolError(f"{peer!r}'s key gives no shared secret (low order)", stage=_STAGE) from None

    @staticmethod
    def _reveal(session: _ClientSession, owner: str, kind: str) -> None:
        """The rule masking rests on: never both shares of one owner."""
        previous = session.revealed.setdefault(owner, kind)
        if previous != kind:
            raise RemoteProtocolError(
                f"asked for {owner!r}'s {kind} share after its {previous} share: refused", stage=_STAGE
            )

    def _message(self, cls: type[Message], **fields: object) -> Message:
        rid = self._session.rnd.round_id if self._session else None
        assert rid is not None
        return cls(
            federation_id=rid.federation_id, stage=rid.stage, round=rid.round, attempt=rid.attempt,
            sender=self.client_id, **fields,
        )


# ----------------------------------------------------------------------------- coordinator side
_ACCEPTS: dict[str, tuple[type[Message], ...]] = {
    "advertise": (KeyAdvert,),
    "share": (ShareUpload,),
    "masked": tuple(CONTRIBUTION_TYPES.values()),
    "consistency": (ListSignature,),
    "unmask": (UnmaskShares,),
}


class MaskingAggregator(SecureAggregator):
    """Coordinator side of pairwise masking (see the module docstring).

    It learns public keys, ciphertexts, signatures and masked vectors, and the sum. ``stage_sets``
    records who was still in after each stage (U1..U5), for logs and tests.
    """

    kind: ClassVar[str] = "masking"
    encoding: ClassVar[str] = ENCODING
    message_types: ClassVar[tuple[type[Message], ...]] = (
        KeyAdvert, ShareUpload, ListSignature, UnmaskShares, ShareComplaint, PairSeed,
    )

    def __init__(
        self,
        directory: Mapping[str, bytes],
        params: MaskingParams,
        min_contributors: int = 1,
        *,
        coordinator_id: str = COORDINATOR_ID,
    ) -> None:
        super().__init__(min_contributors)
        self.coordinator_id = check_id("coordinator_id", coordinator_id)
        self.directory = dict(directory)
        self.params = params
        self._rnd: _Round | None = None
        self._length = 0
        self._stage = ""
        self._expected: set[str] = set()
        self._gone: set[str] = set()
        self._answers: dict[str, Message] = {}
        self._adverts: dict[str, tuple[bytes, bytes]] = {}
        self._commitments: dict[str, bytes] = {}
        self._sealed: dict[str, dict[str, bytes]] = {}  # recipient -> sender -> sealed shares
        self._delivered: dict[str, tuple[str, ...]] = {}
        self._masked: dict[str, np.ndarray] = {}
        self._survivors: tuple[str, ...] = ()
        self._signatures: dict[str, bytes] = {}
        self._failure: str | None = None
        self._result: Aggregate | None = None
        self.stage_sets: dict[str, tuple[str, ...]] = {}
        self._rows: dict[tuple[str, str], bytes] = {}  # (sender, recipient) -> forwarded share row
        self._complained: set[str] = set()
        self._awaiting: dict[str, set[str]] = {}  # member -> convicted neighbours it owes a PairSeed
        #: members dropped on a checked complaint (the guilty sender, or a false complainer) -> why
        self.convicted: dict[str, str] = {}
        #: pairs whose two key commitments differed: neither end could be blamed, so the pair is cut
        self.cut_pairs: list[tuple[str, str]] = []

    # -- interface
    def begin(self, round_id: AggregationRound, cohort: Sequence[str], vector_length: int) -> list[Outgoing]:
        if self._rnd is not None:
            raise LocalProtocolError("begin() called twice; use a fresh aggregator per phase", stage=_STAGE)
        self._rnd = _Round(round_id, cohort, self.params)
        self._length = int(vector_length)
        if self._length < 1:
            raise ConfigError("vector_length must be >= 1")
        strangers = [c for c in self._rnd.cohort if c not in self.directory]
        if strangers:
            raise ConfigError(f"cohort members {strangers[:5]} have no enrolled identity key")
        self._stage = "advertise"
        self._expected = set(self._rnd.cohort)
        if len(self._rnd.cohort) < max(2, self.min_contributors):
            self._failure = (
                f"masking needs at least {max(2, self.min_contributors)} cohort members, "
                f"got {len(self._rnd.cohort)}"
            )
        return []

    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        rnd = self._open()
        if sender not in self._expected or sender in self._gone:
            raise RemoteProtocolError(f"{sender!r} is not expected in secure-sum stage {self._stage!r}", stage=_STAGE)
        if isinstance(message, ShareComplaint | PairSeed):  # outside the one-answer-per-stage count
            return self._on_dispute(sender, message)
        if sender in self._answers:
            raise RemoteProtocolError(f"duplicate {type(message).__name__} from {sender!r}", stage=_STAGE)
        if message.sender != sender or not rnd.round_id.binds(message):
            raise RemoteProtocolError(f"{type(message).__name__} from {sender!r} is for another sum", stage=_STAGE)
        if not isinstance(message, _ACCEPTS[self._stage]):
            raise RemoteProtocolError(
                f"{type(message).__name__} from {sender!r} in secure-sum stage {self._stage!r}", stage=_STAGE
            )
        getattr(self, f"_check_{self._stage}")(sender, message)
        self._answers[sender] = message
        return self._advance()

    def dropped(self, sender: str) -> list[Outgoing]:
        rnd = self._open()
        if sender not in rnd.cohort:
            raise LocalProtocolError(f"{sender!r} is not in this sum's cohort", stage=_STAGE)
        self._gone.add(sender)
        return self._advance()

    @property
    def failure(self) -> str | None:
        return self._failure

    def result(self) -> Aggregate | None:
        return self._result

    def pending(self) -> frozenset[str]:
        if self._rnd is None or self._result is not None or self._failure is not None:
            return frozenset()
        owing = {u for u, convicted in self._awaiting.items() if convicted}
        return frozenset((self._expected - set(self._answers) | owing) - self._gone)

    # -- per-stage checks of one message
    def _check_advertise(self, sender: str, message: KeyAdvert) -> None:
        rnd = self._open()
        try:
            verify(
                self.directory[sender],
                message.signature,
                _advert_bytes(rnd.binding, sender, message.transport_key, message.mask_key, message.seed_commitment),
            )
        except CryptoError:
            raise RemoteProtocolError(f"{sender!r}'s key advert carries a bad signature", stage=_STAGE) from None
        if not (_check_public(message.transport_key) and _check_public(message.mask_key)):
            raise RemoteProtocolError(f"{sender!r} advertised a low-order X25519 key", stage=_STAGE)

    def _check_share(self, sender: str, message: ShareUpload) -> None:
        want = tuple(sorted(self._neighbours_in(sender, self.stage_sets["advertised"]) - {sender}))
        if tuple(message.recipients) != want:
            raise RemoteProtocolError(
                f"{sender!r} sent shares for {len(message.recipients)} recipients, not its "
                f"{len(want)} advertised neighbours",
                stage=_STAGE,
            )
        # Every row must carry its sender's signature: a row that does not is this sender's fault
        # here, where the coordinator sees it arrive on the sender's own channel. Forwarded unsigned,
        # it would leave the recipient with nothing it could prove, and with no choice but to leave.
        binding = self._open().binding
        for i, recipient in enumerate(message.recipients):
            commitments, sealed, signature = _split_row(message.ciphertexts[i].tobytes())
            try:
                verify(self.directory[sender], signature, _row_body(binding, sender, recipient, commitments, sealed))
            except CryptoError:
                raise RemoteProtocolError(
                    f"{sender!r}'s share row for {recipient!r} carries a bad signature", stage=_STAGE
                ) from None

    def _check_masked(self, sender: str, message: Contribution) -> None:
        rnd = self._open()
        expected = CONTRIBUTION_TYPES[rnd.round_id.phase]
        if type(message) is not expected or message.encoding != ENCODING or message.payload.dtype != np.uint32:
            raise RemoteProtocolError(
                f"{sender!r} sent a {type(message).__name__} in encoding {message.encoding!r}; this sum "
                f"takes {expected.__name__} in {ENCODING}",
                stage=_STAGE,
            )
        if message.payload.size != self._length:
            raise RemoteProtocolError(
                f"{sender!r} sent {message.payload.size} values; this sum takes {self._length}", stage=_STAGE
            )

    def _check_consistency(self, sender: str, message: ListSignature) -> None:
        rnd = self._open()
        try:
            verify(self.directory[sender], message.signature, _survivors_bytes(rnd.binding, self._survivors))
        except CryptoError:
            raise RemoteProtocolError(f"{sender!r}'s survivor-list signature is bad", stage=_STAGE) from None

    def _check_unmask(self, sender: str, message: UnmaskShares) -> None:
        held = set(self._delivered[sender]) | {sender}
        alive = set(self._survivors)
        want_seeds = tuple(sorted(held & alive))
        want_keys = tuple(sorted(held - alive))
        if tuple(message.seed_owners) != want_seeds or tuple(message.key_owners) != want_keys:
            raise RemoteProtocolError(f"{sender!r} revealed shares of the wrong owners", stage=_STAGE)
        for rows in (message.seed_shares, message.key_shares):
            for row in rows:
                try:
                    shamir.share_from_bytes(row.tobytes())
                except CryptoError as exc:
                    raise RemoteProtocolError(f"{sender!r}: {exc}", stage=_STAGE) from None

    # -- stage transitions
    def _open(self) -> _Round:
        if self._rnd is None:
            raise LocalProtocolError("aggregator used before begin()", stage=_STAGE)
        if self._result is not None or self._failure is not None:
            raise LocalProtocolError("this secure sum is over", stage=_STAGE)
        return self._rnd

    def _neighbours_in(self, u: str, members: Sequence[str]) -> set[str]:
        assert self._rnd is not None
        return set(self._rnd.closed(u)) & set(members)

    def _advance(self) -> list[Outgoing]:
        if self._failure is not None or self._result is not None:
            return []
        if not self._expected <= set(self._answers) | self._gone or self._disputes_open():
            return []  # still waiting
        answered = tuple(sorted(set(self._answers) - self._gone))
        handler = getattr(self, f"_after_{self._stage}")
        return handler(answered)

    def _next(self, stage: str, expected: Sequence[str]) -> None:
        self._stage = stage
        self._expected = set(expected)
        self._answers = {}

    def _fail(self, reason: str) -> list[Outgoing]:
        self._failure = f"secure sum aborted in stage {self._stage!r}: {reason}"
        return []

    def _viable(self, members: Sequence[str]) -> tuple[str, ...]:
        """Members whose neighbourhood (within ``members``) still reaches their threshold."""
        assert self._rnd is not None
        current = set(members)
        while True:
            keep = {u for u in current if len(self._neighbours_in(u, current)) >= self._rnd.t(u)}
            if keep == current:
                return tuple(sorted(current))
            current = keep

    def _enough(self, members: Sequence[str], what: str) -> str | None:
        need = max(2, self.min_contributors)
        if len(members) < need:
            return f"only {len(members)} clients {what}; at least {need} needed"
        return None

    def _after_advertise(self, answered: tuple[str, ...]) -> list[Outgoing]:
        rnd = self._rnd
        assert rnd is not None
        u1 = self._viable(answered)
        self.stage_sets["advertised"] = u1
        if (why := self._enough(u1, "advertised keys")) is not None:
            if answered and len(u1) < len(answered):
                why = (f"{len(answered)} of {len(rnd.cohort)} clients advertised keys, fewer than the "
                       f"{rnd.t(answered[0])} a secret needs to be rebuilt (privacy.threshold)")
            return self._fail(why)
        for u in u1:
            advert = self._answers[u]
            assert isinstance(advert, KeyAdvert)
            self._adverts[u] = (advert.transport_key, advert.mask_key)
            self._commitments[u] = advert.seed_commitment
        out: list[Outgoing] = []
        for u in u1:
            members = tuple(sorted(self._neighbours_in(u, u1)))
            rows = []
            for v in members:
                advert = self._answers[v]
                assert isinstance(advert, KeyAdvert)
                rows.append(advert.transport_key + advert.mask_key + advert.seed_commitment + advert.signature)
            out.append((u, self._message(KeyDirectory, members=members, keys=_rows(rows, _DIR_ENTRY))))
        self._next("share", u1)
        return out

    def _after_share(self, answered: tuple[str, ...]) -> list[Outgoing]:
        rnd = self._rnd
        assert rnd is not None
        rows: dict[tuple[str, str], bytes] = {}
        for sender in answered:
            upload = self._answers[sender]
            assert isinstance(upload, ShareUpload)
            for i, recipient in enumerate(upload.recipients):
                rows[(sender, recipient)] = upload.ciphertexts[i].tobytes()

        def linked(u: str, v: str) -> bool:  # both rows in, and both ends committed to the same keys
            return (u, v) in rows and (v, u) in rows and rows[(u, v)][: 2 * _KEY] == rows[(v, u)][: 2 * _KEY]

        self.cut_pairs = sorted({(u, v) for u, v in rows if u < v and (v, u) in rows and not linked(u, v)})
        members = set(self._viable(answered))
        while True:  # a cut pair is one neighbour fewer at each end: keep whoever still reaches t
            keep = {u for u in members if 1 + sum(linked(u, v) for v in members if v != u) >= rnd.t(u)}
            if keep == members:
                break
            members = keep
        u2 = tuple(sorted(members))
        self.stage_sets["shared"] = u2
        if (why := self._enough(u2, "shared keys")) is not None:
            return self._fail(why)
        out: list[Outgoing] = []
        for u in u2:
            senders = tuple(v for v in u2 if v != u and linked(v, u))
            self._delivered[u] = senders
            self._rows.update({(v, u): rows[(v, u)] for v in senders})
            out.append((u, self._message(
                ShareDelivery, senders=senders, ciphertexts=_rows([rows[(v, u)] for v in senders], _ROW)
            )))
        self._next("masked", u2)
        return out

    # -- complaints (see ``_judge``): drop the guilty member, keep everyone else in the sum
    def _disputes_open(self) -> bool:
        return any(convicted for u, convicted in self._awaiting.items() if u not in self._gone)

    def _on_dispute(self, sender: str, message: ShareComplaint | PairSeed) -> list[Outgoing]:
        rnd = self._open()
        if message.sender != sender or not rnd.round_id.binds(message):
            raise RemoteProtocolError(f"{type(message).__name__} from {sender!r} is for another sum", stage=_STAGE)
        if self._stage != "masked":
            raise RemoteProtocolError(
                f"{type(message).__name__} from {sender!r} in secure-sum stage {self._stage!r}", stage=_STAGE
            )
        if isinstance(message, PairSeed):
            self._on_pair_seed(sender, message)
            return self._advance()
        if sender in self._answers or sender in self._complained:
            raise RemoteProtocolError(
                f"{sender!r} complained after its masked input or twice; a complaint comes first, once",
                stage=_STAGE,
            )
        self._complained.add(sender)
        out: list[Outgoing] = []
        for accused in message.accused:
            if accused not in self._delivered.get(sender, ()):
                raise RemoteProtocolError(f"{sender!r} complained about {accused!r}, whose row it never got",
                                          stage=_STAGE)
        for i, accused in enumerate(message.accused):
            row = self._rows[(accused, sender)]
            key, signature = message.keys[i].tobytes(), message.signatures[i].tobytes()
            try:
                guilty, why = _judge(rnd.binding, self.directory, sender, accused, row, key, signature)
            except CryptoError:  # the stored row was checked at upload: the complaint's signature is bad
                raise RemoteProtocolError(f"{sender!r}'s complaint about {accused!r} is not signed by it",
                                          stage=_STAGE) from None
            # Either way the complainer holds none of the accused's shares and did not mask with it.
            self._delivered[sender] = tuple(v for v in self._delivered[sender] if v != accused)
            evidence = {"complainer": sender, "accused": accused, "row": row, "key": key,
                        "complaint_signature": signature}
            out += self._convict(guilty, why, evidence)
            if guilty == sender:
                break
        return out + self._advance()

    def _convict(self, member: str, why: str, evidence: dict[str, object]) -> list[Outgoing]:
        """Drop ``member`` from this sum and ask each neighbour that masked with it for that pair's
        seed, with the evidence, so the sum completes without it and no share of it is revealed."""
        if member in self.convicted or member in self._gone:
            return []
        self.convicted[member] = why
        self._gone.add(member)
        out: list[Outgoing] = []
        notice = self._message(ConvictionNotice, convicted=member, **evidence)
        for u in sorted(self._expected - self._gone):
            if member in self._delivered.get(u, ()):
                self._awaiting.setdefault(u, set()).add(member)
                out.append((u, notice))
        return out

    def _on_pair_seed(self, sender: str, message: PairSeed) -> None:
        convicted = message.convicted
        if convicted not in self._awaiting.get(sender, set()):
            raise RemoteProtocolError(f"{sender!r} sent a pair seed for {convicted!r} unasked", stage=_STAGE)
        masked_with = convicted in self._delivered.get(sender, ())
        upload = self._answers.get(sender)
        if not isinstance(upload, Contribution) or bool(message.seed) != masked_with:
            raise RemoteProtocolError(
                f"{sender!r}'s pair seed for {convicted!r} does not match what it was delivered", stage=_STAGE
            )
        self._awaiting[sender].discard(convicted)
        self._delivered[sender] = tuple(v for v in self._delivered[sender] if v != convicted)
        if not masked_with:
            return  # it complained about the convicted member too: it never masked with it
        mask = expand_mask(message.seed, self._length)
        # The client added +mask if it sorts before the convicted member, -mask after: undo that.
        payload = upload.payload - mask if sender < convicted else upload.payload + mask
        self._answers[sender] = replace(upload, payload=payload)

    def _after_masked(self, answered: tuple[str, ...]) -> list[Outgoing]:
        u3 = answered
        self.stage_sets["masked"] = u3
        if (why := self._enough(u3, "sent masked inputs")) is not None:
            return self._fail(why)
        for u in u3:
            upload = self._answers[u]
            assert isinstance(upload, Contribution)
            self._masked[u] = upload.payload
        self._survivors = u3
        out = [(u, self._message(SignedList, members=u3)) for u in u3]
        self._next("consistency", u3)
        return out

    def _after_consistency(self, answered: tuple[str, ...]) -> list[Outgoing]:
        rnd = self._rnd
        assert rnd is not None
        u4 = answered
        self.stage_sets["signed"] = u4
        short = [u for u in u4 if len(self._neighbours_in(u, u4)) < rnd.t(u)]
        if (why := self._enough(u4, "signed the survivor list")) is not None or short:
            return self._fail(why or f"too few signatures in the neighbourhoods of {short[:5]}")
        signatures = []
        for u in u4:
            answer = self._answers[u]
            assert isinstance(answer, ListSignature)
            signatures.append(answer.signature)
        request = self._message(
            UnmaskRequest, survivors=self._survivors, signers=u4, signatures=_rows(signatures, _SIG)
        )
        out = [(u, request) for u in u4]
        self._next("unmask", u4)
        return out

    def _after_unmask(self, answered: tuple[str, ...]) -> list[Outgoing]:
        rnd = self._rnd
        assert rnd is not None
        self.stage_sets["unmasked"] = answered
        seed_shares: dict[str, dict[int, int]] = {}
        key_shares: dict[str, dict[int, int]] = {}
        for holder in answered:
            answer = self._answers[holder]
            assert isinstance(answer, UnmaskShares)
            x = rnd.x[holder]
            for owner, row in zip(answer.seed_owners, answer.seed_shares, strict=True):
                seed_shares.setdefault(owner, {})[x] = shamir.share_from_bytes(row.tobytes())
            for owner, row in zip(answer.key_owners, answer.key_shares, strict=True):
                key_shares.setdefault(owner, {})[x] = shamir.share_from_bytes(row.tobytes())
        total = np.zeros(self._length, dtype=np.uint32)
        for u in self._survivors:
            total += self._masked[u]
        for u in self._survivors:  # remove every survivor's self mask
            shares = seed_shares.get(u, {})
            if len(shares) < rnd.t(u):
                return self._fail(f"{len(shares)} seed shares of {u!r} came back; t = {rnd.t(u)}")
            commitment = self._commitments[u]
            seed = _combine_checked(shares, rnd.t(u), lambda b, c=commitment: _commit(rnd.binding, b) == c)
            if seed is None:
                return self._fail(f"no {rnd.t(u)} of the {len(shares)} seed shares of {u!r} rebuild its committed seed")
            total -= expand_mask(seed, self._length)
        alive = set(self._survivors)
        dropped = sorted(set(self.stage_sets["shared"]) - alive)
        for v in dropped:  # remove the pairwise masks survivors added for clients that dropped
            partners = [u for u in self._survivors if v in self._delivered.get(u, ())]
            if not partners:
                continue
            shares = key_shares.get(v, {})
            if len(shares) < rnd.t(v):
                return self._fail(f"{len(shares)} key shares of dropped {v!r} came back; t = {rnd.t(v)}")
            raw = _combine_checked(shares, rnd.t(v), lambda k, pk=self._adverts[v][1]: _key_matches(k, pk))
            if raw is None:
                return self._fail(f"no {rnd.t(v)} of the {len(shares)} key shares of {v!r} rebuild its advertised key")
            pair = KeyPair(X25519PrivateKey.from_private_bytes(raw))
            for u in partners:
                try:
                    seed = agree(pair, self._adverts[u][1], rnd.binding + b"|mask")
                except CryptoError:  # ruled out at advertise; never trust that blindly
                    return self._fail(f"{u!r}'s mask key gives no shared secret")
                mask = expand_mask(seed, self._length)
                if u < v:
                    total -= mask
                else:
                    total += mask
        vector = rnd.fp.decode_sum(total, len(self._survivors))
        self._result = Aggregate(
            _AGGREGATOR_KEY, round_id=rnd.round_id, vector=vector, contributors=self._survivors, kind=self.kind
        )
        self._masked = {}
        self._stage = "done"
        return []

    def _message(self, cls: type[Message], **fields: object) -> Message:
        assert self._rnd is not None
        rid = self._rnd.round_id
        return cls(
            federation_id=rid.federation_id, stage=rid.stage, round=rid.round, attempt=rid.attempt,
            sender=self.coordinator_id, **fields,
        )
