"""The federation's certificates: a CA, a server certificate, one client certificate per client id.

``python -m secure_fcit certs init --out DIR --server-name HOST [--server-name IP ...]`` creates the
federation CA (``ca.pem``, ``ca.key``) and the server's certificate (``server.pem``, ``server.key``)
with its host names and IP addresses as subject alternative names; ``certs issue --out DIR
--client ID`` adds ``clients/ID.pem`` and ``clients/ID.key``. A client's identity is the common
name of its certificate subject. Keys are Ed25519, written with mode 0600 and refused at load when
group- or world-readable; nothing is overwritten.

``certs revoke --out DIR --client ID`` removes a compromised site: it adds the serial of
``clients/ID.pem`` to the federation's revocation list ``DIR/crl.pem`` (signed by the CA key; the
list only grows). Copy ``crl.pem`` into the server's and every site's certificate folder (``certs
revoke --publish FOLDER``): the server refuses a revoked client at its next connection, with a
logged reason, and clients refuse a revoked server certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from ..protocols.messages import check_id

__all__ = [
    "CertPaths", "init_federation", "issue_client", "load_private_key", "subject_id", "client_directory",
    "write_bundles", "refuse_foreign_keys", "CRL_FILE", "revoke_client", "load_revoked",
]

CRL_FILE = "crl.pem"

_VALIDITY_DAYS = 825


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists; refusing to overwrite a certificate or key")


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from ``path``; refused if others can read the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"private key {path} does not exist")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"private key {path} is readable by group or others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def _certificate(subject: x509.Name, issuer: x509.Name, public, signer: Ed25519PrivateKey, *, ca: bool,
                 extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, algorithm=None)


def _ca(directory: Path) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not cert_path.is_file():
        raise ConfigError(f"{cert_path} does not exist; run `certs init` first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert, load_private_key(key_path)


def init_federation(directory: str | Path, federation: str, server_names: list[str]) -> dict[str, CertPaths]:
    """Create the CA and the server certificate in ``directory``."""
    check_id("federation id", federation)
    if not server_names:
        raise ConfigError("the server certificate needs at least one host name or IP address (--server-name)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ca": CertPaths(out / "ca.pem", out / "ca.key"), "server": CertPaths(out / "server.pem", out / "server.key")}
    _refuse_existing(*(p for cp in paths.values() for p in (cp.cert, cp.key)))
    ca_key = Ed25519PrivateKey.generate()
    ca_name = _name(f"{federation} federation CA", federation)
    ca_cert = _certificate(
        ca_name, ca_name, ca_key.public_key(), ca_key, ca=True,
        extensions=[(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                   data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                   encipher_only=False, decipher_only=False), True)],
    )
    sans: list[x509.GeneralName] = []
    for name in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    server_key = Ed25519PrivateKey.generate()
    server_cert = _certificate(
        _name(server_names[0], federation), ca_name, server_key.public_key(), ca_key, ca=False,
        extensions=[(x509.SubjectAlternativeName(sans), False),
                    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), True)],
    )
    _write_key(paths["ca"].key, ca_key)
    paths["ca"].cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["server"].key, server_key)
    paths["server"].cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def issue_client(directory: str | Path, client_id: str) -> CertPaths:
    """Issue ``clients/<client_id>.pem`` and ``.key`` signed by the federation CA in ``directory``."""
    check_id("client id", client_id)
    if "/" in client_id:
        raise ConfigError(f"client id {client_id!r} cannot contain '/' (it names a file)")
    out = Path(directory)
    ca_cert, ca_key = _ca(out)
    federation = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    (out / "clients").mkdir(exist_ok=True)
    paths = CertPaths(out / "clients" / f"{client_id}.pem", out / "clients" / f"{client_id}.key")
    _refuse_existing(paths.cert, paths.key)
    key = Ed25519PrivateKey.generate()
    cert = _certificate(
        _name(client_id, str(federation)), ca_cert.subject, key.public_key(), ca_key, ca=False,
        extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), True)],
    )
    _write_key(paths.key, key)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def subject_id(cert: x509.Certificate) -> str:
    """The client id a certificate names (its subject's common name)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ConfigError("a federation certificate names exactly one common name")
    return check_id("certificate common name", str(names[0].value))


def _client_cert(path: Path, ca_cert: x509.Certificate, ca_path: Path) -> x509.Certificate:
    """The certificate at ``path``, refused unless the federation CA signed it."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{path} is not signed by the federation CA {ca_path}") from None
    return cert


def client_directory(directory: str | Path, client_ids: list[str],
                     revoked: frozenset[int] = frozenset()) -> dict[str, bytes]:
    """Each client's raw Ed25519 public key, from ``clients/<id>.pem`` checked against the CA.

    This is the identity directory secure aggregation signs against: a certificate the federation
    CA did not sign, or one naming another client, is refused with the file it came from. A client
    whose certificate serial is in ``revoked`` is left out, so nothing signed with its (possibly
    stolen) key is accepted in a secure sum, and a cohort naming it is refused.
    """
    out = Path(directory)
    cert_path = out / "ca.pem"
    if not cert_path.is_file():
        raise ConfigError(f"{cert_path} does not exist; run `certs init` first")
    ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    keys: dict[str, bytes] = {}
    for client in client_ids:
        path = out / "clients" / f"{client}.pem"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist (run `python -m secure_fcit certs issue --client {client}`)")
        cert = _client_cert(path, ca_cert, cert_path)
        if subject_id(cert) != client:
            raise ConfigError(f"{path} names {subject_id(cert)!r}, not {client!r}")
        if cert.serial_number in revoked:
            continue
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{path} does not hold an Ed25519 key")
        keys[client] = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return keys


def _copy(src: Path, dst: Path, secret: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    _refuse_existing(dst)
    if secret:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(src.read_bytes())
    else:
        dst.write_bytes(src.read_bytes())


def write_bundles(pki: str | Path, server_out: str | Path, site_outs: dict[str, Path]) -> None:
    """Split the operator's ``pki`` folder into what each party may hold.

    The server gets ``ca.pem``, its own certificate and key and every client's certificate; site
    ``c`` gets ``ca.pem``, every client's certificate and only its own key. ``ca.key`` stays in
    ``pki`` (keep it offline): whoever holds it, or a client's key, can act as that client.
    """
    pki = Path(pki)
    certs = sorted((pki / "clients").glob("*.pem"))
    server_out = Path(server_out)
    for name in ("ca.pem", "server.pem"):
        _copy(pki / name, server_out / name, secret=False)
    _copy(pki / "server.key", server_out / "server.key", secret=True)
    for cert in certs:
        _copy(cert, server_out / "clients" / cert.name, secret=False)
    crl = [pki / CRL_FILE] if (pki / CRL_FILE).is_file() else []
    for extra in crl:
        _copy(extra, server_out / extra.name, secret=False)
    for client, out in site_outs.items():
        out = Path(out)
        _copy(pki / "ca.pem", out / "ca.pem", secret=False)
        for cert in certs:
            _copy(cert, out / "clients" / cert.name, secret=False)
        _copy(pki / "clients" / f"{client}.key", out / "clients" / f"{client}.key", secret=True)
        for extra in crl:
            _copy(extra, out / extra.name, secret=False)


def refuse_foreign_keys(directory: str | Path, own: str | None) -> None:
    """Refuse a certificate folder that holds private keys its user must not have: the CA key,
    or (for the server, ``own`` None) any client key, or (for client ``own``) another client's."""
    root = Path(directory)
    foreign = [p for p in [root / "ca.key", *sorted((root / "clients").glob("*.key"))]
               if p.exists() and p.name != f"{own}.key"]
    if foreign:
        who = "the coordinator" if own is None else f"client {own!r}"
        raise ConfigError(
            f"{root} holds private keys {who} must not have ({', '.join(p.name for p in foreign[:4])}): with them it "
            "could act as other clients. Give it its own bundle from `python -m secure_fcit deploy prepare` "
            "(FED/server-certs, FED/clients/<id>/certs) and keep ca.key offline"
        )


def revoke_client(directory: str | Path, client_id: str, publish: Sequence[str | Path] = ()) -> Path:
    """Add ``clients/<client_id>.pem`` of ``directory`` to the federation CRL ``directory/crl.pem``.

    The list is re-signed by the CA key with every serial it held before plus this one, and copied
    into each folder of ``publish`` (the server's and the sites' certificate folders)."""
    check_id("client id", client_id)
    out = Path(directory)
    ca_cert, ca_key = _ca(out)
    cert_path = out / "clients" / f"{client_id}.pem"
    if not cert_path.is_file():
        raise ConfigError(f"{cert_path} does not exist: no certificate of {client_id!r} to revoke")
    cert = _client_cert(cert_path, ca_cert, out / "ca.pem")
    crl_path = out / CRL_FILE
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=_VALIDITY_DAYS))
    )
    serials = load_revoked(crl_path, out / "ca.pem") if crl_path.is_file() else frozenset()
    for serial in sorted(serials | {cert.serial_number}):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    data = builder.sign(ca_key, algorithm=None).public_bytes(serialization.Encoding.PEM)
    targets = [Path(folder) for folder in publish]
    for target in targets:
        if not (target / "ca.pem").is_file():
            raise ConfigError(f"{target} is not a certificate folder (no ca.pem) to publish the CRL to")
    for path in [crl_path, *(target / CRL_FILE for target in targets)]:
        tmp = path.with_suffix(".tmp")  # replaced whole: a running server never reads half a list
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return crl_path


def load_revoked(crl_path: str | Path, ca_path: str | Path) -> frozenset[int]:
    """The serial numbers ``crl_path`` revokes; refused unless the federation CA ``ca_path`` signed it."""
    crl_path = Path(crl_path)
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"revocation list {crl_path} cannot be read: {exc}") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        raise ConfigError(f"revocation list {crl_path} is not signed by the federation CA {ca_path}")
    if crl.next_update_utc is not None and crl.next_update_utc < dt.datetime.now(dt.UTC):
        raise ConfigError(f"revocation list {crl_path} expired on {crl.next_update_utc:%Y-%m-%d}; "
                          "re-sign it with `certs revoke`")
    return frozenset(r.serial_number for r in crl)
