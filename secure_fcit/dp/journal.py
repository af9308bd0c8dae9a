"""The spend journal: append-only, hash-chained JSONL, one per client, fsynced before the spend.

Each line is one JSON object with sorted keys. ``prev`` is the previous line's ``hash`` (the
first line chains to a genesis hash bound to the client id) and ``hash`` is SHA-256 over
``prev`` and the line's canonical JSON without ``hash``. Reading verifies every line: an edited,
removed, reordered or foreign line is a `JournalError` naming the line. Removing lines from the
*end* leaves a valid chain; the ledger catches that by checking the journal against the entry
count and head hash it saved (atomically) after the last append.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import JournalError

__all__ = ["SpendJournal", "genesis", "entry_hash", "read_journal", "check_anchor", "atomic_write_json"]

VERSION = 1
#: Every entry carries these; DP entries add sigma, C, q, steps and the epsilons.
BASE_KEYS = frozenset({"v", "seq", "time", "client", "stage", "round", "kind", "prev", "hash"})
KINDS = frozenset({"dp-sgd", "release"})
DP_KEYS = frozenset({"sigma", "C", "q", "steps", "eps_rdp", "eps_prv", "delta"})


def genesis(client_id: str) -> str:
    return hashlib.sha256(f"secure-fcit spend journal v{VERSION}:{client_id}".encode()).hexdigest()


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(entry["prev"].encode() + b"\n" + _canonical(entry)).hexdigest()


def _fsync_dir(path: Path) -> None:
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
    _fsync_dir(path.parent)


def read_journal(path: Path, client_id: str | None = None) -> list[dict[str, Any]]:
    """Every entry of the journal at ``path``, verified; ``client_id`` (if given) must own it."""
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
        if entry["kind"] == "dp-sgd" and not DP_KEYS <= set(entry):
            raise JournalError(f"{where}: a dp-sgd entry lacks {sorted(DP_KEYS - set(entry))}")
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
    """One client's journal file: verified when opened, appended with fsync."""

    def __init__(self, path: Path, client_id: str) -> None:
        self.path = Path(path)
        self.client_id = client_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = read_journal(self.path, client_id)

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else genesis(self.client_id)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain, write and fsync one entry; returns it. Nothing is acted on before this returns."""
        entry = {"v": VERSION, "seq": len(self.entries), "client": self.client_id, **fields, "prev": self.head}
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
        created = not self.path.exists()
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.path.parent)
        self.entries.append(entry)
        return entry
