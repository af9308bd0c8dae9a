"""The micro federation as a TOML file, for tests that drive the command line."""

from __future__ import annotations

from pathlib import Path


def write_micro_toml(path: Path, model_dir: Path, cache: Path, extra: str = "") -> Path:
    """A 4-client capability stream on the micro model: 1 round per stage, rank-2 slots."""
    path.write_text(f"""
[model]
path = "{model_dir}"
cache_dir = "{cache}"
[data]
n_train = 10
n_test = 2
image_size = 32
[eval]
batch_size = 16
max_new_tokens = 6
[scenario]
setting = "hom"
kind = "cap"
n_clients = 4
clients_per_round = 2
[fcit]
rounds_per_stage = 1
local_epochs = 1.0
local_batch_size = 8
slot_rank = 2
slot_alpha = 4.0
tau = 0.5
n_buckets = 2
k_min = 1
min_open_samples = 1
{extra}
[privacy]
min_cohort = 2  # the micro stream's rounds have 2 clients (shipped configs: 5)
""")
    return path
