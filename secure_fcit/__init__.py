"""secure-fcit: privacy-hardened federated continual instruction tuning of multimodal models."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
