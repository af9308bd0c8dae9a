"""Atomic checkpoints of plain data with numpy arrays: JSON + safetensors, no pickle.

A checkpoint ``n`` is ``ckpt-NNNNNN.json`` (the tree, arrays replaced by references, plus the
SHA-256 of the array file) and ``ckpt-NNNNNN.safetensors``; both are fsynced before ``LATEST`` is
atomically replaced to name them. A crash at any point leaves ``LATEST`` naming a complete
checkpoint (or none). Loading checks the digest, so a torn or edited array file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..dp.journal import atomic_write_json
from ..errors import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "to_plain", "from_plain"]

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


def save_checkpoint(directory: str | Path, tree: dict[str, Any]) -> Path:
    """Write ``tree`` as the next checkpoint in ``directory``; returns its JSON path."""
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
    atomic_write_json(json_path, {"seq": seq, "arrays": array_path.name, "sha256": digest, "tree": plain})
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


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The latest checkpoint's tree, or None when ``directory`` has none."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    latest = _read_latest(directory)
    if latest is None:
        return None
    json_path = directory / Path(latest["json"]).name
    try:
        record = json.loads(json_path.read_text())
        array_path = directory / Path(record["arrays"]).name
        data = array_path.read_bytes()
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint {json_path} cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise ConfigError(f"checkpoint arrays {array_path} do not match the digest in {json_path}")
    arrays = dict(load_file(str(array_path)))
    return from_plain(record["tree"], arrays)
