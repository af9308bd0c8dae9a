"""Attacks on the deployment's network layer (issue 19, "The network, from a black-box run").

Each test plays one named adversary against the code that ships: the server's admission
(``deploy.gate.Gate`` over ``protocols.tls.accept``, exactly as ``FederationServer`` wires it), the
client's ``tls.connect`` and session loop, the codec, the certificate tools and the checkpoint
store, over real TLS 1.3 sockets on loopback. A test passes only when the attack is refused and the
refusal is logged with its reason; where it makes sense a positive control shows the attack
working against the unprotected variant, so the test can fail.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secure_fcit.cli import main as cli_main
from secure_fcit.cli import report_shortfalls
from secure_fcit.config import config_from_dict
from secure_fcit.crypto.certs import (
    CRL_FILE,
    init_federation,
    issue_client,
    load_private_key,
    load_revoked,
    revoke_client,
)
from secure_fcit.deploy.checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from secure_fcit.deploy.client import FederationClient
from secure_fcit.deploy.common import CertFolder, control_frame
from secure_fcit.deploy.gate import Gate
from secure_fcit.deploy.roster import enrol
from secure_fcit.deploy.server import StepClock, _Peer
from secure_fcit.errors import ConfigError, RemoteProtocolError
from secure_fcit.fcit.simulate import stream_shortfalls
from secure_fcit.protocols import run_federation
from secure_fcit.protocols.codec import VERSION, decode
from secure_fcit.protocols.tls import accept, client_context, connect, read_frame, server_context, write_frame

FED = "fed-net"
MEMBERS = ("client-1", "client-2")
OUTSIDER = "client-9"  # holds a certificate of the federation CA, but is not on the roster
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("net") / "pki"
    paths = init_federation(root, FED, [HOST])
    for who in (*MEMBERS, OUTSIDER):
        issue_client(root, who)
    return root, paths


def _ctx(root, who):
    return client_context(root / "ca.pem", root / "clients" / f"{who}.pem", root / "clients" / f"{who}.key")


class GateServer:
    """The server's admission path on a real TLS socket: ``Gate.handler`` as ``FederationServer.run``
    installs it; an admitted member is recorded and its connection closed."""

    def __init__(self, root, *, crl=None, hello_timeout=5.0, connect_rate=30, read_timeout=5.0):
        self.root = root
        self.logs: list[str] = []
        self.welcomed: list[str] = []
        self.keepalive: list[bool] = []  # TCP keepalive on each admitted member's socket
        self.hold = False
        self.gate = Gate(federation_id=FED, allowed=frozenset(MEMBERS), max_size=256 << 20, read_timeout=read_timeout,
                         hello_timeout=hello_timeout, connect_rate=connect_rate, connect_window=60.0, keepalive=60.0,
                         crl=crl, ca=root / "ca.pem", log=self.logs.append)

    async def _serve(self, conn):
        self.welcomed.append(conn.identity)
        sock = conn.writer.get_extra_info("socket")
        self.keepalive.append(bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)))
        await conn.send(b"ok")
        if self.hold:  # like the server's read loop: serve until the peer (or the gate) closes
            await conn.reader.read()
        await conn.close()

    async def __aenter__(self):
        ctx = server_context(self.root / "ca.pem", self.root / "server.pem", self.root / "server.key")
        self.server = await asyncio.start_server(self.gate.handler(self._serve), HOST, 0, ssl=ctx,
                                                 ssl_handshake_timeout=5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.gate.close()
        await self.server.wait_closed()

    async def raw(self, who):
        """A TLS connection with ``who``'s certificate, before any hello."""
        return await asyncio.open_connection(HOST, self.port, ssl=_ctx(self.root, who), server_hostname=HOST)

    async def join(self, who):
        return await connect(HOST, self.port, _ctx(self.root, who), federation_id=FED, max_size=1 << 20, timeout=5)

    def logged(self, text):
        return [line for line in self.logs if text in line]


def _hello(**extra) -> bytes:
    return json.dumps({"hello": "secure-fcit", "version": VERSION, "federation_id": FED, **extra}).encode()


async def _answer(reader) -> dict:
    return json.loads(await read_frame(reader, 1 << 20, 5))


# ---------------------------------------------------------------------------------------- nesting bombs
def test_a_hello_nested_1000_deep_is_refused_with_a_logged_reason_and_the_server_serves_on(pki):
    """Malicious member: its hello is JSON nested 1,000 deep (Python's parser would raise
    RecursionError inside the connection handler). Claim: the hello is refused unparsed, the
    reason is logged and sent back, and the next honest member is still welcomed."""
    root, _ = pki

    async def attack():
        async with GateServer(root) as srv:
            reader, writer = await srv.raw("client-1")
            await write_frame(writer, b"[" * 1000 + b"]" * 1000)
            answer = await _answer(reader)
            writer.close()
            honest = await srv.join("client-2")
            await honest.close()
            return answer, srv

    answer, srv = asyncio.run(attack())
    assert "nested 1000 deep" in answer["error"]
    assert srv.logged("client-1's hello is JSON nested 1000 deep")
    assert srv.welcomed == ["client-2"]


def test_a_member_frame_with_a_nested_header_is_refused_by_the_codec():
    """Malicious member, after the hello: a message whose JSON header nests 100,000 deep.
    Claim: ``decode`` raises the protocol's typed error naming the nesting (the server cuts the
    connection off with that reason), never RecursionError."""
    header = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RemoteProtocolError, match="header is JSON nested 100000 deep"):
        decode(len(header).to_bytes(4, "little") + header, 1 << 20)


def test_a_malicious_server_cannot_crash_a_client_with_nested_json(pki):
    """Malicious server: it answers the hello with JSON nested 2,000 deep, and on a second
    connection welcomes the client and then sends a control frame nested 1,000,000 deep. Claim:
    ``tls.connect`` raises the typed transport error naming the nesting, and the client's shipped
    session loop ends the session with the reason logged (it reconnects; it does not crash)."""
    root, paths = pki

    async def attack():
        async def evil(reader, writer):
            await read_frame(reader, 4096, 5)  # the client's hello
            if not evil.count:
                await write_frame(writer, b"[" * 2000 + b"]" * 2000)
            else:
                await write_frame(writer, json.dumps({"welcome": "client-1"}).encode())
                await write_frame(writer, control_frame({})[:4] + b"[" * 1_000_000 + b"]" * 1_000_000)
            evil.count += 1
            await asyncio.sleep(0.5)
            writer.close()

        evil.count = 0
        sctx = server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key)
        server = await asyncio.start_server(evil, HOST, 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        outcome = {}
        try:
            await connect(HOST, port, _ctx(root, "client-1"), federation_id=FED, max_size=4 << 20, timeout=5)
        except RemoteProtocolError as exc:
            outcome["connect"] = str(exc)
        conn = await connect(HOST, port, _ctx(root, "client-1"), federation_id=FED, max_size=4 << 20, timeout=5)
        client = FederationClient.__new__(FederationClient)  # the shipped session loop, without a model
        client.config = config_from_dict({"deploy": {"max_message_size": 4 << 20, "read_timeout": 5.0}})
        client.client_id, logs = "client-1", []
        client._print = logs.append
        outcome["finished"] = await client._session(conn)
        outcome["logs"] = logs
        await conn.close()
        server.close()
        await server.wait_closed()
        return outcome

    outcome = asyncio.run(attack())
    assert "the server's answer to hello is JSON nested 2000 deep" in outcome["connect"]
    assert outcome["finished"] is False
    assert any("the server ended the session: refused control frame" in line and "nested 1000000 deep" in line
               for line in outcome["logs"])


# ---------------------------------------------------------------------------------------- admission
def test_a_non_members_big_frame_is_refused_before_it_is_buffered(pki):
    """Non-member with a CA-issued certificate: it announces a 200 MiB frame and starts sending it.
    Claim: it is refused for not being on the roster before a byte of it is read (the refusal
    arrives at once, not after the server waited for 200 MiB), with a logged reason; a member who
    sends the same as its hello is held to the 4 KiB hello limit."""
    root, _ = pki

    async def attack():
        async with GateServer(root, read_timeout=5.0) as srv:
            results = {}
            for who in (OUTSIDER, "client-1"):
                reader, writer = await srv.raw(who)
                writer.write((200 << 20).to_bytes(4, "big") + bytes(64 << 10))
                t0 = time.perf_counter()
                results[who] = (await _answer(reader), time.perf_counter() - t0)
                writer.close()
            return results, srv

    results, srv = asyncio.run(attack())
    answer, seconds = results[OUTSIDER]
    assert answer["error"] == f"{OUTSIDER} is not a client of this federation" and seconds < 2.0
    assert srv.logged(f"{OUTSIDER} is not a client of this federation")
    member_answer, seconds = results["client-1"]
    assert "frame length 209715200 outside 1..4096" in member_answer["error"] and seconds < 2.0
    assert srv.welcomed == []


def test_a_connection_that_never_says_hello_is_cut_off_at_the_hello_timeout(pki):
    """Member (or anyone holding a stolen member key) that opens TLS and then stays silent, or
    trickles its hello a byte at a time. Claim: the connection is cut off after
    ``deploy.hello_timeout`` with a logged reason, however slowly the bytes trickle."""
    root, _ = pki

    async def attack():
        async with GateServer(root, hello_timeout=0.4, read_timeout=5.0) as srv:
            silent_reader, silent = await srv.raw("client-1")
            trickle_reader, trickle = await srv.raw("client-2")
            hello = _hello()
            frame = len(hello).to_bytes(4, "big") + hello
            t0 = time.perf_counter()
            for i in range(6):  # one byte per 0.1 s: each read_frame wait alone would never expire
                trickle.write(frame[i:i + 1])
                await asyncio.sleep(0.1)
            answers = [await _answer(silent_reader), await _answer(trickle_reader)]
            elapsed = time.perf_counter() - t0
            silent.close()
            trickle.close()
            return answers, elapsed, srv

    answers, elapsed, srv = asyncio.run(attack())
    assert answers[0]["error"] == "client-1: no hello within 0.4 s"
    assert answers[1]["error"] == "client-2: no hello within 0.4 s"
    assert elapsed < 2.0
    assert len(srv.logged("no hello within 0.4 s")) == 2 and srv.welcomed == []


def test_a_peer_over_the_connection_rate_is_refused_with_a_logged_reason(pki):
    """Malicious member reconnecting in a loop (each TLS handshake costs the server). Claim: past
    ``deploy.connect_rate`` connections per window it is refused before its hello, with a logged
    reason, while another member is still welcomed."""
    root, _ = pki

    async def attack():
        async with GateServer(root, connect_rate=3) as srv:
            outcomes = []
            for _ in range(5):
                try:
                    conn = await srv.join("client-1")
                    outcomes.append("welcome")
                    await conn.close()
                except RemoteProtocolError as exc:
                    outcomes.append(str(exc))
            other = await srv.join("client-2")
            await other.close()
            return outcomes, srv

    outcomes, srv = asyncio.run(attack())
    assert outcomes[:3] == ["welcome"] * 3
    assert all("welcome" not in o for o in outcomes[3:])
    assert len(srv.logged("client-1: more than 3 connections in 60 s")) == 2
    assert srv.welcomed == ["client-1"] * 3 + ["client-2"]
    assert srv.keepalive == [True] * 4  # admitted members get TCP keepalive (a vanished peer is noticed)


# ---------------------------------------------------------------------------------------- resumption
def _blocking_hello(port, ctx, session=None):
    """One connection with a blocking socket (so a session can be offered); returns
    (the session afterwards, whether it was resumed, the server's answer)."""
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST, session=session) as tls:
            hello = _hello()
            tls.sendall(len(hello).to_bytes(4, "big") + hello)
            size = int.from_bytes(_recv(tls, 4), "big")
            answer = json.loads(_recv(tls, size))
            return tls.session, tls.session_reused, answer


def _recv(tls, n):
    data = b""
    while len(data) < n:
        chunk = tls.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_tls_sessions_cannot_be_resumed_so_every_connection_shows_its_certificate(pki):
    """Network attacker holding a session from an earlier connection (a stolen ticket, or a
    client whose certificate has since been revoked). Claim: the server issues no session tickets
    and no offered session is resumed: every connection is a full handshake with a certificate.
    Positive control: a TLS 1.3 server context with default ticket settings does resume."""
    root, paths = pki

    def ticketing_context():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(paths["server"].cert), str(paths["server"].key))
        ctx.load_verify_locations(str(paths["ca"].cert))
        return ctx

    async def run(server_ctx):
        async def handler(reader, writer):
            conn = await accept(reader, writer, federation_id=FED, allowed=frozenset(MEMBERS), max_size=1 << 20,
                                timeout=5)
            await conn.close()

        server = await asyncio.start_server(handler, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the attacker's side: willing to resume
        client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        client_ctx.load_verify_locations(str(paths["ca"].cert))
        client_ctx.load_cert_chain(str(root / "clients" / "client-1.pem"), str(root / "clients" / "client-1.key"))
        first, _, _ = await asyncio.to_thread(_blocking_hello, port, client_ctx)
        _, resumed, answer = await asyncio.to_thread(_blocking_hello, port, client_ctx, first)
        server.close()
        await server.wait_closed()
        return first.has_ticket, resumed, answer

    shipped = asyncio.run(run(server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key)))
    assert shipped == (False, False, {"welcome": "client-1"})
    control = asyncio.run(run(ticketing_context()))
    assert control[0] is True and control[1] is True  # the attack works where tickets are on


# ---------------------------------------------------------------------------------------- revocation
def test_a_revoked_client_is_refused_at_its_next_connect_with_a_logged_reason(tmp_path, capsys):
    """Compromised site (its key is stolen): while the server runs, the operator runs ``certs
    revoke --client`` with ``--publish`` to the server's folder. Claim: the revoked client is
    refused at its next connection, before its hello, with a logged reason naming the revocation,
    without a server restart; the other member still joins (and verifies the server with the CRL
    loaded), and its connection still open at the revocation is cut off. A CRL planted by someone without the CA key makes the server refuse everyone (fail
    closed) with a logged reason, rather than admit against a list it cannot trust."""
    folders = enrol(tmp_path / "fed", FED, [HOST], list(MEMBERS))
    server_certs = CertFolder(folders["server"])
    site = {c: CertFolder(folders[c]) for c in MEMBERS}
    crl = server_certs.root / CRL_FILE

    def member_ctx(who):
        folder = site[who]
        return client_context(folder.ca, *folder.client(who), crl=folder.crl)

    async def connect_both(srv):
        results = {}
        for who in MEMBERS:
            try:
                conn = await connect(HOST, srv.port, member_ctx(who), federation_id=FED, max_size=1 << 20, timeout=5)
                results[who] = conn.identity
                await conn.close()
            except RemoteProtocolError as exc:
                results[who] = str(exc)
        return results

    async def scenario():
        async with GateServer(server_certs.root, crl=crl) as srv:  # as FederationServer wires it
            before = await connect_both(srv)
            srv.hold = True
            held = await connect(HOST, srv.port, member_ctx("client-1"), federation_id=FED, max_size=1 << 20,
                                 timeout=5)
            assert await read_frame(held.reader, 16, 5) == b"ok"
            srv.hold = False
            code = cli_main(["certs", "revoke", "--out", str(tmp_path / "fed" / "pki"), "--client", "client-1",
                             "--publish", str(folders["server"]), "--publish", str(folders["client-2"])])
            srv.gate.refresh_crl()  # what the server's phase loop does every few seconds
            with pytest.raises(RemoteProtocolError, match="connection closed"):
                await read_frame(held.reader, 16, 5)  # the live connection was cut off
            after = await connect_both(srv)
            other = tmp_path / "other"
            init_federation(other, "fed-other", [HOST])
            issue_client(other, "client-2")
            revoke_client(other, "client-2")
            crl.write_bytes((other / CRL_FILE).read_bytes())  # planted: signed by another CA
            planted = await connect_both(srv)
            return before, code, after, planted, srv

    before, code, after, planted, srv = asyncio.run(scenario())
    assert before == {"client-1": "client-1", "client-2": "client-2"}
    assert code == 0 and "revoked client-1" in capsys.readouterr().out
    serial = x509.load_pem_x509_certificate(server_certs.client("client-1")[0].read_bytes()).serial_number
    assert "the server refused: client-1's certificate" in after["client-1"] and "revoked" in after["client-1"]
    assert after["client-2"] == "client-2"  # verified the server with the CRL loaded
    assert srv.logged(f"client-1's certificate (serial {serial:x}) is revoked by the federation CRL")
    assert srv.logged(f"cut off client-1: client-1's certificate (serial {serial:x}) was revoked while it was connected")
    assert all(who not in result for who, result in planted.items())
    assert len(srv.logged("the server's revocation list is unusable")) == 2
    assert srv.welcomed == ["client-1", "client-2", "client-1", "client-2"]


def test_a_client_refuses_a_revoked_server_and_a_crl_the_ca_did_not_sign(tmp_path):
    """Network attacker with a revoked (stolen) server key, and one who plants its own CRL.
    Claim: a client whose folder holds the federation CRL refuses the revoked server during the
    TLS handshake, and a CRL not signed by the federation CA is refused at load, naming it."""
    root = tmp_path / "pki"
    paths = init_federation(root, FED, [HOST])
    issue_client(root, "client-1")
    ca_cert = x509.load_pem_x509_certificate(paths["ca"].cert.read_bytes())
    server_serial = x509.load_pem_x509_certificate(paths["server"].cert.read_bytes()).serial_number
    import datetime as dt

    def crl_by(key, issuer):
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
                   .next_update(now + dt.timedelta(days=1))
                   .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(server_serial)
                                            .revocation_date(now).build()))
        return builder.sign(key, algorithm=None).public_bytes(serialization.Encoding.PEM)

    (root / CRL_FILE).write_bytes(crl_by(load_private_key(paths["ca"].key), ca_cert.subject))

    async def attempt():
        ctx = client_context(paths["ca"].cert, root / "clients" / "client-1.pem", root / "clients" / "client-1.key",
                             crl=root / CRL_FILE)
        async with GateServer(root) as srv:
            with pytest.raises(RemoteProtocolError, match="certificate revoked"):
                await connect(HOST, srv.port, ctx, federation_id=FED, max_size=1 << 20, timeout=5)

    asyncio.run(attempt())
    other = tmp_path / "other"
    init_federation(other, "fed-other", [HOST])
    forged = tmp_path / "forged.pem"
    forged.write_bytes(crl_by(load_private_key(other / "ca.key"), ca_cert.subject))
    with pytest.raises(ConfigError, match=f"revocation list {forged} is not signed by the federation CA"):
        load_revoked(forged, paths["ca"].cert)
    with pytest.raises(ConfigError, match="no certificate of 'client-7' to revoke"):
        revoke_client(root, "client-7")


# ---------------------------------------------------------------------------------------- shutdown
def test_shutdown_with_connections_still_in_their_hello_prints_no_traceback(pki, capfd):
    """Network attacker (or many slow clients) holding 40 connections open in their hello when
    the server stops. Claim: shutdown cancels and awaits them quietly: no exception reaches
    asyncio's handler and nothing like a traceback is printed. Positive control: the bare
    ``accept`` handler of the old server, left to ``asyncio.run``'s teardown, reports every one."""
    root, paths = pki
    n = 40

    async def scenario(shipped: bool):
        errors: list = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        ctx = server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key)
        if shipped:
            srv = GateServer(root, hello_timeout=30.0)
            await srv.__aenter__()
            server, port = srv.server, srv.port
        else:
            async def bare(reader, writer):
                await accept(reader, writer, federation_id=FED, allowed=frozenset(MEMBERS), max_size=1 << 20,
                             timeout=30)
            server = await asyncio.start_server(bare, HOST, 0, ssl=ctx)
            port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection(HOST, port, ssl=_ctx(root, MEMBERS[i % 2]), server_hostname=HOST)
                   for i in range(n)]
        for _ in range(100):
            if not shipped or srv.gate.pending >= n:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        if shipped:
            assert srv.gate.pending == n
            await srv.__aexit__(None, None, None)  # what FederationServer.run's finally does
        else:
            server.close()
        for _, writer in clients:
            writer.close()
        return errors

    assert asyncio.run(scenario(shipped=True)) == []
    out = capfd.readouterr()
    assert "Traceback" not in out.err + out.out and "CancelledError" not in out.err + out.out
    control = asyncio.run(scenario(shipped=False))
    capfd.readouterr()
    assert len(control) >= n // 2  # the old handler: one "Exception in callback" per pending hello


# ---------------------------------------------------------------------------------------- liveness
def test_the_step_deadline_does_not_restart_on_every_answer():
    """Malicious member(s) answering one message just before each phase timeout, to stall a step
    forever (the old loop restarted the timer on every answer). Claim: a step's deadline runs from
    the step's start; answers inside the step do not move it; only the next step gets a new one."""
    now = [0.0]
    clock = StepClock(10.0, clock=lambda: now[0])
    phase = ("round", (0, 0, 0))
    waiting = ["a", "b", "c", "d"]
    assert clock.left(phase, frozenset(waiting)) == 10.0
    for _ in range(3):  # one answer every 6 s: the pending set shrinks, the step is the same
        now[0] += 6.0
        waiting.pop()
        left = clock.left(phase, frozenset(waiting))
    assert left <= 0 and waiting == ["a"]  # expired at 10 s, although the last answer came 6 s ago
    assert clock.left(phase, frozenset(waiting)) <= 0  # and it stays expired: "a" is dropped
    now[0] += 1.0
    assert clock.left(phase, frozenset("abc")) == 10.0  # the phase's next step waits for more peers: new deadline
    now[0] += 4.0
    assert clock.left(("round", (0, 1, 0)), frozenset("a")) == 10.0  # so does the next phase


def test_a_peer_that_does_not_read_is_bounded_by_its_send_queue():
    """Malicious member that never reads its socket while the server keeps sending. Claim: at
    most ``deploy.send_queue`` frames wait for it; the next one is refused (the server then cuts it
    off as a reader too slow to keep up) instead of growing memory without bound."""
    async def run():
        peer = _Peer(conn=None, limit=3)  # type: ignore[arg-type]
        accepted = [peer.put(b"frame") for _ in range(5)]
        peer.stop()
        return accepted, peer.closed, peer.queue.qsize()

    accepted, closed, size = asyncio.run(run())
    assert accepted == [True, True, True, False, False] and closed and size == 3


def test_a_tampered_or_foreign_checkpoint_is_refused_naming_the_file(tmp_path):
    """Attacker who can write the server's checkpoint folder (a backup, a shared volume) but not
    its key file: it edits the coordinator state in the latest checkpoint, or plants one written
    under another key. Claim: the server refuses to resume from either, naming the file; the key
    may not live inside the checkpoint folder. Positive control: the untouched checkpoint loads."""
    state = tmp_path / "state"
    key = checkpoint_key(state / "checkpoint.key", state / "checkpoints")
    assert (state / "checkpoint.key").stat().st_mode & 0o777 == 0o600
    save_checkpoint(state / "checkpoints", {"stage": 1, "v": np.ones(3, np.float32)}, key=key)
    assert load_checkpoint(state / "checkpoints", key=key)["stage"] == 1
    record_path = state / "checkpoints" / "ckpt-000000.json"
    record = json.loads(record_path.read_text())
    record["tree"]["stage"] = 7
    record_path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"checkpoint .*ckpt-000000\.json fails its MAC"):
        load_checkpoint(state / "checkpoints", key=key)
    other = checkpoint_key(tmp_path / "other.key", state / "checkpoints")
    save_checkpoint(state / "checkpoints", {"stage": 9}, key=other)
    with pytest.raises(ConfigError, match=r"ckpt-000001\.json fails its MAC"):
        load_checkpoint(state / "checkpoints", key=key)
    with pytest.raises(ConfigError, match="must live outside the checkpoint folder"):
        checkpoint_key(state / "checkpoints" / "k", state / "checkpoints")


# ---------------------------------------------------------------------------------------- outcome
def test_a_stream_that_trained_nothing_exits_non_zero_with_the_reasons(capsys):
    """Malicious member(s) making every phase fail (here: every client refuses every round, the
    effect the byte-flip attack had on a real server). Claim: the end-of-run summary names each
    skipped round with its abort reason and says nothing was trained, and the exit status the
    server, ``simulate`` and ``demo`` return is non-zero. Positive control: a complete stream
    has no shortfall and exits 0."""
    from tests.unit.protocols._support import build_federation, client

    members = {client(i): 0 for i in range(5)}
    fed = build_federation([members], cohort_size=5, rounds=2, aggregation="masking")
    for learner in fed.learners.values():
        learner.refuse = {(0, 0), (0, 1)}
    run_federation(fed.coordinator, fed.workers)
    shortfalls = stream_shortfalls(fed.coordinator.events)
    assert any(line.startswith("stage 1 round 1 skipped: ") for line in shortfalls)
    assert any(line.startswith("stage 1 round 2 skipped: ") for line in shortfalls)
    assert shortfalls[-1] == "no round was trained: not one update was aggregated"
    assert report_shortfalls(shortfalls) == 3
    err = capsys.readouterr().err
    assert "the stream fell short" in err and "round 2 skipped" in err

    ok = build_federation([members], cohort_size=5, rounds=2, aggregation="masking")
    run_federation(ok.coordinator, ok.workers)
    assert stream_shortfalls(ok.coordinator.events) == [] and report_shortfalls([]) == 0


def test_a_revoked_clients_key_signs_nothing_in_a_secure_sum(tmp_path):
    """Malicious coordinator holding a revoked (stolen) client key: it cannot pass that client off
    as a cohort member to honest clients, because a client's identity directory leaves out every
    certificate the CRL revokes; a cohort naming it is refused before any key is sent."""
    from secure_fcit.crypto.certs import (
        client_directory,
        issue_client,
        load_private_key,
        load_revoked,
        revoke_client,
    )
    from secure_fcit.crypto.certs import init_federation as init
    from secure_fcit.crypto.keys import SigningKey
    from secure_fcit.errors import RemoteProtocolError
    from secure_fcit.protocols.aggregation import AggregationRound
    from secure_fcit.protocols.secagg import Identity, MaskingClient, MaskingParams

    init(tmp_path, "fed-r", ["127.0.0.1"])
    ids = [f"client-{i:03d}" for i in range(5)]
    for c in ids:
        issue_client(tmp_path, c)
    assert set(client_directory(tmp_path, ids)) == set(ids)  # control: before revocation
    revoke_client(tmp_path, "client-004")
    revoked = load_revoked(tmp_path / "crl.pem", tmp_path / "ca.pem")
    directory = client_directory(tmp_path, ids, revoked)
    assert "client-004" not in directory and len(directory) == 4
    me = Identity("client-000", SigningKey(load_private_key(tmp_path / "clients" / "client-000.key")))
    masking = MaskingClient(me, directory, MaskingParams())
    with pytest.raises(RemoteProtocolError, match="no enrolled identity key"):
        masking.begin(AggregationRound("fed-r", 0, 0, 0, "update"), ids, np.zeros(4), lambda p, e: None)
