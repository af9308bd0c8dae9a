"""Federation certificates: CA, server SANs, client identities, key file modes, TLS 1.3 handshakes."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509

from secure_fcit.cli import main
from secure_fcit.crypto.certs import init_federation, issue_client, load_private_key, subject_id
from secure_fcit.errors import ConfigError


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str, dict]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: dict = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(
            socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1"
        ) as tls:
            version = tls.version()
            tls.recv(2)
    finally:
        thread.join(10)
        listener.close()
    return version, seen


def _contexts(paths, client):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(paths["server"].cert, paths["server"].key)
    server.load_verify_locations(paths["ca"].cert)
    server.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_cert_chain(client.cert, client.key)
    client_ctx.load_verify_locations(paths["ca"].cert)
    return server, client_ctx


def test_certificates_give_a_mutually_authenticated_tls13_handshake(tmp_path):
    paths = init_federation(tmp_path, "fed-1", ["localhost", "127.0.0.1"])
    client = issue_client(tmp_path, "client-007")
    for p in (paths["ca"].key, paths["server"].key, client.key):
        assert p.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(client.cert.read_bytes())
    assert subject_id(cert) == "client-007"
    server_cert = x509.load_pem_x509_certificate(paths["server"].cert.read_bytes())
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    version, seen = _handshake(*_contexts(paths, client))
    assert version == "TLSv1.3" and "error" not in seen
    assert dict(x[0] for x in seen["peer"]["subject"])["commonName"] == "client-007"


def test_a_certificate_of_another_ca_is_refused(tmp_path):
    paths = init_federation(tmp_path / "a", "fed-a", ["127.0.0.1"])
    init_federation(tmp_path / "b", "fed-b", ["127.0.0.1"])
    stranger = issue_client(tmp_path / "b", "client-001")
    server, client_ctx = _contexts(paths, stranger)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _handshake(server, client_ctx)


def test_keys_are_never_overwritten_and_open_keys_are_refused(tmp_path, capsys):
    assert main(["certs", "init", "--out", str(tmp_path), "--server-name", "127.0.0.1"]) == 0
    assert main(["certs", "issue", "--out", str(tmp_path), "--client", "c1", "--client", "c2"]) == 0
    assert "client c2" in capsys.readouterr().out
    assert main(["certs", "issue", "--out", str(tmp_path), "--client", "c1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    key = tmp_path / "clients" / "c1.key"
    load_private_key(key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(key)
    with pytest.raises(ConfigError, match="run `certs init` first"):
        issue_client(tmp_path / "nowhere", "c3")
