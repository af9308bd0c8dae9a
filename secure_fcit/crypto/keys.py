"""Key agreement, authenticated encryption and signatures for the aggregation protocols.

Thin, typed wrappers over ``cryptography``: X25519 + HKDF-SHA256 for pairwise keys (mask seeds and
share-transport keys, separated by ``info``), AES-256-GCM for share transport with the sender,
receiver and round bound as associated data, Ed25519 signatures. Private keys never leave these
objects except through ``cryptography``'s own serialization.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CryptoError

__all__ = ["KeyPair", "SigningKey", "verify", "agree", "seal", "open_sealed", "public_bytes"]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def public_bytes(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUB)


@dataclass
class KeyPair:
    """An X25519 key pair for one purpose (mask agreement or share transport)."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return public_bytes(self.private.public_key())


def agree(mine: KeyPair, their_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``their_public``: HKDF-SHA256(X25519(...), info)."""
    try:
        peer = X25519PublicKey.from_public_bytes(their_public)
    except ValueError as exc:
        raise CryptoError(f"not an X25519 public key: {exc}") from None
    try:
        shared = mine.private.exchange(peer)
    except ValueError:  # cryptography refuses the all-zero shared secret
        raise CryptoError("X25519 produced the all-zero secret (a low-order public key)") from None
    if shared == bytes(32):
        raise CryptoError("X25519 produced the all-zero secret (a low-order public key)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM with a fresh 96-bit nonce from os.urandom; returns nonce || ciphertext."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < 12 + 16:
        raise CryptoError("sealed message too short")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag:
        raise CryptoError("sealed message failed authentication (wrong key, sender, receiver or round)") from None


@dataclass
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return public_bytes(self.private.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Raise `CryptoError` unless ``signature`` is ``public``'s Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CryptoError("bad Ed25519 signature") from None
