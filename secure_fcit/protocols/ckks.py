"""CKKS secure aggregation on Microsoft SEAL (through TenSEAL's ``sealapi``): the coordinator adds
ciphertexts it cannot decrypt.

Parameters: N = 4096, coefficient modulus 60 + 49 bits (128-bit security by SEAL's table; the
49-bit prime is the special prime, so a ciphertext lives modulo one 60-bit prime), scale 2^40.
Packing is dense: each ciphertext holds 2048 complex slots, i.e. 4096 real values (real and
imaginary parts), and clients encrypt *symmetrically* with the secret key, so a fresh ciphertext
travels seeded (its random half is a PRNG seed): about 8 bytes per value, 2x fp32. One parameter
set for the whole federation; nothing is attached per tensor.

Key roles (``python -m secure_fcit keys init``): every client holds the *secret* context (the
parameters and the secret key, file mode 0600); the coordinator holds the *public* context, the
parameters alone: no secret key, no Galois or relinearization keys (checked at load). It can
check and add ciphertexts but neither encrypt nor decrypt.

One sum: each client encrypts its vector and signs (round binding, SHA-256 of the ciphertexts);
the coordinator verifies the signature and adds the ciphertexts. It sends the contributor list to
every contributor, and each signs it, one list per sum: two decrypted lists of one sum would
reveal their difference, so a client never confirms a second one. Then the coordinator asks a
*decryptor*, the first surviving contributor in id order, to decrypt. The decryptor receives every
signed contribution and every contributor's signature of the list; it decrypts only the list it
confirmed itself, of at least ``k_min`` contributors all of whom confirmed it, adds the
ciphertexts itself and checks the coordinator's sum is byte-identical, and decrypts at most once
per sum. It adds Gaussian noise (ChaCha20) of standard
deviation ``2^flood_bits`` times the estimated CKKS error before releasing the plaintext (noise
flooding against decryption-oracle key recovery, CPA^D), and logs every decryption it performs.
If the decryptor drops, the next contributor is asked.

Trust assumption: every client holds the secret key, and the decryptor receives every
contribution's ciphertext (to check the sum). A curious decryptor, or any client colluding with
the coordinator, can decrypt individual contributions; masking has no such single point.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from secure_fcit.crypto.keys import verify
from secure_fcit.crypto.prg import ChaCha20PRG
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
    check_id,
    check_ids,
    check_int,
    message_type,
)
from secure_fcit.protocols.secagg import Identity

__all__ = [
    "ENCODING",
    "VALUES_PER_CIPHERTEXT",
    "CKKSParams",
    "CKKSKeys",
    "CKKSContext",
    "create_keys",
    "write_keys",
    "load_public",
    "load_secret",
    "DecryptRequest",
    "DecryptedSum",
    "CKKSAggregator",
    "CKKSClient",
]

ENCODING = "ckks-seal"
POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (60, 49)
SCALE = 2.0**40
SLOTS = POLY_MODULUS_DEGREE // 2
VALUES_PER_CIPHERTEXT = 2 * SLOTS  # real and imaginary parts
SECRET_FILE = "ckks-secret.ctx"
PUBLIC_FILE = "ckks-public.ctx"
_MAGIC = b"secure-fcit/ckks/v1\n"
_SIG = 64
_STAGE = "ckks"
_ERROR_SIGMA = 3.2  # SEAL's error distribution
_MAX_CIPHERTEXT_BYTES = 1 << 20


def _seal():
    try:
        import tenseal.sealapi as seal
    except ImportError as exc:  # pragma: no cover - tenseal is a dependency
        raise ConfigError(f"CKKS aggregation needs tenseal: {exc}") from None
    return seal


@dataclass(frozen=True)
class CKKSParams:
    #: The decryptor refuses aggregates of fewer contributors than this.
    k_min: int = 2
    #: Flooding noise std = 2^flood_bits x the estimated CKKS decryption error of the sum. Each bit
    #: costs one bit of precision: 2 keeps the relative error near 1e-6 at scale 2^40.
    flood_bits: int = 2

    def __post_init__(self) -> None:
        if self.k_min < 2:
            raise ConfigError(f"privacy.ckks_k_min must be >= 2 (one contribution is no aggregate), got {self.k_min}")
        if not 0 <= self.flood_bits <= 20:
            raise ConfigError(f"privacy.ckks_flood_bits must be in 0..20, got {self.flood_bits}")

    def flood_std(self, n: int) -> float:
        """Noise std for a sum of ``n`` fresh ciphertexts: 2^flood_bits x (6 sigma sqrt(N n) / scale)."""
        error = 6 * _ERROR_SIGMA * math.sqrt(POLY_MODULUS_DEGREE * n) / SCALE
        return 2.0**self.flood_bits * error


# ----------------------------------------------------------------------------- contexts and keys
def _seed_randomness(parms) -> None:
    """SEAL draws keys, encryption masks and errors from the PRNG factory of its parameters: seed
    it with 512 bits from ``os.urandom`` instead of SEAL's own ``random_device`` default."""
    seal = _seal()
    parms.set_random_generator(seal.Blake2xbPRNGFactory([int.from_bytes(os.urandom(8), "little") for _ in range(8)]))


class _Scratch:
    """SEAL's Python binding saves and loads through file paths: a private temp folder (0700)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secure-fcit-ckks-")
        self.path = os.path.join(self.dir, "blob")

    def save(self, obj) -> bytes:
        obj.save(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        os.unlink(self.path)
        return data

    def load(self, obj, data: bytes, *context) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        try:
            obj.load(*context, self.path)
        finally:
            os.unlink(self.path)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)


def _pack(sections: dict[str, bytes]) -> bytes:
    header = json.dumps({k: len(v) for k, v in sections.items()}).encode()
    return _MAGIC + len(header).to_bytes(4, "little") + header + b"".join(sections.values())


def _unpack(data: bytes, what: str) -> dict[str, bytes]:
    if not data.startswith(_MAGIC):
        raise ConfigError(f"{what} is not a secure-fcit CKKS context file")
    offset = len(_MAGIC)
    try:
        size = int.from_bytes(data[offset : offset + 4], "little")
        header = json.loads(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
        sections = {}
        for name, length in header.items():
            sections[str(name)] = data[offset : offset + int(length)]
            offset += int(length)
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"{what} is damaged") from None
    if offset != len(data):
        raise ConfigError(f"{what} is damaged (length mismatch)")
    return sections


class CKKSContext:
    """Parameters (and, on clients, the secret key) of the federation's CKKS scheme."""

    def __init__(self, data: bytes, what: str, *, secret: bool) -> None:
        seal = _seal()
        sections = _unpack(data, what)
        extra = set(sections) - {"params", "secret_key"}
        if extra:
            raise ConfigError(f"{what} holds {sorted(extra)}; aggregation needs no Galois or relinearization keys")
        if not secret and "secret_key" in sections:
            raise ConfigError(f"{what} holds a secret key; give the coordinator the public context only")
        if secret and "secret_key" not in sections:
            raise ConfigError(f"{what} has no secret key")
        self._scratch = _Scratch()
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        try:
            self._scratch.load(parms, sections.get("params", b""))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(f"{what}: bad parameters ({exc})") from None
        _seed_randomness(parms)
        bits = sum(m.bit_count() for m in parms.coeff_modulus())
        if parms.poly_modulus_degree() != POLY_MODULUS_DEGREE or bits != sum(COEFF_MOD_BIT_SIZES):
            raise ConfigError(f"{what} has other CKKS parameters than N={POLY_MODULUS_DEGREE}, modulus {COEFF_MOD_BIT_SIZES}")
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ConfigError(f"{what}: parameters refused by SEAL ({self.context.parameters_error_message()})")
        self.evaluator = seal.Evaluator(self.context)
        self.encoder = seal.CKKSEncoder(self.context)
        self.secret = secret
        if secret:
            key = seal.SecretKey()
            try:
                self._scratch.load(key, sections["secret_key"], self.context)
            except (RuntimeError, ValueError, OSError) as exc:
                raise ConfigError(f"{what}: bad secret key ({exc})") from None
            self.encryptor = seal.Encryptor(self.context, key)
            self.decryptor = seal.Decryptor(self.context, key)

    # -- vectors <-> ciphertexts
    def encrypt(self, x: np.ndarray) -> bytes:
        """Seeded symmetric ciphertexts of ``x``, each length-prefixed (4 bytes, little endian)."""
        if not self.secret:
            raise LocalProtocolError("the public CKKS context cannot encrypt", stage=_STAGE)
        seal = _seal()
        out = []
        for start in range(0, x.size, VALUES_PER_CIPHERTEXT):
            chunk = np.zeros(VALUES_PER_CIPHERTEXT)
            part = x[start : start + VALUES_PER_CIPHERTEXT]
            chunk[: part.size] = part
            plain = seal.Plaintext()
            self.encoder.encode((chunk[0::2] + 1j * chunk[1::2]).tolist(), SCALE, plain)
            raw = self._scratch.save(self.encryptor.encrypt_symmetric(plain))
            out += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(out)

    def parse(self, data: bytes, length: int) -> list:
        """The ciphertexts in ``data`` for a vector of ``length``; ``ValueError`` if malformed."""
        seal = _seal()
        parts, offset = [], 0
        want = math.ceil(length / VALUES_PER_CIPHERTEXT)
        while offset < len(data):
            size = int.from_bytes(data[offset : offset + 4], "little")
            offset += 4
            if not 0 < size <= _MAX_CIPHERTEXT_BYTES or offset + size > len(data):
                raise ValueError("truncated or oversized ciphertext")
            ct = seal.Ciphertext()
            try:
                self._scratch.load(ct, data[offset : offset + size], self.context)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"not a ciphertext of these parameters ({exc})") from None
            if (
                ct.size() != 2 or ct.scale != SCALE or not ct.is_ntt_form()
                or ct.parms_id() != self.context.first_parms_id()
            ):
                raise ValueError("a ciphertext of another size, scale, form or level")
            parts.append(ct)
            offset += size
            if len(parts) > want:
                raise ValueError(f"more than {want} ciphertexts for {length} values")
        if len(parts) != want:
            raise ValueError(f"{len(parts)} ciphertexts for {length} values; {want} expected")
        return parts

    def add(self, a: list, b: list) -> list:
        """Slot-wise sum of two parsed vectors; ``ValueError`` if SEAL refuses (mismatched ciphertexts)."""
        seal = _seal()
        out = []
        for x, y in zip(a, b, strict=True):
            z = seal.Ciphertext()
            try:
                self.evaluator.add(x, y, z)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"ciphertexts cannot be added: {exc}") from None
            out.append(z)
        return out

    def serialize(self, parts: list) -> bytes:
        out = []
        for ct in parts:
            raw = self._scratch.save(ct)
            out += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(out)

    def decrypt(self, parts: list, length: int) -> np.ndarray:
        if not self.secret:
            raise LocalProtocolError("the public CKKS context cannot decrypt: it holds no secret key", stage=_STAGE)
        seal = _seal()
        values = []
        for ct in parts:
            plain = seal.Plaintext()
            self.decryptor.decrypt(ct, plain)
            z = np.asarray(self.encoder.decode_complex(plain))
            chunk = np.empty(VALUES_PER_CIPHERTEXT)
            chunk[0::2], chunk[1::2] = z.real, z.imag
            values.append(chunk)
        return np.concatenate(values)[:length]


@dataclass
class CKKSKeys:
    """Serialized contexts: ``secret`` for clients, ``public`` for the coordinator."""

    secret: bytes
    public: bytes


def create_keys() -> CKKSKeys:
    """A fresh key pair of contexts; the secret key comes from SEAL's Blake2xb PRNG seeded by ``os.urandom``."""
    seal = _seal()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES)))
    _seed_randomness(parms)
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    scratch = _Scratch()
    params = scratch.save(parms)
    secret_key = scratch.save(seal.KeyGenerator(context).secret_key())
    return CKKSKeys(secret=_pack({"params": params, "secret_key": secret_key}), public=_pack({"params": params}))


def write_keys(directory: str | Path) -> tuple[Path, Path]:
    """``keys init``: write the secret context (0600) and the public context into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    secret_path, public_path = out / SECRET_FILE, out / PUBLIC_FILE
    for path in (secret_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; refusing to overwrite a key (move it away first)")
    keys = create_keys()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.secret)
    public_path.write_bytes(keys.public)
    return secret_path, public_path


def load_public(data: bytes) -> CKKSContext:
    """The coordinator's context; refused if it holds a secret key, Galois or relinearization keys."""
    return CKKSContext(data, "the public CKKS context", secret=False)


def load_secret(data: bytes, path: str | Path | None = None) -> CKKSContext:
    """A client's context; refused without a secret key, or from a key file others can read."""
    if path is not None and os.stat(path).st_mode & 0o077:
        raise ConfigError(f"{path} is readable by group or others; chmod 600 it")
    return CKKSContext(data, "the secret CKKS context", secret=True)


# ----------------------------------------------------------------------------- messages
@message_type
class DecryptRequest(Message):
    """Coordinator -> decryptor: the signed contributions (row i: offsets[i]:offsets[i+1] of
    ``blobs``), every contributor's signature of the list, and the coordinator's ciphertext sum."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {
        "blobs": (("|u1",), 1),
        "offsets": (("<i8",), 1),
        "list_signatures": (("|u1",), 2),
        "total": (("|u1",), 1),
    }
    contributors: tuple[str, ...]
    blobs: np.ndarray
    offsets: np.ndarray
    list_signatures: np.ndarray
    total: np.ndarray

    def _validate(self) -> None:
        check_ids("contributors", self.contributors)
        o = self.offsets
        if o.size != len(self.contributors) + 1 or (o.size and (o[0] != 0 or o[-1] != self.blobs.size)):
            raise ConfigError("offsets must run from 0 to len(blobs), one more than contributors")
        if np.any(np.diff(o) <= _SIG):
            raise ConfigError("every contribution must be longer than its signature")
        if self.list_signatures.shape != (len(self.contributors), _SIG):
            raise ConfigError(f"list_signatures must have shape ({len(self.contributors)}, {_SIG})")


@message_type
class DecryptedSum(Message):
    """Decryptor -> coordinator: the flooded plaintext sum."""

    arrays: ClassVar[dict[str, tuple[tuple[str, ...], int]]] = {"vector": (("<f8",), 1)}
    vector: np.ndarray
    n_contributors: int

    def _validate(self) -> None:
        check_int("n_contributors", self.n_contributors, 1)


def _signed_bytes(binding: bytes, sender: str, ciphertext: bytes) -> bytes:
    return b"|".join([binding, b"contribution", sender.encode(), hashlib.sha256(ciphertext).digest()])


def _list_bytes(binding: bytes, contributors: Sequence[str]) -> bytes:
    return b"|".join([binding, b"contributors", json.dumps(sorted(contributors)).encode()])


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------- client side
class CKKSClient(ClientAggregator):
    """Worker side: encrypt and sign; confirm one contributor list per sum; when asked as the
    decryptor, check, decrypt (once per sum), flood and log."""

    kind: ClassVar[str] = "ckks"
    message_types: ClassVar[tuple[type[Message], ...]] = (SignedList, DecryptRequest)

    def __init__(
        self,
        identity: Identity,
        directory: Mapping[str, bytes],
        secret_context: bytes,
        params: CKKSParams,
        *,
        decryption_log: Callable[[dict], None] | None = None,
    ) -> None:
        self.identity = identity
        self.client_id = identity.client_id
        self.directory = dict(directory)
        self.context = load_secret(secret_context)
        self.params = params
        self.decryption_log = decryption_log
        self.decryptions: list[dict] = []
        self._round: AggregationRound | None = None
        self._cohort: frozenset[str] = frozenset()
        self._length = 0
        self._signed: tuple[str, ...] | None = None  # the one contributor list signed in this sum
        self._decrypted = False

    def begin(
        self, round_id: AggregationRound, cohort: Sequence[str], vector: np.ndarray, upload: UploadFactory
    ) -> list[Message]:
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1 or not np.isfinite(x).all():
            raise LocalProtocolError("the contribution must be a finite 1-D vector", stage=_STAGE)
        self._round, self._cohort, self._length = round_id, frozenset(cohort), x.size
        self._signed, self._decrypted = None, False
        ciphertext = self.context.encrypt(x)
        signature = self.identity.signing.sign(_signed_bytes(round_id.binding("ckks"), self.client_id, ciphertext))
        return [upload(_u8(signature + ciphertext), ENCODING)]

    def receive(self, message: Message) -> list[Message]:
        if not isinstance(message, SignedList | DecryptRequest) or self._round is None:
            raise RemoteProtocolError(f"unexpected {type(message).__name__}", stage=_STAGE)
        if not self._round.binds(message):
            raise RemoteProtocolError(f"{type(message).__name__} for another sum", stage=_STAGE)
        if isinstance(message, SignedList):
            return self._confirm(message)
        return self._decrypt(message)

    def _check_list(self, contributors: tuple[str, ...]) -> tuple[str, ...]:
        listed = tuple(sorted(contributors))
        if not set(listed) <= self._cohort or self.client_id not in listed:
            raise RemoteProtocolError("the contributor list names non-members or omits this client", stage=_STAGE)
        if len(listed) < self.params.k_min:
            raise RemoteProtocolError(
                f"refusing a sum of {len(listed)} contributions; k_min = {self.params.k_min}", stage=_STAGE
            )
        return listed

    def _confirm(self, message: SignedList) -> list[Message]:
        listed = self._check_list(message.members)
        if self._signed is not None and self._signed != listed:
            raise RemoteProtocolError(
                "asked to confirm a second, different contributor list for the same sum: refused "
                "(two decrypted lists would reveal their difference)",
                stage=_STAGE,
            )
        self._signed = listed
        signature = self.identity.signing.sign(_list_bytes(self._round.binding("ckks"), listed))
        return [ListSignature(
            federation_id=message.federation_id, stage=message.stage, round=message.round,
            attempt=message.attempt, sender=self.client_id, signature=signature,
        )]

    def _decrypt(self, message: DecryptRequest) -> list[Message]:
        assert self._round is not None
        binding = self._round.binding("ckks")
        contributors = self._check_list(message.contributors)
        if tuple(message.contributors) != contributors:
            raise RemoteProtocolError("the contributor list must be sorted", stage=_STAGE)
        if self._decrypted:
            raise RemoteProtocolError("this sum was already decrypted once: refused", stage=_STAGE)
        if self._signed != contributors:
            raise RemoteProtocolError(
                "refusing to decrypt a contributor list other than the one this client confirmed", stage=_STAGE
            )
        body = _list_bytes(binding, contributors)
        for i, member in enumerate(contributors):
            try:
                verify(self.directory[member], message.list_signatures[i].tobytes(), body)
            except (CryptoError, KeyError):
                raise RemoteProtocolError(f"{member!r} did not confirm this contributor list", stage=_STAGE) from None
        total = None
        blobs = message.blobs.tobytes()
        for i, sender in enumerate(contributors):
            row = blobs[int(message.offsets[i]) : int(message.offsets[i + 1])]
            signature, ciphertext = row[:_SIG], row[_SIG:]
            try:
                verify(self.directory[sender], signature, _signed_bytes(binding, sender, ciphertext))
            except (CryptoError, KeyError):
                raise RemoteProtocolError(f"{sender!r}'s contribution is not signed by {sender!r}", stage=_STAGE) from None
            try:
                part = self.context.parse(ciphertext, self._length)
                total = part if total is None else self.context.add(total, part)
            except ValueError as exc:
                raise RemoteProtocolError(f"{sender!r}'s contribution is not a CKKS ciphertext: {exc}", stage=_STAGE) from None
        assert total is not None
        if self.context.serialize(total) != message.total.tobytes():
            raise RemoteProtocolError(
                "the coordinator's ciphertext sum differs from the sum of the signed contributions; "
                "refusing to decrypt",
                stage=_STAGE,
            )
        self._decrypted = True
        values = self.context.decrypt(total, self._length)
        std = self.params.flood_std(len(contributors))
        values = values + std * ChaCha20PRG().normal(values.size)
        record = {
            "time": time.time(),
            "federation_id": self._round.federation_id,
            "stage": self._round.stage,
            "round": self._round.round,
            "attempt": self._round.attempt,
            "phase": self._round.phase,
            "contributors": list(contributors),
            "sha256": hashlib.sha256(message.total.tobytes()).hexdigest(),
            "flood_std": std,
        }
        self.decryptions.append(record)
        if self.decryption_log is not None:
            self.decryption_log(record)
        return [
            DecryptedSum(
                federation_id=message.federation_id, stage=message.stage, round=message.round,
                attempt=message.attempt, sender=self.client_id, vector=values,
                n_contributors=len(contributors),
            )
        ]


# ----------------------------------------------------------------------------- coordinator side
class CKKSAggregator(SecureAggregator):
    """Coordinator side: verifies and adds ciphertexts, has every contributor confirm the list,
    then asks one contributor to decrypt."""

    kind: ClassVar[str] = "ckks"
    encoding: ClassVar[str] = ENCODING
    message_types: ClassVar[tuple[type[Message], ...]] = (ListSignature, DecryptedSum)

    def __init__(
        self,
        directory: Mapping[str, bytes],
        public_context: bytes,
        params: CKKSParams,
        min_contributors: int = 1,
        *,
        coordinator_id: str = COORDINATOR_ID,
    ) -> None:
        super().__init__(min_contributors)
        self.directory = dict(directory)
        self.context = load_public(public_context)
        self.params = params
        self.coordinator_id = check_id("coordinator_id", coordinator_id)
        self._round: AggregationRound | None = None
        self._cohort: tuple[str, ...] = ()
        self._length = 0
        self._stage = "collect"
        self._gone: set[str] = set()
        self._blobs: dict[str, bytes] = {}
        self._parsed: dict[str, list] = {}
        self._total = None
        self._contributors: tuple[str, ...] = ()
        self._list_signatures: dict[str, bytes] = {}
        self._decryptor: str | None = None
        self._failure: str | None = None
        self._result: Aggregate | None = None

    def begin(self, round_id: AggregationRound, cohort: Sequence[str], vector_length: int) -> list[Outgoing]:
        if self._round is not None:
            raise LocalProtocolError("begin() called twice; use a fresh aggregator per phase", stage=_STAGE)
        self._round = round_id
        self._cohort = tuple(sorted(check_id("cohort member", c) for c in cohort))
        self._length = check_int("vector_length", vector_length, 1)
        need = max(self.params.k_min, self.min_contributors)
        if len(self._cohort) < need:
            self._failure = f"CKKS needs at least {need} contributors (k_min), the cohort has {len(self._cohort)}"
        return []

    def receive(self, sender: str, message: Message) -> list[Outgoing]:
        rnd = self._open()
        if sender not in self._cohort or sender in self._gone:
            raise RemoteProtocolError(f"{sender!r} is not in this sum", stage=_STAGE)
        if message.sender != sender or not rnd.binds(message):
            raise RemoteProtocolError(f"{type(message).__name__} from {sender!r} is for another sum", stage=_STAGE)
        if isinstance(message, ListSignature):
            return self._on_confirmed(sender, message)
        if isinstance(message, DecryptedSum):
            return self._on_decrypted(sender, message)
        if type(message) is not CONTRIBUTION_TYPES[rnd.phase] or self._stage != "collect":
            raise RemoteProtocolError(f"unexpected {type(message).__name__} from {sender!r}", stage=_STAGE)
        if sender in self._blobs:
            raise RemoteProtocolError(f"duplicate contribution from {sender!r}", stage=_STAGE)
        assert isinstance(message, Contribution)
        if message.encoding != ENCODING or message.payload.dtype != np.uint8 or message.payload.size <= _SIG:
            raise RemoteProtocolError(f"{sender!r} sent encoding {message.encoding!r}; this sum is {ENCODING}", stage=_STAGE)
        row = message.payload.tobytes()
        signature, ciphertext = row[:_SIG], row[_SIG:]
        try:
            verify(self.directory[sender], signature, _signed_bytes(rnd.binding("ckks"), sender, ciphertext))
        except (CryptoError, KeyError):
            raise RemoteProtocolError(f"{sender!r}'s contribution carries a bad signature", stage=_STAGE) from None
        try:
            parsed = self.context.parse(ciphertext, self._length)  # the sum is taken once all are in
        except ValueError as exc:
            raise RemoteProtocolError(f"{sender!r}'s contribution is not a CKKS ciphertext: {exc}", stage=_STAGE) from None
        self._blobs[sender] = row
        self._parsed[sender] = parsed
        return self._advance()

    def dropped(self, sender: str) -> list[Outgoing]:
        self._open()
        if sender not in self._cohort:
            raise LocalProtocolError(f"{sender!r} is not in this sum's cohort", stage=_STAGE)
        self._gone.add(sender)
        if self._stage == "collect":
            self._blobs.pop(sender, None)  # an offender's ciphertext leaves the sum
            self._parsed.pop(sender, None)
            return self._advance()
        if self._stage == "confirm" and sender in self._contributors:
            self._failure = (
                f"{sender!r} left before confirming the contributor list; a list cannot change once "
                "sent, so the sum is retried"
            )
            return []
        if self._stage == "decrypt" and sender == self._decryptor:
            return self._ask_next()
        return []

    @property
    def failure(self) -> str | None:
        return self._failure

    def result(self) -> Aggregate | None:
        return self._result

    def pending(self) -> frozenset[str]:
        if self._round is None or self._result is not None or self._failure is not None:
            return frozenset()
        if self._stage == "collect":
            waiting = set(self._cohort) - set(self._blobs)
        elif self._stage == "confirm":
            waiting = set(self._contributors) - set(self._list_signatures)
        else:
            waiting = {self._decryptor} if self._decryptor else set()
        return frozenset(waiting - self._gone)

    # -- internals
    def _open(self) -> AggregationRound:
        if self._round is None:
            raise LocalProtocolError("aggregator used before begin()", stage=_STAGE)
        if self._result is not None or self._failure is not None:
            raise LocalProtocolError("this secure sum is over", stage=_STAGE)
        return self._round

    def _message(self, cls: type[Message], **fields: object) -> Message:
        rnd = self._open()
        return cls(
            federation_id=rnd.federation_id, stage=rnd.stage, round=rnd.round, attempt=rnd.attempt,
            sender=self.coordinator_id, **fields,
        )

    def _advance(self) -> list[Outgoing]:
        if set(self._blobs) | self._gone < set(self._cohort):
            return []
        self._contributors = tuple(sorted(self._blobs))
        need = max(self.params.k_min, self.min_contributors)
        if len(self._contributors) < need:
            self._failure = f"only {len(self._contributors)} contributions arrived; at least {need} (k_min) needed"
            return []
        total = None
        for sender in self._contributors:  # a fixed order: the decryptor's own sum is byte-identical
            part = self._parsed[sender]
            try:
                total = part if total is None else self.context.add(total, part)
            except ValueError as exc:  # parse() already refuses mismatched ciphertexts; belt and braces
                self._failure = f"the contributions cannot be added: {exc}"
                return []
        self._total, self._parsed = total, {}
        self._stage = "confirm"
        request = self._message(SignedList, members=self._contributors)
        return [(c, request) for c in self._contributors]

    def _on_confirmed(self, sender: str, message: ListSignature) -> list[Outgoing]:
        rnd = self._open()
        if self._stage != "confirm" or sender not in self._contributors or sender in self._list_signatures:
            raise RemoteProtocolError(f"unexpected contributor-list signature from {sender!r}", stage=_STAGE)
        try:
            verify(self.directory[sender], message.signature, _list_bytes(rnd.binding("ckks"), self._contributors))
        except CryptoError:
            raise RemoteProtocolError(f"{sender!r}'s contributor-list signature is bad", stage=_STAGE) from None
        self._list_signatures[sender] = message.signature
        if len(self._list_signatures) < len(self._contributors):
            return []
        self._stage = "decrypt"
        return self._ask_next()

    def _ask_next(self) -> list[Outgoing]:
        candidates = [c for c in self._contributors if c not in self._gone]
        if not candidates:
            self._failure = "every contributor dropped before decrypting the aggregate"
            return []
        self._decryptor = candidates[0]
        rows = [self._blobs[c] for c in self._contributors]
        offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        signatures = np.frombuffer(
            b"".join(self._list_signatures[c] for c in self._contributors), dtype=np.uint8
        ).reshape(len(self._contributors), _SIG).copy()
        request = self._message(
            DecryptRequest, contributors=self._contributors, blobs=_u8(b"".join(rows)), offsets=offsets,
            list_signatures=signatures, total=_u8(self.context.serialize(self._total)),
        )
        return [(self._decryptor, request)]

    def _on_decrypted(self, sender: str, message: DecryptedSum) -> list[Outgoing]:
        rnd = self._open()
        if self._stage != "decrypt" or sender != self._decryptor:
            raise RemoteProtocolError(f"{sender!r} was not asked to decrypt", stage=_STAGE)
        if message.vector.size != self._length or message.n_contributors != len(self._contributors):
            raise RemoteProtocolError(f"{sender!r} returned a sum of the wrong length or count", stage=_STAGE)
        self._result = Aggregate(
            _AGGREGATOR_KEY, round_id=rnd, vector=message.vector, contributors=self._contributors, kind=self.kind
        )
        self._blobs, self._total = {}, None
        return []
