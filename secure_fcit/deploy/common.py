"""What the server and client processes share: certificates, the model folder, secure-sum sides,
and the one control frame outside the message codec.

Control frame: the server's last frame on a connection may be ``b"\\0\\0\\0\\0" + JSON`` (a codec
frame never starts with a zero header length), e.g. ``{"bye": "finished"}`` when the stream is
over, so a client can tell "done" from "server lost". Its JSON is depth-checked before parsing
(``codec.check_nesting``): a malicious server cannot crash a client with a nesting bomb.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..config import Config
from ..errors import ConfigError, RemoteProtocolError
from ..protocols.aggregation import ClientAggregator, SecureAggregator
from ..protocols.codec import check_nesting

__all__ = [
    "CertFolder", "model_dir_for", "n_stages_for", "server_aggregation", "client_aggregation",
    "control_frame", "parse_control", "refuse_plaintext",
]

_CONTROL = b"\0\0\0\0"


@dataclass(frozen=True)
class CertFolder:
    """The folder of ``certs init|issue``; the federation id is the CA's organization."""

    root: Path

    @classmethod
    def from_config(cls, config: Config, override: str | None = None, *, holder: str | None = None) -> CertFolder:
        """``holder``: None for the server, else the client id; a folder with private keys the
        holder must not have is refused (``certs.refuse_foreign_keys``)."""
        folder = override or config.deploy.certs
        if not folder:
            raise ConfigError("no certificate folder: set deploy.certs or pass --certs (see `certs init`)")
        root = Path(folder)
        if not (root / "ca.pem").is_file():
            raise ConfigError(f"{root / 'ca.pem'} does not exist (run `python -m secure_fcit certs init --out {root}`)")
        from ..crypto.certs import refuse_foreign_keys

        refuse_foreign_keys(root, holder)
        return cls(root)

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def federation_id(self) -> str:
        cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if len(names) != 1:
            raise ConfigError(f"{self.ca} names no single organization (the federation id)")
        return str(names[0].value)

    def server(self) -> tuple[Path, Path]:
        return self.root / "server.pem", self.root / "server.key"

    @property
    def crl(self) -> Path | None:
        """The federation's revocation list (``certs revoke --publish``), when this folder has one."""
        from ..crypto.certs import CRL_FILE, load_revoked

        path = self.root / CRL_FILE
        if not path.is_file():
            return None
        load_revoked(path, self.ca)  # refuse one the CA did not sign, or an expired one
        return path

    def client(self, client_id: str) -> tuple[Path, Path]:
        return self.root / "clients" / f"{client_id}.pem", self.root / "clients" / f"{client_id}.key"


def model_dir_for(config: Config, progress: bool = False) -> Path:
    """The LLaVA directory of the config (the embedded model is built into its cache once)."""
    from ..model.pretrain import PretrainSpec, default_cache_dir, ensure_embedded_model

    mc = config.model
    if mc.path != "embedded":
        return Path(mc.path)
    cache = Path(mc.cache_dir) if mc.cache_dir else default_cache_dir()
    return ensure_embedded_model(cache, pretrain=PretrainSpec(steps=mc.pretrain_steps), seed=mc.seed,
                                 progress=progress)


def n_stages_for(config: Config) -> int:
    sc = config.scenario
    units = 8 if sc.kind == "task" else 4
    return min(units, sc.max_stages) if sc.max_stages else units


def refuse_plaintext(config: Config) -> None:
    if config.privacy.aggregation == "plaintext":
        raise ConfigError("privacy.aggregation = 'plaintext' is the insecure research aggregator and is not "
                          "served over the network; deploy with 'masking' or 'ckks'")


def _ckks_files(config: Config) -> tuple[Path, Path]:
    from ..protocols.ckks import PUBLIC_FILE, SECRET_FILE

    if not config.privacy.ckks_keys:
        raise ConfigError("privacy.aggregation = 'ckks' over the network needs privacy.ckks_keys "
                          "(run `python -m secure_fcit keys init --out DIR` and give clients the secret context)")
    folder = Path(config.privacy.ckks_keys)
    return folder / SECRET_FILE, folder / PUBLIC_FILE


def server_aggregation(config: Config, directory: dict[str, bytes]) -> Callable[[], SecureAggregator]:
    """The coordinator's secure-sum factory over the enrolled clients' identity keys."""
    refuse_plaintext(config)
    if config.privacy.aggregation == "masking":
        from ..protocols.secagg import MaskingAggregator

        return functools.partial(MaskingAggregator, directory, config.privacy.masking(), 1)
    from ..protocols.ckks import CKKSAggregator

    _, public = _ckks_files(config)
    if not public.is_file():
        raise ConfigError(f"{public} does not exist (run keys init)")
    return functools.partial(CKKSAggregator, directory, public.read_bytes(), config.privacy.ckks(), 1)


def client_aggregation(config: Config, client_id: str, signing_key: Any, directory: dict[str, bytes],
                       decryption_log: Path | None = None) -> ClientAggregator:
    """This client's side of the configured secure sum, signing with its certificate's key."""
    from ..crypto.keys import SigningKey
    from ..protocols.secagg import Identity

    refuse_plaintext(config)
    identity = Identity(client_id, SigningKey(signing_key))
    if config.privacy.aggregation == "masking":
        from ..protocols.secagg import MaskingClient

        return MaskingClient(identity, directory, config.privacy.masking())
    from ..protocols.ckks import CKKSClient, load_secret
    from ..protocols.factory import decryption_logger

    secret_path, _ = _ckks_files(config)
    if not secret_path.is_file():
        raise ConfigError(f"{secret_path} does not exist (the CKKS secret context clients hold)")
    secret = secret_path.read_bytes()
    load_secret(secret, secret_path)

    # key_path: the client ratchets its stage key on disk too, destroying the previous stage's
    return CKKSClient(identity, directory, secret, config.privacy.ckks(), key_path=secret_path,
                      decryption_log=decryption_logger(decryption_log, client_id))


def control_frame(payload: dict[str, Any]) -> bytes:
    return _CONTROL + json.dumps(payload).encode()


def parse_control(data: bytes) -> dict[str, Any] | None:
    """The control payload of ``data``, or None when it is an ordinary codec frame."""
    if not data.startswith(_CONTROL):
        return None
    try:
        check_nesting(data[len(_CONTROL):], "the server's control frame", stage="transport")
        payload = json.loads(data[len(_CONTROL):])
    except RemoteProtocolError as exc:
        return {"bye": f"refused control frame: {exc}"}
    except (UnicodeDecodeError, ValueError):
        return {"bye": "unreadable control frame"}
    return payload if isinstance(payload, dict) else {"bye": "malformed control frame"}
