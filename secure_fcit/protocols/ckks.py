"""CKKS secure aggregation on Microsoft SEAL (through TenSEAL's ``sealapi``): the coordinator adds
ciphertexts it cannot decrypt.

Parameters: N = 4096, coefficient modulus 60 + 49 bits (128-bit security by SEAL's table; the
49-bit prime is the special prime, so a ciphertext lives modulo one 60-bit prime), scale 2^40.
Packing is dense: each ciphertext holds 2048 complex slots, i.e. 4096 real values (real and
imaginary parts), and clients encrypt *symmetrically* with the secret key, so a fresh ciphertext
travels seeded (its random half is a PRNG seed): about 8 bytes per value, 2x fp32. One parameter
set for the whole federation; nothing is attached per tensor.

Key roles (``python -m secure_fcit keys init``): every client holds the *secret* context (the
parameters, a 256-bit ratchet seed and the stage it belongs to; file mode 0600); the coordinator
holds the *public* context, the parameters alone: no secret key, no Galois or relinearization keys
(checked at load). It can check and add ciphertexts but neither encrypt nor decrypt.

Per-stage keys (a one-way ratchet): stage s encrypts under the SEAL secret key drawn from
Blake2xb seeded by HKDF(seed_s, "ckks-secret-key"), and seed_{s+1} = HKDF(seed_s, "ckks-ratchet").
A client entering stage s ratchets forward and forgets seed_{s-1}; with ``key_path`` it rewrites
its key file and destroys the old one (overwrite, fsync, unlink), so a key file taken at stage s
opens stages >= s only. ``keys rotate`` starts a fresh chain from ``os.urandom`` (post-compromise:
a departed client's file opens nothing after it). Encryption is symmetric, so the public context
never changes: only the parameters, no key.

Plaintext range: a slot decrypts modulo the 60-bit prime q at scale 2^40, so a sum is exact only
while its polynomial coefficients stay under q/2; with real and imaginary parts packed, that holds
for any vector when cohort x ``bound`` <= ``SUM_RANGE`` (2^19 / sqrt 2). Larger cohorts are refused
(config load and ``begin``), and a client refuses to encrypt a value beyond ``bound``.

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

Trust assumption: every client holds the stage's secret key, and the decryptor receives every
contribution's ciphertext (to check the sum). A curious decryptor, or any client colluding with
the coordinator, can decrypt individual contributions of the stages its key covers; masking has
no such single point.
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_fcit.crypto.keys import verify
from secure_fcit.crypto.prg import ChaCha20PRG
from secure_fcit.dp.journal import fsync_dir
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
    "SUM_RANGE",
    "create_keys",
    "write_keys",
    "rotate_keys",
    "destroy_file",
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
#: The largest |sum| of any value a CKKS sum carries without wrapping: a decrypted coefficient is
#: exact while below q/2 (q the 60-bit prime), i.e. 2^(60-1) / SCALE = 2^19 in value units, and a
#: slot packs two values (real, imaginary), whose coefficients reach sqrt(2) x the larger one.
SUM_RANGE = float(math.floor(2.0 ** (COEFF_MOD_BIT_SIZES[0] - 1) / SCALE / math.sqrt(2)))
_SEED_BYTES = 32
_KDF_SALT = b"secure_fcit/v1/ckks"


def _seal():
    try:
        import tenseal.sealapi as seal
    except ImportError as exc:  # pragma: no cover - tenseal is a dependency
        raise ConfigError(f"CKKS aggregation needs tenseal: {exc}") from None
    return seal


@dataclass(frozen=True)
class CKKSParams:
    #: The decryptor refuses aggregates of fewer contributors than this: its own floor, never one
    #: the coordinator sends. 5 by default: with 2, a coordinator-chosen cohort {target, colluder}
    #: gives the target's exact input.
    k_min: int = 5
    #: Flooding noise std = 2^flood_bits x the estimated CKKS decryption error of the sum. Each bit
    #: costs one bit of precision: 2 keeps the relative error near 1e-6 at scale 2^40.
    flood_bits: int = 2
    #: Every contributed value must satisfy |x| <= bound; a cohort whose sum could pass
    #: ``SUM_RANGE`` (cohort x bound) is refused, since CKKS would wrap it around silently.
    bound: float = 4096.0

    def __post_init__(self) -> None:
        if self.k_min < 2:
            raise ConfigError(f"privacy.ckks_k_min must be >= 2 (one contribution is no aggregate), got {self.k_min}")
        if not 0 <= self.flood_bits <= 20:
            raise ConfigError(f"privacy.ckks_flood_bits must be in 0..20, got {self.flood_bits}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ConfigError(f"privacy.ckks_bound must be finite and > 0, got {self.bound}")
        self.check_cohort(self.k_min)  # else no sum this client would decrypt could ever be exact

    def max_cohort(self) -> int:
        """The largest cohort whose sum of values in [-bound, bound] stays inside ``SUM_RANGE``."""
        return math.floor(SUM_RANGE / self.bound)

    def check_cohort(self, n: int) -> None:
        """``ConfigError`` naming the numbers if a sum of ``n`` contributions could wrap around."""
        if n * self.bound > SUM_RANGE:
            raise ConfigError(
                f"a CKKS sum of {n} contributions in [-{self.bound:g}, {self.bound:g}] can reach "
                f"{n * self.bound:g}, beyond the CKKS plaintext range +-{SUM_RANGE:g} (q/2 of the 60-bit "
                f"modulus at scale 2^40, over sqrt 2 for complex packing): it would wrap around silently. "
                f"Lower privacy.ckks_bound to at most {SUM_RANGE / n:g} or the cohort to at most "
                f"{self.max_cohort()}"
            )

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


def _kdf(seed: bytes, purpose: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_KDF_SALT,
                info=f"secure_fcit/v1/{purpose}".encode()).derive(seed)


def _ratchet(seed: bytes, steps: int) -> bytes:
    """seed_{s+steps} from seed_s: one-way, so a later seed says nothing about an earlier one."""
    for _ in range(steps):
        seed = _kdf(seed, "ckks-ratchet", _SEED_BYTES)
    return seed


def _stage_secret_key(params: bytes, seed: bytes):
    """The SEAL secret key of one stage: SEAL's own key generator, its Blake2xb PRNG seeded by
    512 bits derived from the stage's seed (a separate parameter object, so the PRNG that draws
    encryption randomness stays seeded by ``os.urandom``)."""
    seal = _seal()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    _Scratch().load(parms, params)
    words = _kdf(seed, "ckks-secret-key", 64)
    parms.set_random_generator(seal.Blake2xbPRNGFactory(
        [int.from_bytes(words[i : i + 8], "little") for i in range(0, 64, 8)]))
    return seal.KeyGenerator(seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)).secret_key()


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
    """Parameters (and, on clients, the stage's ratchet seed and secret key) of the federation's
    CKKS scheme."""

    def __init__(self, data: bytes, what: str, *, secret: bool) -> None:
        seal = _seal()
        sections = _unpack(data, what)
        if "secret_key" in sections:
            raise ConfigError(f"{what} holds a fixed secret key from before per-stage rotation; run "
                              "`python -m secure_fcit keys rotate` and hand the new secret context to the clients")
        extra = set(sections) - {"params", "ratchet", "stage"}
        if extra:
            raise ConfigError(f"{what} holds {sorted(extra)}; aggregation needs no Galois or relinearization keys")
        if not secret and {"ratchet", "stage"} & set(sections):
            raise ConfigError(f"{what} holds secret key material (the ratchet seed); give the coordinator "
                              "the public context only")
        if secret and not {"ratchet", "stage"} <= set(sections):
            raise ConfigError(f"{what} has no secret key (no ratchet seed)")
        self._params = sections.get("params", b"")
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
        if self.context.first_context_data().parms().coeff_modulus()[0].value() // 2 <= SUM_RANGE * math.sqrt(2) * SCALE:
            raise ConfigError(f"{what}: the first prime of the modulus is too small for SUM_RANGE {SUM_RANGE:g}")
        self.secret = secret
        self.stage = -1  # the stage whose key is installed; -1: none (the public context)
        self._seed: bytes | None = None
        if secret:
            stage = sections["stage"].decode("ascii", "replace")
            if len(sections["ratchet"]) != _SEED_BYTES or not stage.isdigit() or len(stage) > 9:
                raise ConfigError(f"{what}: bad ratchet seed or stage")
            self._seed = sections["ratchet"]
            self._install(int(stage))

    # -- per-stage keys
    def _install(self, stage: int) -> None:
        seal = _seal()
        assert self._seed is not None  # internal invariant: only secret contexts install keys
        key = _stage_secret_key(self._params, self._seed)
        self.encryptor = seal.Encryptor(self.context, key)
        self.decryptor = seal.Decryptor(self.context, key)
        self.stage = stage

    def advance(self, stage: int) -> bool:
        """Use stage ``stage``'s key, ratcheting forward and forgetting the earlier seeds; True if
        the key changed. Refused for a stage before this one: its key is gone."""
        if not self.secret:
            raise LocalProtocolError("the public CKKS context holds no key to advance", stage=_STAGE)
        if stage < self.stage:
            raise LocalProtocolError(
                f"the CKKS key of stage {stage} was destroyed when this client entered stage {self.stage}; "
                "a past stage cannot be encrypted or decrypted again", stage=_STAGE)
        if stage == self.stage:
            return False
        assert self._seed is not None
        self._seed = _ratchet(self._seed, stage - self.stage)
        self._install(stage)
        return True

    def secret_bytes(self) -> bytes:
        """The secret context file of the current stage (what ``key_path`` holds)."""
        if not self.secret or self._seed is None:
            raise LocalProtocolError("the public CKKS context has no secret to write", stage=_STAGE)
        return _pack({"params": self._params, "ratchet": self._seed, "stage": str(self.stage).encode()})

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


def create_keys(stage: int = 0) -> CKKSKeys:
    """A fresh key pair of contexts: a new ratchet chain (256-bit seed from ``os.urandom``) whose
    first key is stage ``stage``'s; the public context is the parameters alone."""
    seal = _seal()
    check_int("stage", stage, 0)
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES)))
    params = _Scratch().save(parms)
    secret = {"params": params, "ratchet": os.urandom(_SEED_BYTES), "stage": str(stage).encode()}
    return CKKSKeys(secret=_pack(secret), public=_pack({"params": params}))


def destroy_file(path: str | Path) -> None:
    """Overwrite ``path`` with zeros in place, fsync, then unlink it. On copy-on-write file systems
    and SSDs the old blocks may survive below the file system; keep key folders on encrypted disks."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b", buffering=0) as f:
        f.write(b"\0" * size)
        os.fsync(f.fileno())
    path.unlink()
    fsync_dir(path.parent)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_secret(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path``: written beside it first, then the old file destroyed, then renamed."""
    staged = path.with_name(path.name + ".next")
    if staged.exists():  # left by an interrupted replacement: secret material too
        destroy_file(staged)
    _write_private(staged, data)
    if path.exists():
        destroy_file(path)
    os.replace(staged, path)
    fsync_dir(path.parent)


def write_keys(directory: str | Path) -> tuple[Path, Path]:
    """``keys init``: write the secret context (0600) and the public context into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    secret_path, public_path = out / SECRET_FILE, out / PUBLIC_FILE
    for path in (secret_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; refusing to overwrite a key (move it away first)")
    keys = create_keys()
    _write_private(secret_path, keys.secret)
    public_path.write_bytes(keys.public)
    return secret_path, public_path


def rotate_keys(directory: str | Path, stage: int = 0) -> tuple[Path, Path]:
    """``keys rotate``: a new chain in ``directory`` (first key: stage ``stage``). The new secret and
    public contexts are written beside the old ones, the old secret context is destroyed
    (overwritten, then unlinked), and the new ones take the standard names. Hand the new secret
    context to the members that remain; a departed member's old file opens nothing encrypted after."""
    out = Path(directory)
    secret_path, public_path = out / SECRET_FILE, out / PUBLIC_FILE
    if not secret_path.is_file():
        raise ConfigError(f"{secret_path} does not exist: nothing to rotate (run keys init)")
    keys = create_keys(stage)
    staged_public = out / (PUBLIC_FILE + ".next")
    staged_public.write_bytes(keys.public)
    _replace_secret(secret_path, keys.secret)
    os.replace(staged_public, public_path)
    fsync_dir(out)
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
        key_path: str | Path | None = None,
    ) -> None:
        self.identity = identity
        self.client_id = identity.client_id
        self.directory = dict(directory)
        self.context = load_secret(secret_context, key_path)
        #: The secret context file: rewritten at each new stage, the previous stage's destroyed.
        self.key_path = Path(key_path) if key_path is not None else None
        self.params = params  # this client's own floor (k_min) and bound, never the coordinator's
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
        members = frozenset(cohort)
        self.params.check_cohort(len(members))  # ConfigError: this cohort's sum could wrap around
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > self.params.bound:  # refused, not clipped: a clipped update is silently wrong
            raise LocalProtocolError(
                f"a contributed value of magnitude {peak:g} exceeds privacy.ckks_bound {self.params.bound:g}; "
                "raise the bound (the largest cohort shrinks) or lower the weights",
                stage=_STAGE,
            )
        self._enter_stage(round_id.stage)
        self._round, self._cohort, self._length = round_id, members, x.size
        self._signed, self._decrypted = None, False
        ciphertext = self.context.encrypt(x)
        signature = self.identity.signing.sign(_signed_bytes(round_id.binding("ckks"), self.client_id, ciphertext))
        return [upload(_u8(signature + ciphertext), ENCODING)]

    def _enter_stage(self, stage: int) -> None:
        """Ratchet to ``stage``'s key; with ``key_path``, rewrite the key file and destroy the
        previous stage's. Clients sharing one file (the simulation) rewrite it once."""
        if not self.context.advance(stage) or self.key_path is None:
            return
        try:
            on_disk = load_secret(self.key_path.read_bytes(), self.key_path).stage
        except FileNotFoundError:
            on_disk = -1
        if on_disk < stage:
            _replace_secret(self.key_path, self.context.secret_bytes())

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
        if self._signed is None:  # persisted before the signature lets a decryption go ahead
            self._released(self._round)
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
        members = tuple(sorted(check_id("cohort member", c) for c in cohort))
        self.params.check_cohort(len(members))  # ConfigError: the sum could wrap around, as in masking
        self._round = round_id
        self._cohort = members
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
        if self._round is not None and (self._failure is not None or self._result is not None):
            return []  # several members refusing one list: the sum is already over, nothing changes
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
