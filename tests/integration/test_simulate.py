"""The `simulate` driver end to end on the micro model: every strategy, outputs and saved state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from secure_fcit.cli import main
from secure_fcit.config import config_from_dict
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.predict import load_state, predict
from secure_fcit.fcit.simulate import run_simulation, write_simulation
from secure_fcit.fcit.workspace import describe_device, resolve_device
from secure_fcit.model.loading import weights_sha256
from tests.micro import write_micro_toml


def micro_config(model_dir, cache, strategy="disco", setting="hom", kind="task", aggregation="masking",
                 device="auto", **fcit):
    het = setting == "het"
    return config_from_dict({
        "privacy": {"aggregation": aggregation, "min_cohort": 2, "ckks_k_min": 2},
        "model": {"path": str(model_dir), "cache_dir": str(cache), "device": device},
        "data": {"n_train": 10, "n_test": 2, "image_size": 32},
        "eval": {"batch_size": 16, "max_new_tokens": 6},
        "scenario": {"setting": setting, "kind": kind, "n_clients": 5 if het else 4,
                     "clients_per_round": 5 if het else 2, "beta": 1.0},
        "fcit": {"strategy": strategy, "rounds_per_stage": 2 if strategy == "ewc" else 1, "local_epochs": 1.0,
                 "local_batch_size": 8, "lr": 1e-2, "slot_rank": 2, "slot_alpha": 4.0, "tau": 0.5,
                 "n_buckets": 2, "k_min": 1, "min_open_samples": 1, **fcit},
    })


@pytest.fixture(scope="module")
def sim_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("simcache")


@pytest.fixture(scope="module")
def disco_run(micro_model_dir, sim_cache):
    cfg = micro_config(micro_model_dir, sim_cache, "disco")
    return cfg, run_simulation(cfg, progress=False, log=lambda m: None)


@pytest.mark.parametrize("strategy", ["disco", "finetune", "fedprox", "ewc", "olora"])
def test_every_strategy_runs_the_stream(strategy, micro_model_dir, sim_cache, tmp_path, request):
    if strategy == "disco":
        cfg, result = request.getfixturevalue("disco_run")
    else:  # the 4-stage capability stream keeps the suite short
        cfg = micro_config(micro_model_dir, sim_cache, strategy, kind="cap")
        result = run_simulation(cfg, progress=False, log=lambda m: None)
    m = result.accuracy_matrix
    t = 8 if cfg.scenario.kind == "task" else 4
    assert len(m) == t and all(len(row) == t for row in m)
    assert all(row[i] is not None for s, row in enumerate(m) for i in range(s + 1))
    assert all(row[i] is None for s, row in enumerate(m) for i in range(s + 1, t))
    assert len(result.round_seconds) == t * cfg.fcit.rounds_per_stage
    assert result.events["applied"] == t * cfg.fcit.rounds_per_stage and "aborted" not in result.events
    if strategy == "disco":
        assert 1 <= result.slots_opened <= cfg.fcit.max_slots
    else:
        assert result.state["slots"].shape[0] == 1
    written = write_simulation(result, cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("accuracy_matrix", "last", "avg", "forgetting", "bwt", "slots_opened", "round_seconds"):
        assert key in metrics
    assert metrics["device"] == result.device == describe_device(resolve_device("auto"))
    assert metrics["model_sha256"] == weights_sha256(micro_model_dir)
    assert all(p.is_file() for p in written)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: run on a GPU machine")
@pytest.mark.parametrize("strategy", ["disco", "fedprox", "ewc", "olora"])
def test_the_stream_runs_on_cuda_and_hands_back_cpu_state(strategy, micro_model_dir, sim_cache, tmp_path):
    # Batches, SSA weights and the baselines' anchors follow the model onto the GPU; slot vectors
    # come back to the CPU for aggregation and saving.
    cfg = micro_config(micro_model_dir, sim_cache, strategy, kind="cap", device="cuda")
    result = run_simulation(cfg, progress=False, log=lambda m: None)
    assert result.device == torch.cuda.get_device_name(0)
    assert result.events["applied"] == 4 * cfg.fcit.rounds_per_stage
    slots = result.state["slots"]
    assert isinstance(slots, np.ndarray) and np.isfinite(slots).all() and np.abs(slots).sum() > 0
    write_simulation(result, cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["device"] == result.device


def test_saved_state_answers_prompts(micro_model_dir, sim_cache, tmp_path, disco_run):
    from secure_fcit.data.llava_json import load_image

    cfg, result = disco_run
    write_simulation(result, cfg, tmp_path)
    state = load_state(tmp_path / "state")
    assert np.allclose(state["slots"], result.state["slots"])
    assert np.allclose(state["tokens"], result.state["tokens"], atol=1e-6)
    image = next((sim_cache / "benchmark").rglob("*.png"))
    answers = predict(tmp_path / "state", micro_model_dir, [(load_image(image), "What object is shown?")],
                      max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)
    # The command line reaches the same code.
    assert main(["predict", "--state", str(tmp_path / "state"), "--image", str(image),
                 "--question", "What is this?", "--model", str(micro_model_dir), "--max-new-tokens", "3"]) == 0


def test_a_broken_state_is_named(tmp_path):
    (tmp_path / "tokens.json").write_text("{not json")
    (tmp_path / "slots.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="tokens.json"):
        load_state(tmp_path)
    with pytest.raises(ConfigError, match="is missing"):
        load_state(tmp_path / "nowhere")


@pytest.mark.parametrize("strategy", ["disco", "finetune", "fedprox", "ewc", "olora"])
def test_every_strategy_runs_unchanged_under_ckks(strategy, micro_model_dir, sim_cache, tmp_path):
    cfg = micro_config(micro_model_dir, sim_cache, strategy, kind="cap", aggregation="ckks")
    result = run_simulation(cfg, progress=False, log=lambda m: None, privacy_dir=tmp_path / "privacy")
    t = 4
    assert result.events["applied"] == t * cfg.fcit.rounds_per_stage and "aborted" not in result.events
    log = [json.loads(line) for line in (tmp_path / "privacy" / "decryptions.jsonl").read_text().splitlines()]
    # one decryption per secure sum: a token phase per stage and every round
    assert len(log) == t + t * cfg.fcit.rounds_per_stage
    assert all(len(r["contributors"]) >= cfg.privacy.ckks_k_min and r["flood_std"] > 0 for r in log)


def test_het_stream_records_small_cohort_releases(micro_model_dir, sim_cache):
    # Het stages give several tasks one client each: with k_min = 2 every such slot is a small-cohort
    # release. Under secure sums "auto" means "allow-with-dp": without DP each is withheld and
    # recorded; "allow" applies and records them.
    cfg = micro_config(micro_model_dir, sim_cache, "disco", setting="het", k_min=2)
    assert cfg.privacy.aggregation == "masking"
    result = run_simulation(cfg, progress=False, log=lambda m: None)
    assert result.releases and all(r["policy"] == "allow-with-dp" for r in result.releases)
    assert not any(r["applied"] for r in result.releases)
    allowed = micro_config(micro_model_dir, sim_cache, "disco", setting="het", k_min=2, policy="allow")
    res2 = run_simulation(allowed, progress=False, log=lambda m: None)
    assert res2.releases and all(r["policy"] == "allow" and r["applied"] for r in res2.releases)


def test_simulate_command_runs_a_capability_stream(micro_model_dir, sim_cache, tmp_path, capsys):
    config = write_micro_toml(tmp_path / "cap.toml", micro_model_dir, sim_cache)
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(config), "--strategy", "finetune", "--beta", "5", "--seed", "3",
                 "--out", str(out), "--no-progress", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"] == "hom-cap" and metrics["beta"] == 5.0 and metrics["seed"] == 3
    assert len(metrics["accuracy_matrix"]) == 4 and metrics["strategy"] == "finetune"
    assert "Last" in capsys.readouterr().out


def test_simulate_refuses_a_config_that_cannot_work(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[fcit]\nk_min = 9\n")
    assert main(["simulate", "--config", str(config)]) == 2
    assert "fcit.k_min (9) exceeds scenario.clients_per_round" in capsys.readouterr().err


def test_stages_that_open_no_slot_are_reported_and_score_the_base_model(micro_model_dir, sim_cache):
    cfg = micro_config(micro_model_dir, sim_cache, "disco", kind="cap", min_open_samples=10_000)
    lines = []
    result = run_simulation(cfg, progress=False, log=lines.append)
    assert result.slots_opened == 0 and result.events.get("applied", 0) == 0
    assert len(result.accuracy_matrix) == 4
    assert sum("trained no slot" in line for line in lines) == 4
