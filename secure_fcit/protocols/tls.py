"""Mutual TLS 1.3 connections and length-prefixed frames: the deployment transport's lower layer.

Both sides use TLS 1.3 only, with certificates of the federation CA required and verified
(``certs init|issue``); the client also checks the server's name against its certificate. A
client's identity is the common name of its certificate, taken from the verified TLS session and
never from anything it says: every message it sends is bound to that identity (``bind_sender``).
The server issues no session tickets (``OP_NO_TICKET``, ``num_tickets = 0``) and neither side
reuses a session: every connection is authenticated by a full handshake with a certificate, so a
revoked certificate cannot ride on a resumed session. A certificate revoked by the federation's
CRL (``certs revoke``, ``crl.pem``) is refused: by the server after the handshake with a reason it
logs (``accept(revoked=...)``), by a client during the handshake (``VERIFY_CRL_CHECK_LEAF``).

Frames: a 4-byte big-endian length, then that many bytes (a codec-encoded message, or the JSON of
the opening handshake). A frame over ``max_size`` is refused *before* it is read, so a 4 GiB
length prefix costs nothing. The opening handshake: the client sends ``{"hello": "secure-fcit",
"version": V, "federation_id": F}``; the server answers ``{"welcome": <client id>}`` or
``{"error": <reason>}`` and closes (a version or federation mismatch names both sides' values).
The server checks the certificate against the revocation list and the roster (``allowed``)
*before* it reads anything, so a non-member never gets to send a frame, and a member's hello is
held to 4 KiB and ``hello_timeout`` seconds; only a welcomed member's frames may reach
``max_size``. Handshake JSON nested deeper than ``codec.MAX_JSON_DEPTH`` is refused unparsed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

from secure_fcit.crypto.certs import load_private_key
from secure_fcit.errors import ConfigError, RemoteProtocolError
from secure_fcit.protocols.codec import VERSION, check_nesting, decode
from secure_fcit.protocols.messages import Message, check_id

__all__ = [
    "PREFIX",
    "server_context",
    "client_context",
    "peer_identity",
    "peer_serial",
    "read_frame",
    "write_frame",
    "Connection",
    "accept",
    "connect",
    "bind_sender",
]

PREFIX = 4
_HELLO_MAX = 4096
_STAGE = "transport"


def _check_files(*paths: str | Path) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"{path} does not exist (run `python -m secure_fcit certs init|issue`)")


def _tls13(purpose: int, ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    _check_files(ca, cert, key)
    load_private_key(key)  # refuses a key file others can read
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == 0 else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # No resumption: a resumed TLS 1.3 session carries the first handshake's identity without a
    # certificate being shown again (and without a revocation check).
    ctx.options |= ssl.OP_NO_TICKET
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    return ctx


def server_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate of the federation CA is required; no session tickets.

    Revocation is checked by ``accept`` after the handshake, so that the refusal is logged.
    """
    ctx = _tls13(0, ca, cert, key)
    ctx.num_tickets = 0  # OP_NO_TICKET alone still issues stateful TLS 1.3 tickets
    return ctx


def client_context(ca: str | Path, cert: str | Path, key: str | Path, crl: str | Path | None = None
                   ) -> ssl.SSLContext:
    """TLS 1.3 only; the server's certificate and host name are verified against the federation CA
    and, with ``crl`` (the federation's ``crl.pem``), refused when revoked."""
    ctx = _tls13(1, ca, cert, key)
    ctx.check_hostname = True
    if crl is not None:
        _check_files(crl)
        ctx.load_verify_locations(str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def peer_serial(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> int:
    """The serial number of the verified peer's certificate (what a CRL lists)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert or "serialNumber" not in cert:
        raise RemoteProtocolError("the peer presented no verified certificate", stage=_STAGE)
    return int(cert["serialNumber"], 16)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The verified peer's client id: the common name of its certificate subject."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        raise RemoteProtocolError("the peer presented no verified certificate", stage=_STAGE)
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(names) != 1:
        raise RemoteProtocolError("the peer certificate must name exactly one common name", stage=_STAGE)
    try:
        return check_id("certificate common name", names[0])
    except ConfigError as exc:
        raise RemoteProtocolError(str(exc), stage=_STAGE) from None


_SAME = object()


async def read_frame(reader: asyncio.StreamReader, max_size: int, timeout: float, idle: float | None | object = _SAME
                     ) -> bytes:
    """One frame; ``RemoteProtocolError`` on a bad length, a timeout or a closed stream.

    ``timeout`` bounds the frame once its first byte is awaited; ``idle`` bounds the wait for the
    frame to start (default ``timeout``; None: peers idle between rounds for as long as they like,
    a frame once started must still complete within ``timeout``).
    """
    wait = timeout if idle is _SAME else idle
    try:
        first = await asyncio.wait_for(reader.read(1), wait)
        if not first:
            raise RemoteProtocolError("connection closed", stage=_STAGE)
        prefix = first + await asyncio.wait_for(reader.readexactly(PREFIX - 1), timeout)
        size = int.from_bytes(prefix, "big")
        if not 0 < size <= max_size:
            raise RemoteProtocolError(f"frame length {size} outside 1..{max_size}", stage=_STAGE)
        return await asyncio.wait_for(reader.readexactly(size), timeout)
    except asyncio.IncompleteReadError as exc:
        raise RemoteProtocolError(f"connection closed mid-frame ({len(exc.partial)} bytes read)", stage=_STAGE) from None
    except TimeoutError:
        raise RemoteProtocolError(f"no complete frame within {timeout:g} s", stage=_STAGE) from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise RemoteProtocolError(f"connection failed: {exc}", stage=_STAGE) from None


async def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(len(data).to_bytes(PREFIX, "big") + data)
    await writer.drain()


@dataclass
class Connection:
    """An authenticated connection: ``identity`` comes from the verified certificate."""

    identity: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    max_size: int
    timeout: float

    async def receive(self) -> bytes:
        return await read_frame(self.reader, self.max_size, self.timeout)

    async def send(self, data: bytes) -> None:
        await write_frame(self.writer, data)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


_REFUSAL_WRITE_S = 2.0  # a refused peer that does not read its socket cannot hold the handler


async def _refuse(writer: asyncio.StreamWriter, reason: str) -> RemoteProtocolError:
    try:
        await asyncio.wait_for(write_frame(writer, json.dumps({"error": reason}).encode()), _REFUSAL_WRITE_S)
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    writer.close()
    return RemoteProtocolError(reason, stage=_STAGE)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    federation_id: str,
    allowed: set[str] | frozenset[str],
    max_size: int,
    timeout: float,
    hello_timeout: float | None = None,
    revoked: frozenset[int] = frozenset(),
) -> Connection:
    """Server side of the opening handshake on a fresh TLS connection.

    ``allowed``: the roster; any other certificate of the CA is refused before a byte is read.
    ``revoked``: certificate serial numbers of the federation's CRL. ``hello_timeout`` (default
    ``timeout``) bounds the whole hello, however slowly its bytes trickle in.
    """
    ssl_object = writer.get_extra_info("ssl_object")
    try:
        identity = peer_identity(ssl_object)
        serial = peer_serial(ssl_object)
    except RemoteProtocolError as exc:
        raise await _refuse(writer, str(exc)) from None
    if serial in revoked:
        raise await _refuse(writer, f"{identity}'s certificate (serial {serial:x}) is revoked by the federation CRL")
    if identity not in allowed:
        raise await _refuse(writer, f"{identity} is not a client of this federation")
    limit = timeout if hello_timeout is None else hello_timeout
    try:
        raw = await asyncio.wait_for(read_frame(reader, _HELLO_MAX, timeout), limit)
    except TimeoutError:
        raise await _refuse(writer, f"{identity}: no hello within {limit:g} s") from None
    except RemoteProtocolError as exc:
        raise await _refuse(writer, f"{identity}: bad hello: {exc}") from None
    try:
        check_nesting(raw, f"{identity}'s hello", stage=_STAGE)
    except RemoteProtocolError as exc:
        raise await _refuse(writer, str(exc)) from None
    try:
        hello = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        hello = None
    if not isinstance(hello, dict) or hello.get("hello") != "secure-fcit":
        raise await _refuse(writer, f"{identity}: the first frame is not a secure-fcit hello")
    if hello.get("version") != VERSION:
        raise await _refuse(
            writer, f"protocol version mismatch: the server speaks {VERSION}, {identity} sent {hello.get('version')!r:.20}"
        )
    if hello.get("federation_id") != federation_id:
        raise await _refuse(
            writer, f"{identity} asked for federation {hello.get('federation_id')!r:.80}; this is {federation_id!r}"
        )
    await write_frame(writer, json.dumps({"welcome": identity}).encode())
    return Connection(identity, reader, writer, max_size, timeout)


async def connect(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    federation_id: str,
    max_size: int,
    timeout: float,
) -> Connection:
    """Client side: TLS 1.3 to ``host:port``, then the opening handshake."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout
        )
    except TimeoutError:
        raise RemoteProtocolError(f"no TLS connection to {host}:{port} within {timeout:g} s", stage=_STAGE) from None
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        raise RemoteProtocolError(f"TLS connection to {host}:{port} failed: {exc}", stage=_STAGE) from None
    try:
        await write_frame(
            writer, json.dumps({"hello": "secure-fcit", "version": VERSION, "federation_id": federation_id}).encode()
        )
        raw = await read_frame(reader, _HELLO_MAX, timeout)
        check_nesting(raw, "the server's answer to hello", stage=_STAGE)
        answer = json.loads(raw)
    except RemoteProtocolError:
        writer.close()
        raise
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        writer.close()
        raise RemoteProtocolError(f"the server closed the connection during the hello: {exc}", stage=_STAGE) from None
    except (UnicodeDecodeError, ValueError):
        writer.close()
        raise RemoteProtocolError("the server's answer to hello is not JSON", stage=_STAGE) from None
    if not isinstance(answer, dict):
        writer.close()
        raise RemoteProtocolError("the server's answer to hello is malformed", stage=_STAGE)
    if "error" in answer:
        writer.close()
        raise RemoteProtocolError(f"the server refused: {answer['error']}", stage=_STAGE)
    identity = answer.get("welcome")
    if not isinstance(identity, str):
        raise RemoteProtocolError("the server's answer to hello is malformed", stage=_STAGE)
    return Connection(identity, reader, writer, max_size, timeout)


def bind_sender(identity: str, data: bytes, max_size: int) -> Message:
    """Decode a frame from the authenticated ``identity``; a message naming another sender is refused."""
    message = decode(data, max_size)
    if message.sender != identity:
        raise RemoteProtocolError(
            f"{type(message).__name__} claims sender {message.sender!r} on {identity!r}'s connection", stage=_STAGE
        )
    return message
