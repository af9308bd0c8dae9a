"""`export` (issue 23): each slot of a trained state is a standard PEFT LoRA adapter that
``PeftModel.from_pretrained`` loads on the base model, with the same logits (and answers) as the
state's own model with that slot forced; routing.json carries the tokens SSA needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image

from secure_fcit.cli import main
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.export import export_state
from secure_fcit.fcit.predict import load_state, predict
from secure_fcit.fcit.simulate import build_slots, run_simulation, write_simulation
from secure_fcit.model.chat import collate_prompts, encode_prompt
from secure_fcit.model.loading import load_llava
from tests.integration.test_simulate import micro_config


@pytest.fixture(scope="module")
def trained_state(micro_model_dir, tmp_path_factory):
    cfg = micro_config(micro_model_dir, tmp_path_factory.mktemp("cache"), "disco")
    cfg = type(cfg)(**{**cfg.__dict__, "scenario": type(cfg.scenario)(**{**cfg.scenario.__dict__, "max_stages": 1})})
    out = tmp_path_factory.mktemp("run")
    write_simulation(run_simulation(cfg, progress=False, log=lambda m: None), cfg, out)
    return out / "state"


def test_an_exported_slot_loads_with_peft_and_gives_the_forced_slot_logits(trained_state, micro_model_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--state", str(trained_state), "--out", str(out), "--model", str(micro_model_dir)]) == 0
    state = load_state(trained_state)
    n = state["slots"].shape[0]
    assert n >= 1 and sorted(p.name for p in out.iterdir()) == sorted([f"slot-{k}" for k in range(n)] + ["routing.json"])
    routing = json.loads((out / "routing.json").read_text())
    np.testing.assert_allclose(routing["tokens"], state["tokens"], rtol=1e-6)
    assert routing["slots"] == [f"slot-{k}" for k in range(n)]

    model, processor = load_llava(micro_model_dir)
    slots = build_slots(model, state["layout"])
    for k in range(n):
        slots.load_slot(k, state["slots"][k])
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    question = "What object is shown?"
    batch = collate_prompts([encode_prompt(processor, image, question)], processor.tokenizer.pad_token_id)
    for k in range(n):
        assert (out / f"slot-{k}" / "adapter_config.json").is_file()
        assert (out / f"slot-{k}" / "adapter_model.safetensors").is_file()
        base, _ = load_llava(micro_model_dir)
        peft_model = PeftModel.from_pretrained(base, str(out / f"slot-{k}")).eval()
        with torch.no_grad(), slots.routed(torch.ones(1, 1), [k]):
            ours = slots.model(**batch.model_inputs()).logits
        with torch.no_grad():
            theirs = peft_model(**batch.model_inputs()).logits
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        # the forced slot's effect is real: the adapter changes the base model's logits
        with torch.no_grad(), peft_model.disable_adapter():
            plain = peft_model(**batch.model_inputs()).logits
        assert not torch.allclose(plain, theirs)
        gen = peft_model.generate(**batch.model_inputs(), max_new_tokens=4, do_sample=False, num_beams=1,
                                  pad_token_id=processor.tokenizer.pad_token_id,
                                  eos_token_id=processor.tokenizer.eos_token_id)
        answer = processor.tokenizer.batch_decode(gen[:, batch.input_ids.shape[1]:], skip_special_tokens=True)[0]
        assert predict(trained_state, micro_model_dir, [(image, question)], max_new_tokens=4, slot=k) == [answer.strip()]


def test_export_refuses_a_used_folder_and_predict_an_unknown_slot(trained_state, micro_model_dir, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ConfigError, match="is not empty"):
        export_state(trained_state, micro_model_dir, tmp_path / "used")
    with pytest.raises(ConfigError, match="slot 99 is not in this state"):
        predict(trained_state, micro_model_dir, [(Image.new("RGB", (32, 32)), "q")], slot=99)
