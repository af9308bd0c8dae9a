from __future__ import annotations

import numpy as np
import pytest

from secure_fcit.errors import ModelError
from secure_fcit.model.encoder import load_encoder, mean_token


def test_embedded_encoder_gives_unit_rows(micro_model_dir):
    enc = load_encoder("embedded", micro_model_dir)
    v = enc.encode(["What shape is shown?", "Read the word in the image.", "What shape is shown?"])
    assert v.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(v[0], v[2], rtol=1e-6)
    t = mean_token(enc, ["What shape is shown?", "Name the shape."])
    assert t.shape == (enc.dim,) and abs(np.linalg.norm(t) - 1) < 1e-5


def test_encoder_errors_name_the_problem(tmp_path, micro_model_dir):
    with pytest.raises(ModelError, match="needs the LLaVA model directory"):
        load_encoder("embedded")
    with pytest.raises(ModelError, match="no config.json"):
        load_encoder(str(tmp_path))
    with pytest.raises(ModelError, match="at least one instruction"):
        mean_token(load_encoder("embedded", micro_model_dir), [])


def test_the_embedding_layer_shortcut_equals_the_models_hidden_state_zero(micro_model_dir):
    """Layer 0 is read from the input embedding without running the layers: same numbers, bit for bit."""
    import torch

    enc = load_encoder("embedded", micro_model_dir)
    assert enc._embedding_only  # the probe at load agreed
    texts = ["What shape is shown?", "Read the word in the image, please.", "Count"]
    shortcut = enc._pooled(texts)
    batch = enc.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states[0]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    full = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_array_equal(shortcut, full)
