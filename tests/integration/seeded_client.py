"""Test-only launcher: ``python -m tests.integration.seeded_client <client args>`` runs the real
client process with DP noise seeded per (client, stage, round), so a TLS run can be compared number
for number with the in-process simulation. Production noise is never seeded: no config key or
command-line flag of ``secure_fcit`` reaches ``noise_prg``; only this file, outside the package."""

from __future__ import annotations

import hashlib
import sys

import torch

from secure_fcit.client import main
from secure_fcit.crypto.prg import ChaCha20PRG


def seeded_noise(client: str, stage: int, round: int) -> ChaCha20PRG:
    return ChaCha20PRG(hashlib.sha256(f"equality-test/{client}/{stage}/{round}".encode()).digest())


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:], noise_prg=seeded_noise))
