"""The spend journal: append-only, hash-chained JSONL, one per client, fsynced before the spend.

Each line is one JSON object with sorted keys. ``prev`` is the previous line's ``hash`` (the
first line chains to a genesis hash bound to the client id) and ``hash`` is SHA-256 over
``prev`` and the line's canonical JSON without ``hash``. Reading verifies every line: an edited,
removed, reordered or foreign line is a `JournalError` naming the line. Removing lines from the
*end* leaves a valid chain; the ledger catches that by checking the journal against the entry
count and head hash it saved (atomically) after the last append.

Signing (v2 entries). Each entry also carries ``key`` (the raw Ed25519 public key, hex) and
``sig``: the signature over ``SIG_CONTEXT || hash``. The chain alone uses no key, so anyone who can
write the journal could re-chain an edit; the signature needs the client's private key, which
never lives in the ledger folder (the deployment's certificate key, or the simulating process's
memory). Verification takes the allowed public keys from *outside* the folder (the roster next to
the ledger folders, or the federation's certificates): `read_journal(..., keys=...)`. v1 entries
(written before signing) carry no signature; they verify only without ``keys``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..crypto.keys import public_bytes
from ..errors import JournalError

__all__ = ["SpendJournal", "genesis", "entry_hash", "read_journal", "check_anchor", "atomic_write_json",
           "public_hex", "is_signed", "fsync_dir"]

VERSION = 2
#: v1: unsigned (written before signing); v2: signed. The genesis string stays the v1 one.
_GENESIS_VERSION = 1
SIG_CONTEXT = b"secure-fcit/v1/spend-journal-entry\n"
#: Every entry carries these; DP entries add sigma, C, q, steps and the epsilons.
BASE_KEYS = frozenset({"v", "seq", "time", "client", "stage", "round", "kind", "prev", "hash"})
KINDS = frozenset({"dp-sgd", "skellam", "token", "release"})
DP_KEYS = frozenset({"sigma", "C", "q", "steps", "eps_rdp", "eps_prv", "delta"})
#: a distributed-DP (Skellam) release: integer-unit variance and sensitivities, one step
SKELLAM_KEYS = frozenset({"mu", "l2", "l1", "q", "steps", "C", "eps_rdp", "delta", "tasks"})


def genesis(client_id: str) -> str:
    return hashlib.sha256(f"secure-fcit spend journal v{_GENESIS_VERSION}:{client_id}".encode()).hexdigest()


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw Ed25519 public key as hex: how the journal and the roster name a signing key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public_bytes(pub).hex()


def is_signed(entries: list[dict[str, Any]]) -> bool:
    """Whether the (non-empty) journal is signed; a mixed one never verifies with keys."""
    return bool(entries) and all("sig" in e for e in entries)


def _check_signature(entry: dict[str, Any], keys: Collection[str], where: str) -> None:
    key, sig = entry.get("key"), entry.get("sig")
    if entry.get("v") != 2 or not isinstance(key, str) or not isinstance(sig, str):
        raise JournalError(f"{where}: entry is not signed (a v1 entry written before signing, or its "
                           "signature was stripped)")
    if key not in keys:
        raise JournalError(f"{where}: signed with key {key[:16]}..., which is not a key of client "
                           f"{entry['client']!r} on the roster (re-signed by someone else?)")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)).verify(
            bytes.fromhex(sig), SIG_CONTEXT + entry["hash"].encode())
    except (ValueError, InvalidSignature):
        raise JournalError(f"{where}: the entry's signature does not verify (edited or forged)") from None


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in entry.items() if k not in ("hash", "sig")}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(entry["prev"].encode() + b"\n" + _canonical(entry)).hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or unlink in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, sort_keys=True, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_journal(path: Path, client_id: str | None = None,
                 keys: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every entry of the journal at ``path``, verified; ``client_id`` (if given) must own it.

    With ``keys`` (hex public keys taken from outside the ledger folder) every entry must be
    signed by one of them; without, only the hash chain is checked (v1 journals, tools)."""
    path = Path(path)
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        # A crash mid-append leaves a partial last line. It was never acted on (fsync comes
        # before the spend), but it is not silently dropped: an operator looks at it.
        raise JournalError(f"{path}: the last line is incomplete (a crash during an append?)")
    owner = client_id
    prev = None
    for n, line in enumerate(raw.decode("utf-8", errors="strict").splitlines(), start=1):
        where = f"{path}:{n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JournalError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not BASE_KEYS <= set(entry):
            raise JournalError(f"{where}: missing fields {sorted(BASE_KEYS - set(entry or {}))}")
        if entry["kind"] not in KINDS:
            raise JournalError(f"{where}: unknown kind {entry['kind']!r}")
        if entry["kind"] in ("dp-sgd", "token") and not DP_KEYS <= set(entry):
            raise JournalError(f"{where}: a {entry['kind']} entry lacks {sorted(DP_KEYS - set(entry))}")
        if entry["kind"] == "skellam" and not SKELLAM_KEYS <= set(entry):
            raise JournalError(f"{where}: a skellam entry lacks {sorted(SKELLAM_KEYS - set(entry))}")
        if owner is None:
            owner = entry["client"]
        if entry["client"] != owner:
            raise JournalError(f"{where}: entry of client {entry['client']!r} in the journal of {owner!r}")
        expected_prev = genesis(owner) if prev is None else prev
        if entry["seq"] != n - 1:
            raise JournalError(f"{where}: sequence number {entry['seq']} where {n - 1} was expected "
                               "(a line was removed or reordered)")
        if entry["prev"] != expected_prev:
            raise JournalError(f"{where}: broken hash chain (a line before it was edited or removed)")
        if entry_hash(entry) != entry["hash"]:
            raise JournalError(f"{where}: the entry's hash does not match its content (edited)")
        if keys is not None:
            _check_signature(entry, keys, where)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def check_anchor(state_path: Path, journal_path: Path, entries: list[dict[str, Any]], client_id: str) -> int | None:
    """Check a verified journal against the entry count and head hash saved after its last append.

    Returns the count the anchor names (None when there is no anchor file); raises `JournalError`
    when the journal is shorter than that, or its entry there is not the one written.
    """
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as exc:
        raise JournalError(f"{state_path}: not JSON ({exc.msg})") from None
    if state.get("client") != client_id:
        raise JournalError(f"{state_path} belongs to client {state.get('client')!r}, not {client_id!r}")
    n = state.get("entries", 0)
    if len(entries) < n:
        raise JournalError(f"{journal_path}: {len(entries)} entries, but {n} were written "
                           "(lines were removed from its end)")
    if n and entries[n - 1]["hash"] != state.get("head"):
        raise JournalError(f"{journal_path}: entry {n - 1} differs from the one written (rewritten journal)")
    return n


class SpendJournal:
    """One client's journal file: verified when opened, appended (signed) with fsync.

    With ``signing_key`` every appended entry is signed, and the journal read at open must be
    signed by that key or one of ``keys`` (the client's keys from the roster)."""

    def __init__(self, path: Path, client_id: str, signing_key: Ed25519PrivateKey | None = None,
                 keys: Collection[str] = ()) -> None:
        self.path = Path(path)
        self.client_id = client_id
        self._signing_key = signing_key
        self.keys = None if signing_key is None else frozenset({*keys, public_hex(signing_key)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = read_journal(self.path, client_id, self.keys)

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else genesis(self.client_id)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain, write and fsync one entry; returns it. Nothing is acted on before this returns."""
        signed = self._signing_key is not None
        entry = {"v": VERSION if signed else 1, "seq": len(self.entries), "client": self.client_id, **fields,
                 "prev": self.head}
        if signed:
            entry["key"] = public_hex(self._signing_key)
        entry["hash"] = entry_hash(entry)
        if signed:
            entry["sig"] = self._signing_key.sign(SIG_CONTEXT + entry["hash"].encode()).hex()
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
        created = not self.path.exists()
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.path.parent)
        self.entries.append(entry)
        return entry
