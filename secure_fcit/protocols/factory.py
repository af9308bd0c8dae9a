"""The aggregation a configuration asks for: the coordinator's factory and each worker's side.

``privacy.aggregation`` picks masking (default), CKKS or the insecure plaintext aggregator. In
the in-process simulation, identities (Ed25519) are made fresh for the run and, without
``privacy.ckks_keys``, so is the CKKS key pair; a deployment loads both from its enrolment.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from secure_fcit.config import PrivacyConfig
from secure_fcit.errors import ConfigError
from secure_fcit.protocols.aggregation import (
    ClientAggregator,
    PlaintextAggregator,
    PlaintextClient,
    SecureAggregator,
)
from secure_fcit.protocols.ckks import (
    PUBLIC_FILE,
    SECRET_FILE,
    CKKSAggregator,
    CKKSClient,
    create_keys,
    load_secret,
)
from secure_fcit.protocols.secagg import Identity, MaskingAggregator, MaskingClient, make_identities

__all__ = ["DESCRIPTIONS", "Aggregation", "build_aggregation", "ckks_key_pair", "coordinator_factory", "client_aggregator",
           "decryption_logger"]


@dataclass
class Aggregation:
    kind: str
    factory: Callable[[], SecureAggregator]
    clients: dict[str, ClientAggregator]

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]


#: One line per aggregation kind, for logs.
DESCRIPTIONS: dict[str, str] = {
    "masking": "masking: pairwise masks with dropout recovery; the coordinator sees only the sum",
    "ckks": "CKKS (SEAL via TenSEAL): the coordinator adds ciphertexts; a contributor decrypts the sum",
    "plaintext": "plaintext, the INSECURE research aggregator (the coordinator sees every vector)",
}


def build_aggregation(
    privacy: PrivacyConfig,
    client_ids: Sequence[str],
    *,
    min_contributors: int = 1,
    decryption_log: Path | None = None,
) -> Aggregation:
    """Both sides of the configured aggregation for ``client_ids`` (see the module docstring)."""
    kind = privacy.aggregation
    if kind == "plaintext":
        identities, directory = {}, {}
    else:
        identities, directory = make_identities(client_ids)
    secret, public = ckks_key_pair(privacy) if kind == "ckks" else (b"", b"")
    return Aggregation(
        kind,
        coordinator_factory(privacy, directory, public, min_contributors),
        {c: client_aggregator(privacy, c, identities.get(c), directory, secret, decryption_log) for c in client_ids},
    )


def ckks_key_pair(privacy: PrivacyConfig) -> tuple[bytes, bytes]:
    """(secret, public) CKKS contexts: read from ``privacy.ckks_keys``, else a fresh pair."""
    if privacy.ckks_keys:
        folder = Path(privacy.ckks_keys)
        secret_path, public_path = folder / SECRET_FILE, folder / PUBLIC_FILE
        if not secret_path.is_file() or not public_path.is_file():
            raise ConfigError(f"privacy.ckks_keys: {folder} lacks {SECRET_FILE} or {PUBLIC_FILE} (run keys init)")
        secret = secret_path.read_bytes()
        load_secret(secret, secret_path)
        return secret, public_path.read_bytes()
    keys = create_keys()
    return keys.secret, keys.public


def coordinator_factory(
    privacy: PrivacyConfig, directory: Mapping[str, bytes], ckks_public: bytes = b"", min_contributors: int = 1
) -> Callable[[], SecureAggregator]:
    """The coordinator's aggregator factory: it holds only public keys (the Ed25519 directory, the
    public CKKS context)."""
    kind = privacy.aggregation
    if kind == "plaintext":
        return functools.partial(PlaintextAggregator, min_contributors=min_contributors)
    if kind == "masking":
        return functools.partial(MaskingAggregator, dict(directory), privacy.masking(), min_contributors)
    return functools.partial(CKKSAggregator, dict(directory), ckks_public, privacy.ckks(), min_contributors)


def client_aggregator(
    privacy: PrivacyConfig,
    client_id: str,
    identity: Identity | None,
    directory: Mapping[str, bytes],
    ckks_secret: bytes = b"",
    decryption_log: Path | None = None,
) -> ClientAggregator:
    """Worker ``client_id``'s side of the configured aggregation (its own signing ``identity``)."""
    kind = privacy.aggregation
    if kind == "plaintext":
        return PlaintextClient()
    if identity is None or identity.client_id != client_id:
        raise ConfigError(f"{kind} aggregation needs {client_id}'s own identity")
    if kind == "masking":
        return MaskingClient(identity, dict(directory), privacy.masking())
    return CKKSClient(identity, dict(directory), ckks_secret, privacy.ckks(),
                      decryption_log=decryption_logger(decryption_log, client_id))


def decryption_logger(path: Path | None, client: str) -> Callable[[dict], None] | None:
    """Appends each of ``client``'s CKKS decryptions to ``path`` as a JSON line (None: no log)."""
    if path is None:
        return None

    def write(record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"decryptor": client, **record}) + "\n")

    return write
