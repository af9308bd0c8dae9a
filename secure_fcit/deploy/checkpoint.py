"""Atomic checkpoints of plain data with numpy arrays: JSON + safetensors, no pickle.

A checkpoint ``n`` is ``ckpt-NNNNNN.json`` (the tree, arrays replaced by references, plus the
SHA-256 of the array file) and ``ckpt-NNNNNN.safetensors``; both are fsynced before ``LATEST`` is
atomically replaced to name them. A crash at any point leaves ``LATEST`` naming a complete
checkpoint (or none). Loading checks the digest, so a torn or edited array file is refused.

The JSON record also carries an HMAC-SHA256 (over the record, digest of the arrays included)
under a 32-byte key from ``checkpoint_key``: a file kept *outside* the checkpoint folder (mode
0600, made from ``os.urandom`` on first use). Someone who can write the checkpoint folder but not
the key cannot make the server resume from a state of their choosing; a record whose MAC fails is
refused, naming the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..dp.journal import atomic_write_json
from ..errors import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "to_plain", "from_plain", "checkpoint_key"]

_LATEST = "LATEST"
_KEEP = 2
_REF = "__array__"


def to_plain(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``tree`` with every numpy array moved into ``arrays`` and replaced by a reference."""
    if isinstance(tree, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(tree)
        return {_REF: key}
    if isinstance(tree, dict):
        if any(not isinstance(k, str) for k in tree):
            raise ConfigError("checkpoint trees need string keys")
        return {k: to_plain(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [to_plain(v, arrays) for v in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise ConfigError(f"cannot checkpoint a {type(tree).__name__}")


def from_plain(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_REF}:
            try:
                return arrays[tree[_REF]]
            except KeyError:
                raise ConfigError(f"checkpoint references a missing array {tree[_REF]!r}") from None
        return {k: from_plain(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [from_plain(v, arrays) for v in tree]
    return tree


_KEY_BYTES = 32


def checkpoint_key(path: str | Path, checkpoints: str | Path) -> bytes:
    """The MAC key in ``path`` (created, 0600, when missing); refused inside ``checkpoints``."""
    path, checkpoints = Path(path).resolve(), Path(checkpoints).resolve()
    if path.is_relative_to(checkpoints):
        raise ConfigError(f"the checkpoint key {path} must live outside the checkpoint folder {checkpoints}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(_KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"checkpoint key {path} is readable by group or others; chmod 600 it")
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"checkpoint key {path} holds {len(key)} bytes, not {_KEY_BYTES}")
    return key


def _mac(key: bytes, record: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, b"secure_fcit/v1/checkpoint\0" + body.encode(), hashlib.sha256).hexdigest()


def mac_matches(key: bytes, record: dict[str, Any]) -> bool:
    """Whether checkpoint ``record`` (its JSON object, ``mac`` included) carries its HMAC under ``key``."""
    mac = record.get("mac")
    return isinstance(mac, str) and hmac.compare_digest(mac, _mac(key, record))


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
        raise ConfigError(f"a checkpoint key is {_KEY_BYTES} bytes (see checkpoint_key)")


def save_checkpoint(directory: str | Path, tree: dict[str, Any], *, key: bytes) -> Path:
    """Write ``tree`` as the next checkpoint in ``directory``, MACed under ``key``; returns its JSON path."""
    _check_key(key)
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latest = _read_latest(directory)
    seq = 0 if latest is None else latest["seq"] + 1
    stem = f"ckpt-{seq:06d}"
    arrays: dict[str, np.ndarray] = {}
    plain = to_plain(tree, arrays)
    array_path = directory / f"{stem}.safetensors"
    data = save(arrays or {"_": np.zeros(0, np.uint8)})
    with open(array_path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    digest = hashlib.sha256(data).hexdigest()
    json_path = directory / f"{stem}.json"
    record = {"seq": seq, "arrays": array_path.name, "sha256": digest, "tree": plain}
    atomic_write_json(json_path, {**record, "mac": _mac(key, record)})
    atomic_write_json(directory / _LATEST, {"seq": seq, "json": json_path.name})
    for old in range(seq - _KEEP, -1, -1):  # older checkpoints are no longer needed
        removed = False
        for suffix in (".json", ".safetensors"):
            path = directory / f"ckpt-{old:06d}{suffix}"
            if path.exists():
                path.unlink()
                removed = True
        if not removed:
            break
    return json_path


def _read_latest(directory: Path) -> dict[str, Any] | None:
    path = directory / _LATEST
    if not path.exists():
        return None
    try:
        latest = json.loads(path.read_text())
        if not isinstance(latest["seq"], int) or not isinstance(latest["json"], str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is corrupt; restore it from the checkpoint files or start a new state folder") from None
    return latest


def load_checkpoint(directory: str | Path, *, key: bytes) -> dict[str, Any] | None:
    """The latest checkpoint's tree, or None when ``directory`` has none; refused when its MAC
    under ``key`` or its array digest fails."""
    from safetensors.numpy import load_file

    _check_key(key)
    directory = Path(directory)
    latest = _read_latest(directory)
    if latest is None:
        return None
    json_path = directory / Path(latest["json"]).name
    try:
        record = json.loads(json_path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"checkpoint {json_path} cannot be read: {exc}") from None
    if not mac_matches(key, record):
        raise ConfigError(f"checkpoint {json_path} fails its MAC: it was not written under this server's "
                          "checkpoint key (edited, or from another state folder); refusing to resume from it")
    try:
        array_path = directory / Path(record["arrays"]).name
        data = array_path.read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"checkpoint {json_path} cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise ConfigError(f"checkpoint arrays {array_path} do not match the digest in {json_path}")
    arrays = dict(load_file(str(array_path)))
    return from_plain(record["tree"], arrays)
