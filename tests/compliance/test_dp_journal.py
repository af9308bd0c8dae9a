"""Privacy spend is journaled before training, a crash over-counts, tampering is detected, the cap
is hard, and the audit report's epsilon is a fresh Opacus accountant's (threat_model.md §DP)."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from PIL import Image

from secure_fcit.config import DPConfig
from secure_fcit.dp import client as dp_client
from secure_fcit.dp.client import ClientPrivacy
from secure_fcit.dp.journal import read_journal
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.dp.report import audit
from secure_fcit.fcit.learner import SlotLearner
from secure_fcit.model.chat import encode_sample
from secure_fcit.model.loading import load_llava
from secure_fcit.model.slots import SlotLoRA
from secure_fcit.model.train import TrainSpec

DP = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, max_grad_norm=1.0)


class _Enc:
    dim = 4

    def encode(self, texts):
        return np.ones((len(texts), 4), np.float32) / 2


@pytest.fixture()
def learner(micro_model_dir, tmp_path):
    model, processor = load_llava(micro_model_dir)
    slots = SlotLoRA(model, rank=2, alpha=4.0, max_slots=1)
    samples = [encode_sample(processor, Image.new("RGB", (32, 32), (i * 40, 20, 20)), [("Color?", "red")])
               for i in range(6)]
    privacy = ClientPrivacy(tmp_path, "client-007", DP, batch_size=4, local_epochs=1.0, lr=1e-2, planned_rounds=3)
    return SlotLearner("client-007", slots, _Enc(), {0: samples}, {0: ["Color?"] * 6},
                       TrainSpec(epochs=1, batch_size=4, lr=1e-2), processor.tokenizer.pad_token_id, 0,
                       privacy=privacy)


def test_the_spend_is_on_disk_before_the_first_step(learner, tmp_path, monkeypatch):
    seen = {}
    real = dp_client.dp_train_steps

    def spy(*args, **kwargs):
        seen["entries"] = read_journal(tmp_path / "client-007" / "journal.jsonl")
        return real(*args, **kwargs)

    monkeypatch.setattr(dp_client, "dp_train_steps", spy)
    learner.train(0, 0, 0, learner.slots.initial_vector(1))
    assert [e["kind"] for e in seen["entries"]] == ["dp-sgd"]


def test_a_crash_during_training_over_counts_and_never_under_counts(learner, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(dp_client, "dp_train_steps", crash)
    with pytest.raises(KeyboardInterrupt):
        learner.train(0, 0, 0, learner.slots.initial_vector(1))
    learner.privacy.close()  # the crashed process is gone: its ledger lock with it
    ledger = PrivacyLedger(tmp_path, "client-007", DP)  # the restarted client
    assert len(ledger.history) == 1 and ledger.spent()["rdp"] > 0


def test_a_tampered_journal_stops_training_until_an_operator_acts(learner, tmp_path):
    learner.train(0, 0, 0, learner.slots.initial_vector(1))
    path = tmp_path / "client-007" / "journal.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" if len(lines) > 1 else "")  # drop the spend
    learner.privacy.close()
    restarted = ClientPrivacy(tmp_path, "client-007", DP, batch_size=4, local_epochs=1.0, lr=1e-2, planned_rounds=3)
    reason = restarted.refuse_reason(0, 1, 6)
    assert reason is not None and "failed verification" in reason
    learner.privacy = restarted  # nor does its identity token leave (the token phase is round -1)
    assert "failed verification" in learner.refuse_reason(1, -1)


def test_the_round_over_the_cap_is_refused_with_the_reason(micro_model_dir, tmp_path):
    privacy = ClientPrivacy(tmp_path, "client-001", DPConfig(enabled=True, epsilon=6.0, noise_multiplier=1.0),
                            batch_size=16, local_epochs=1.0, lr=1e-2, planned_rounds=1)
    assert privacy.refuse_reason(0, 0, 40) is None  # epsilon 4.86 of 6 after it
    privacy.ledger.charge(privacy._plans.pop((0, 0)))
    written = len(privacy.ledger.journal)
    reason = privacy.refuse_reason(0, 1, 40)
    assert reason is not None and "privacy budget" in reason and "of 6" in reason
    assert len(privacy.ledger.journal) == written and (0, 1) not in privacy._plans
    with pytest.raises(Exception, match="privacy budget"):  # train() plans again and refuses again
        privacy._plan(0, 1, 40)


def test_the_report_recomputes_epsilon_like_a_fresh_opacus_accountant(tmp_path):
    led = PrivacyLedger(tmp_path, "client-002", DP)
    for r, n in enumerate((40, 40, 100, 25)):
        led.charge(led.plan(r // 2, r, n, 16, 2.0, 6))
    entries = [e for e in read_journal(tmp_path / "client-002" / "journal.jsonl") if e["kind"] == "dp-sgd"]
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history = [(e["sigma"], e["q"], e["steps"]) for e in entries]
    prv.history = list(rdp.history)
    rep = audit(tmp_path, progress=False)
    (client,) = rep["clients"]
    assert client["status"] == "verified" and not client["mismatches"]
    assert abs(client["epsilon"]["rdp"] - rdp.get_epsilon(DP.delta)) <= 1e-6
    assert abs(client["epsilon"]["prv"] - prv.get_epsilon(DP.delta, eps_error=0.05)) <= 1e-6
    # each per-round value is a fresh accountant over the history up to that round
    for k, row in enumerate(client["rounds"]):
        fresh = RDPAccountant()
        fresh.history = rdp.history[: k + 1]
        assert abs(row["eps_rdp"] - fresh.get_epsilon(DP.delta)) <= 1e-6
