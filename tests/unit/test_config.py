from __future__ import annotations

import pytest

from secure_fcit.config import Config, load_config
from secure_fcit.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_and_values(tmp_path):
    cfg = load_config(write(tmp_path, "seed = 3\n[lora]\nrank = 4\n[train]\nepochs = 1\n"))
    assert cfg.seed == 3 and cfg.lora.rank == 4 and cfg.train.epochs == 1.0
    assert cfg.model == Config().model


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key lora\.rnak"):
        load_config(write(tmp_path, "[lora]\nrnak = 4\n"))
    with pytest.raises(ConfigError, match="unknown config key trian"):
        load_config(write(tmp_path, "[trian]\nepochs = 1\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"lora\.rank: expected int, got str"):
        load_config(write(tmp_path, '[lora]\nrank = "8"\n'))


@pytest.mark.parametrize(
    "text, match",
    [
        ("[lora]\nrank = 0\n", "lora.rank"),
        ("[train]\nlr = 0\n", "train.lr"),
        ("[scenario]\nbeta = 0\n", "scenario.beta"),
        ("[scenario]\nsetting = 'mixed'\n", "scenario.setting"),
        ("[scenario]\nclients_per_round = 60\n", "clients_per_round"),
    ],
)
def test_ranges(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[lora\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, ""), {"scenario.beta": 0.5})
    assert cfg.scenario.beta == 0.5


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.toml")):
        load_config(path)
