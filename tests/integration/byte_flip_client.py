"""Test-only launcher: ``python -m tests.integration.byte_flip_client <client args>`` runs the real
client process (``secure_fcit.client.main``) as a malicious member: its masking aggregator, built by
the shipped ``client_aggregation``, is re-classed to ``ByteFlipper`` of the compliance attack test,
so it flips a byte in every sealed share row it sends and re-signs the row. Everything else (TLS,
data, DP, the round machine) is the production client's. Nothing in ``secure_fcit`` reaches this."""

from __future__ import annotations

import sys

import torch

import secure_fcit.deploy.client as deploy_client
from secure_fcit.client import main
from secure_fcit.protocols.secagg import MaskingClient
from tests.compliance.attacks.test_member_byte_flip import ByteFlipper

_honest_aggregation = deploy_client.client_aggregation


def flipping_aggregation(*args, **kwargs):
    """The honest client's aggregator, its share rows now flipped (same keys, same identity)."""
    aggregator = _honest_aggregation(*args, **kwargs)
    if not isinstance(aggregator, MaskingClient):
        raise SystemExit(f"byte_flip_client attacks the masking sum, not {type(aggregator).__name__}")
    aggregator.__class__ = ByteFlipper
    return aggregator


if __name__ == "__main__":
    torch.set_num_threads(1)
    # FederationClient looks client_aggregation up in its module's globals when it is built.
    deploy_client.client_aggregation = flipping_aggregation
    sys.exit(main(sys.argv[1:]))
