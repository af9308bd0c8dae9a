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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fcit]\nk_min = 6\n", "fcit.k_min \\(6\\) exceeds scenario.clients_per_round \\(5\\)"),
        ("[fcit]\ntau = 0.0\n", "fcit: tau must be a number in \\(0, 1\\]"),
        ("[fcit]\ntau = 1.2\n", "fcit: tau must be a number in \\(0, 1\\]"),
        ("[fcit]\nmax_slots = 7\n", "more tasks than slots"),
        ("[scenario]\nkind = \"cap\"\n[fcit]\nmax_slots = 3\n", "below the 4 cap units"),
        ("[fcit]\nstrategy = \"fedavg\"\n", "fcit.strategy must be one of"),
        ("[fcit]\npolicy = \"maybe\"\n", "fcit.policy must be"),
        ("[fcit]\nn_buckets = 12\n", "fcit: n_buckets must be a power of two"),
        ("[fcit]\nmin_open_share = 1.0\n", "fcit: min_open_share must be a number in \\[0, 1\\)"),
        ("[fcit]\nrounds = 3\n", "unknown config key fcit.rounds"),
    ],
)
def test_fcit_configs_that_cannot_work_are_refused_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_shipped_stream_configs_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("hom-task", "het-task", "hom-cap", "het-cap"):
        cfg = load_config(root / f"{name}.toml")
        assert (cfg.scenario.setting, cfg.scenario.kind) == tuple(name.split("-"))
        assert cfg.privacy.aggregation == "plaintext"  # the published figures: research aggregator
        assert cfg.fcit.release_policy(cfg.privacy.aggregation) == "allow"
        assert cfg.fcit.release_policy("masking") == "allow-with-dp"
    cap = load_config(root / "hom-cap.toml", {"fcit.max_slots": 4})
    assert cap.fcit.max_slots == 4


_DIST = '[dp]\nenabled = true\nmode = "distributed"\n[scenario]\nn_clients = 6\nclients_per_round = 5\n'


def test_distributed_dp_with_the_plaintext_aggregator_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"needs privacy.aggregation = 'masking', got 'plaintext'.*1/\(t - c\)"):
        load_config(write(tmp_path, _DIST + '[privacy]\naggregation = "plaintext"\n'))


def test_a_threshold_that_cannot_carry_the_noise_is_refused_with_the_numbers(tmp_path):
    # threshold 0.5 with 1 colluder: t - c honest shares would be too few to carry the noise and to
    # keep the sum from being split; the cohort sizes are checked at load, the first that fails named.
    with pytest.raises(ConfigError, match=r"a neighbourhood of 3 with threshold 0.5 has t = 2, and 1 colluder\(s\) "
                                          r"need t > \(\|N\| \+ c\)/2 = 2"):
        load_config(write(tmp_path, _DIST + '[privacy]\naggregation = "masking"\nthreshold = 0.5\ncolluders = 1\n'
                                    'min_cohort = 2\n'))


def test_the_server_momentum_reaches_the_coordinators_step_and_a_decay_of_1_is_refused(tmp_path, monkeypatch):
    import numpy as np

    import secure_fcit.fcit.simulate as sim

    base = _DIST + '[privacy]\naggregation = "masking"\n'
    with pytest.raises(ConfigError, match=r"dp.server_momentum must be in \[0, 1\), got 1.0"):
        load_config(write(tmp_path, base.replace("[scenario]", 'server_momentum = 1.0\n[scenario]')))
    cfg = load_config(write(tmp_path, base.replace("[scenario]", 'server_optimizer = "momentum"\n'
                                                                  'server_momentum = 0.5\n[scenario]')))
    seen = {}

    class Slots:
        def trainable_index(self, freeze_a):
            return np.arange(4)

    class Org:
        def use_distributed(self, step):
            seen["step"] = step

    monkeypatch.setattr(sim, "_organizer", lambda *a, **k: Org())
    sim.build_organizer(cfg, 4, Slots(), {"max_slots": 1, "parts": 1}, federation_id="fed")
    assert seen["step"].momentum == 0.5 and not seen["step"].adam


def test_a_bit_width_over_the_fixed_point_is_refused_with_the_numbers(tmp_path):
    with pytest.raises(ConfigError, match=r"dp.scale_bits = 20 exceeds the 13 fractional bits .* cohort of 5"):
        load_config(write(tmp_path, _DIST.replace('mode = "distributed"', 'mode = "distributed"\nscale_bits = 20')
                          + '[privacy]\naggregation = "masking"\n'))


def test_an_encoding_that_could_wrap_is_refused_before_any_round(tmp_path):
    from secure_fcit.dp.distributed import check_encoding

    cfg = load_config(write(tmp_path, _DIST + '[privacy]\naggregation = "masking"\n'))
    assert check_encoding(cfg, 60_000, 50) > 0  # the demo's scale fits
    small = load_config(write(tmp_path, _DIST + '[privacy]\naggregation = "masking"\nbound = 1.0\nmin_frac_bits = 8\n'))
    with pytest.raises(ConfigError, match=r"cohort of \d \(t = \d, c = \d, 60000 coordinates, up to 50 samples.*"
                                          r"over the per-client budget"):
        check_encoding(small, 60_000, 50)


def test_local_skellam_noise_with_the_prv_accountant_is_refused_at_load():
    from secure_fcit.config import DPConfig

    with pytest.raises(ConfigError, match="dp.noise = 'skellam' is accounted with RDP"):
        DPConfig(enabled=True, noise="skellam", accountant="prv")
    with pytest.raises(ConfigError, match="dp.noise must be"):
        DPConfig(enabled=True, noise="laplace")
