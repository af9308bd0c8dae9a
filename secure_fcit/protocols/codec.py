"""Wire format of messages: a length-prefixed JSON header, then raw little-endian arrays.

Layout: 4-byte little-endian header length | UTF-8 JSON header | array bytes, in the order the
header lists them. The header holds the message type, the format version, the common fields,
the message's scalar fields (bytes as hex, floats as finite JSON numbers) and, per array, its
name, dtype and shape. Nothing is unpickled or evaluated; the schema of every type comes from the
message dataclasses. Any defect of received bytes raises ``RemoteProtocolError`` naming it, and
nothing else.
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import fields
from functools import cache

import numpy as np

from secure_fcit.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secure_fcit.protocols.messages import MESSAGE_TYPES, Message

__all__ = ["VERSION", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "check_nesting", "encode", "decode"]

VERSION = 2  # 2: StageStart carries tau (workers match known tokens before SimHash)
MAX_HEADER_BYTES = 1 << 20
#: deepest nesting of arrays and objects accepted in any JSON that crosses the network (a header
#: needs 4). Checked before ``json.loads``: Python's parser recurses once per level and a hello
#: nested 1,000 deep would raise ``RecursionError`` inside it.
MAX_JSON_DEPTH = 16
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_PREFIX = 4
_COMMON = ("federation_id", "stage", "round", "attempt", "sender")
_HEADER_KEYS = frozenset({"type", "version", "fields", "arrays", *_COMMON})
_STAGE = "codec"


@cache
def _schema(cls: type[Message]) -> tuple[tuple[str, str], ...]:
    """(field name, kind) for every field of ``cls``; kind is how the field travels."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        if f.name in cls.arrays:
            kind = "array"
        elif hint in (str, int, float, bytes, bool):
            kind = hint.__name__
        elif typing.get_origin(hint) is tuple and typing.get_args(hint) in ((str, ...), (int, ...)):
            kind = f"tuple-{typing.get_args(hint)[0].__name__}"
        else:
            raise LocalProtocolError(f"{cls.__name__}.{f.name} has a type the codec cannot carry: {hint}")
        out.append((f.name, kind))
    return tuple(out)


def encode(message: Message) -> bytes:
    """The wire bytes of ``message`` (a registered message type)."""
    cls = type(message)
    if MESSAGE_TYPES.get(cls.__name__) is not cls:
        raise LocalProtocolError(f"cannot encode {cls.__name__}: not a registered message type")
    header: dict[str, object] = {"type": cls.__name__, "version": VERSION}
    scalars: dict[str, object] = {}
    arrays, blobs = [], []
    for name, kind in _schema(cls):
        value = getattr(message, name)
        if kind == "array":
            arrays.append({"name": name, "dtype": value.dtype.str, "shape": list(value.shape)})
            blobs.append(value.tobytes(order="C"))
        elif name in _COMMON:
            header[name] = value
        else:
            scalars[name] = (
                value.hex() if kind == "bytes" else list(value) if kind.startswith("tuple") else value
            )
    header["fields"] = scalars
    header["arrays"] = arrays
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise LocalProtocolError(f"{cls.__name__} header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return b"".join([len(raw).to_bytes(_PREFIX, "little"), raw, *blobs])


def _fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, stage=_STAGE)


def check_nesting(raw: bytes, what: str, max_depth: int = MAX_JSON_DEPTH, stage: str = _STAGE) -> None:
    """Refuse JSON ``raw`` nested deeper than ``max_depth``, before anything parses it.

    A linear scan: strings are cut out (brackets inside them do not count), then the running
    depth of the remaining brackets is summed. Raises ``RemoteProtocolError`` naming ``what``.
    """
    brackets = _JSON_STRING.sub(b"", bytes(raw)).translate(None, _NOT_BRACKET)
    if len(brackets) <= max_depth:
        return
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    depth = int(np.cumsum(steps).max())
    if depth > max_depth:
        raise RemoteProtocolError(f"{what} is JSON nested {depth} deep; at most {max_depth} is accepted",
                                  stage=stage)


def _reject_constant(name: str) -> None:
    raise _fail(f"header contains the non-finite number {name}")


def _read_header(data: bytes) -> tuple[dict, int]:
    if len(data) < _PREFIX:
        raise _fail(f"truncated message: {len(data)} bytes, no header length")
    size = int.from_bytes(data[:_PREFIX], "little")
    if size > MAX_HEADER_BYTES:
        raise _fail(f"header length {size} exceeds {MAX_HEADER_BYTES}")
    if _PREFIX + size > len(data):
        raise _fail(f"truncated message: header says {size} bytes, {len(data) - _PREFIX} present")
    check_nesting(data[_PREFIX : _PREFIX + size], "header")
    try:
        header = json.loads(data[_PREFIX : _PREFIX + size].decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail("header is not a JSON object")
    if set(header) != _HEADER_KEYS:
        unknown, missing = set(header) - _HEADER_KEYS, _HEADER_KEYS - set(header)
        raise _fail(f"header keys wrong (unknown: {sorted(unknown)[:5]}, missing: {sorted(missing)})")
    if type(header["version"]) is not int or header["version"] != VERSION:
        raise _fail(f"unsupported version {header['version']!r:.20}; this side speaks {VERSION}")
    return header, _PREFIX + size


def _scalar(type_name: str, name: str, kind: str, value: object) -> object:
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": (isinstance(value, float) and math.isfinite(value))
        or (isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 1 << 53),
        "bool": isinstance(value, bool),
        "bytes": isinstance(value, str),
        "tuple-str": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "tuple-int": isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }[kind]
    if not ok:
        raise _fail(f"{type_name}.{name} must be JSON {kind}, got {type(value).__name__}")
    if kind == "bytes":
        try:
            return bytes.fromhex(value)  # type: ignore[arg-type]
        except ValueError:
            raise _fail(f"{type_name}.{name} is not a hex string") from None
    if kind == "float":
        return float(value)  # type: ignore[arg-type]
    return tuple(value) if kind.startswith("tuple") else value  # type: ignore[arg-type]


def _array(type_name: str, spec: object, name: str, allowed: tuple[str, ...], ndim: int) -> tuple:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"} or spec["name"] != name:
        raise _fail(f"{type_name}: array entry for {name!r} is missing or malformed")
    if spec["dtype"] not in allowed:
        raise _fail(f"{type_name}.{name}: dtype {spec['dtype']!r:.20} not in {allowed}")
    shape = spec["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != ndim
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in shape)
    ):
        raise _fail(f"{type_name}.{name}: shape {shape!r:.60} is not {ndim} non-negative sizes")
    dtype = np.dtype(spec["dtype"])
    return dtype, tuple(shape), math.prod(shape) * dtype.itemsize


def decode(data: bytes, max_size: int) -> Message:
    """The message in ``data``; anything wrong with it raises ``RemoteProtocolError``."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < _PREFIX:
        raise ConfigError(f"max_size must be an integer >= {_PREFIX}, got {max_size!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise _fail(f"message of {len(data)} bytes exceeds max_size {max_size}")
    header, offset = _read_header(data)
    cls = MESSAGE_TYPES.get(header["type"]) if isinstance(header["type"], str) else None
    if cls is None:
        raise _fail(f"unknown message type {header['type']!r:.40}")
    type_name = cls.__name__
    scalars, specs = header["fields"], header["arrays"]
    if not isinstance(scalars, dict) or not isinstance(specs, list):
        raise _fail(f"{type_name}: 'fields' must be an object and 'arrays' a list")
    schema = _schema(cls)
    expected = {n for n, k in schema if k != "array" and n not in _COMMON}
    if set(scalars) != expected:
        raise _fail(f"{type_name}: fields {sorted(scalars)[:8]} do not match {sorted(expected)}")
    array_names = [n for n, k in schema if k == "array"]
    if len(specs) != len(array_names):
        raise _fail(f"{type_name}: expected {len(array_names)} array(s), header lists {len(specs)}")
    kwargs: dict[str, object] = {}
    for name, kind in schema:
        if kind == "array":
            continue
        value = header[name] if name in _COMMON else scalars[name]
        kwargs[name] = _scalar(type_name, name, kind, value)
    for name, spec in zip(array_names, specs, strict=True):
        dtype, shape, nbytes = _array(type_name, spec, name, *cls.arrays[name])
        if offset + nbytes > len(data):
            raise _fail(f"{type_name}.{name}: shape {shape} needs {nbytes} bytes, {len(data) - offset} left")
        kwargs[name] = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(data):
        raise _fail(f"{type_name}: {len(data) - offset} trailing bytes after the arrays")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise _fail(f"invalid {type_name}: {exc}") from None
