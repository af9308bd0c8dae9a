"""Compliance: the deployment transport's TLS layer (threat_model.md §3).

TLS 1.3 only, mutual authentication against the federation CA, identity = certificate subject,
frame limits enforced before reading.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest

from secure_fcit.crypto.certs import init_federation, issue_client
from secure_fcit.errors import RemoteProtocolError
from secure_fcit.protocols import Refusal, encode
from secure_fcit.protocols.tls import (
    accept,
    bind_sender,
    client_context,
    connect,
    read_frame,
    server_context,
    write_frame,
)

FED = "fed-tls"
MAX = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    paths = init_federation(root / "fed", FED, ["localhost", "127.0.0.1"])
    clients = {c: issue_client(root / "fed", c) for c in ("client-1", "client-2")}
    init_federation(root / "other", "fed-other", ["127.0.0.1"])
    stranger = issue_client(root / "other", "client-1")
    return paths, clients, stranger


async def _serve(pki, client_ctx: ssl.SSLContext, then=None, hello_version=None):
    """Run one server accept against one client; returns (server outcome, client outcome)."""
    paths, _, _ = pki
    outcome: dict = {}
    done = asyncio.Event()

    async def handler(reader, writer):
        try:
            conn = await accept(reader, writer, federation_id=FED, allowed={"client-1", "client-2"},
                                max_size=MAX, timeout=5)
            outcome["server"] = conn.identity
            if then is not None:
                outcome["then"] = await then(conn)
        except (RemoteProtocolError, ssl.SSLError, ConnectionError, OSError) as exc:
            outcome["server_error"] = exc
        finally:
            done.set()

    sctx = server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key)
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        if hello_version is None:
            conn = await connect("127.0.0.1", port, client_ctx, federation_id=FED, max_size=MAX, timeout=5)
            outcome["client"] = conn
            if then is not None:
                outcome["client_then"] = conn
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                           server_hostname="127.0.0.1")
            await write_frame(writer, json.dumps({"hello": "secure-fcit", "version": hello_version,
                                                  "federation_id": FED}).encode())
            outcome["client"] = json.loads(await read_frame(reader, MAX, 5))
    except (RemoteProtocolError, ssl.SSLError, ConnectionError, OSError) as exc:
        outcome["client_error"] = exc
    try:  # a refused TLS handshake never reaches the handler at all
        await asyncio.wait_for(done.wait(), 1)
    except TimeoutError:
        outcome.setdefault("server_error", "handshake refused: no connection accepted")
    server.close()
    await server.wait_closed()
    return outcome


def _client_ctx(pki, who="client-1", *, tls12=False, no_cert=False, stranger=False):
    paths, clients, other = pki
    if tls12 or no_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(paths["ca"].cert))
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(clients[who].cert), str(clients[who].key))
        return ctx
    chosen = other if stranger else clients[who]
    return client_context(paths["ca"].cert, chosen.cert, chosen.key)


def test_a_federation_client_connects_with_tls13_and_its_certificate_identity(pki):
    outcome = asyncio.run(_serve(pki, _client_ctx(pki)))
    assert outcome["server"] == "client-1"
    conn = outcome["client"]
    assert conn.identity == "client-1"
    assert conn.writer.get_extra_info("ssl_object").version() == "TLSv1.3"


def test_a_tls12_client_is_refused(pki):
    outcome = asyncio.run(_serve(pki, _client_ctx(pki, tls12=True)))
    assert "server" not in outcome and "client" not in outcome
    assert "client_error" in outcome


def test_a_client_without_certificate_is_refused(pki):
    outcome = asyncio.run(_serve(pki, _client_ctx(pki, no_cert=True)))
    assert "server" not in outcome and "client" not in outcome and "client_error" in outcome


def test_a_certificate_from_another_ca_is_refused(pki):
    outcome = asyncio.run(_serve(pki, _client_ctx(pki, stranger=True)))
    assert "server" not in outcome and "client" not in outcome and "client_error" in outcome


def test_a_version_mismatch_is_refused_with_both_versions_named(pki):
    outcome = asyncio.run(_serve(pki, _client_ctx(pki), hello_version=999))
    assert "version mismatch" in outcome["client"]["error"] and "999" in outcome["client"]["error"]
    assert "server" not in outcome


def test_a_client_cannot_send_messages_under_another_clients_id(pki):
    async def then(conn):
        data = await conn.receive()
        with pytest.raises(RemoteProtocolError, match="claims sender 'client-2' on 'client-1'"):
            bind_sender(conn.identity, data, MAX)
        return True

    async def run():
        paths, _, _ = pki
        ctx = _client_ctx(pki)
        result: dict = {}

        async def handler(reader, writer):
            conn = await accept(reader, writer, federation_id=FED, allowed={"client-1", "client-2"}, max_size=MAX,
                                timeout=5)
            result["checked"] = await then(conn)

        server = await asyncio.start_server(
            handler, "127.0.0.1", 0, ssl=server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key)
        )
        port = server.sockets[0].getsockname()[1]
        conn = await connect("127.0.0.1", port, ctx, federation_id=FED, max_size=MAX, timeout=5)
        forged = Refusal(federation_id=FED, stage=0, round=-1, sender="client-2", reason="not me")
        await conn.send(encode(forged))
        for _ in range(50):
            if "checked" in result:
                break
            await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return result

    assert asyncio.run(run()) == {"checked": True}


def test_an_oversized_length_prefix_is_refused_before_reading(pki):
    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data((0xFFFFFFFF).to_bytes(4, "big") + b"x" * 10)  # a 4 GiB frame
        with pytest.raises(RemoteProtocolError, match="outside 1.."):
            await read_frame(reader, MAX, 1)
        reader = asyncio.StreamReader()
        reader.feed_data((100).to_bytes(4, "big") + b"short")
        reader.feed_eof()
        with pytest.raises(RemoteProtocolError, match="closed mid-frame"):
            await read_frame(reader, MAX, 1)
        reader = asyncio.StreamReader()
        with pytest.raises(RemoteProtocolError, match="no complete frame"):
            await read_frame(reader, MAX, 0.05)

    asyncio.run(run())
