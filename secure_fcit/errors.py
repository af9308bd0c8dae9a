"""One exception hierarchy for secure-fcit.

Every error names what is wrong and, where there is one, what to do about it. Messages never carry
key material, masks, seeds or raw training data.
"""

from __future__ import annotations

__all__ = [
    "SecureFCITError",
    "ConfigError",
    "DataError",
    "ModelError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "CryptoError",
    "PrivacyError",
    "BudgetExhausted",
    "JournalError",
]


class SecureFCITError(Exception):
    """Base class of every error raised on purpose by secure-fcit."""


class ConfigError(SecureFCITError, ValueError):
    """A configuration value or file cannot work (unknown key, out-of-range value, bad type)."""


class DataError(SecureFCITError, ValueError):
    """A data file or record is malformed; the message names the file and the record."""


class ModelError(SecureFCITError):
    """A model directory, tokenizer or adapter cannot be loaded or does not fit the configuration."""


class ProtocolError(SecureFCITError):
    """A protocol rule was broken. ``stage`` names the protocol stage it happened in."""

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message if stage is None else f"[{stage}] {message}")
        self.stage = stage


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids in our current state."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol forbids; that peer is dropped, never us."""


class CryptoError(SecureFCITError):
    """A cryptographic check failed. Deliberately vague about which check, like an InvalidToken."""


class PrivacyError(SecureFCITError):
    """A differential-privacy parameter, accountant or journal is unusable."""


class BudgetExhausted(PrivacyError):
    """The spend a round would add crosses the configured (epsilon, delta) budget."""


class JournalError(PrivacyError):
    """A spend journal failed verification (edited, removed or reordered entries, another client's
    journal). The client will not train until an operator restores or replaces the journal."""
