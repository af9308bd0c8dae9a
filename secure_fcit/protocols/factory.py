"""The aggregation a configuration asks for: the coordinator's factory and each worker's side.

``privacy.aggregation`` picks masking (default), CKKS or the insecure plaintext aggregator. In
the in-process simulation, identities (Ed25519) are made fresh for the run and, without
``privacy.ckks_keys``, so is the CKKS key pair; a deployment loads both from its enrolment.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
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
from secure_fcit.protocols.secagg import MaskingAggregator, MaskingClient, make_identities

__all__ = ["Aggregation", "build_aggregation", "decryption_logger"]


@dataclass
class Aggregation:
    kind: str
    factory: Callable[[], SecureAggregator]
    clients: dict[str, ClientAggregator]

    @property
    def description(self) -> str:
        return {
            "masking": "masking: pairwise masks with dropout recovery; the coordinator sees only the sum",
            "ckks": "CKKS (SEAL via TenSEAL): the coordinator adds ciphertexts; a contributor decrypts the sum",
            "plaintext": "plaintext, the INSECURE research aggregator (the coordinator sees every vector)",
        }[self.kind]


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
        return Aggregation(
            kind,
            functools.partial(PlaintextAggregator, min_contributors=min_contributors),
            {c: PlaintextClient() for c in client_ids},
        )
    identities, directory = make_identities(client_ids)
    if kind == "masking":
        params = privacy.masking()
        return Aggregation(
            kind,
            functools.partial(MaskingAggregator, directory, params, min_contributors),
            {c: MaskingClient(identities[c], directory, params) for c in client_ids},
        )
    params = privacy.ckks()
    if privacy.ckks_keys:
        folder = Path(privacy.ckks_keys)
        secret_path, public_path = folder / SECRET_FILE, folder / PUBLIC_FILE
        if not secret_path.is_file() or not public_path.is_file():
            raise ConfigError(f"privacy.ckks_keys: {folder} lacks {SECRET_FILE} or {PUBLIC_FILE} (run keys init)")
        secret = secret_path.read_bytes()
        load_secret(secret, secret_path)
        public = public_path.read_bytes()
    else:
        keys = create_keys()
        secret, public = keys.secret, keys.public

    return Aggregation(
        kind,
        functools.partial(CKKSAggregator, directory, public, params, min_contributors),
        {c: CKKSClient(identities[c], directory, secret, params, decryption_log=decryption_logger(decryption_log, c)) for c in client_ids},
    )


def decryption_logger(path: Path | None, client: str) -> Callable[[dict], None] | None:
    """Appends each of ``client``'s CKKS decryptions to ``path`` as a JSON line (None: no log)."""
    if path is None:
        return None

    def write(record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"decryptor": client, **record}) + "\n")

    return write
