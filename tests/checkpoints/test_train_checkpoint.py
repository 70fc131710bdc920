"""Checkpoints: round trip, tied weights stored once, weights_only state, damaged ones skipped, shape check."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from foundry.errors import CheckpointError
from foundry.model.llama import Llama, config_from_preset
from foundry.checkpoints import (
    latest_checkpoint, load_model, load_train_state, load_weights, rng_state, save_checkpoint, set_rng_state,
)

torch.set_num_threads(1)


def model(**kw):
    torch.manual_seed(0)
    return Llama(config_from_preset("test", vocab_size=280, **kw))


def test_round_trip_gives_identical_logits_and_tokenizer(tmp_path, tokenizer):
    m = model()
    path = save_checkpoint(tmp_path / "ckpt", m, tokenizer, meta={"step": 7, "stage": "pretrain"})
    assert not (tmp_path / "ckpt.tmp").exists()
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: stored once
    loaded, tok = load_model(path)
    ids = torch.randint(0, 280, (2, 12))
    torch.testing.assert_close(loaded(ids), m(ids), rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert tok.sha256 == tokenizer.sha256
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and set(meta["sha256"]) >= {"model.safetensors", "model_config.json", "tokenizer.json"}


def test_untied_model_stores_lm_head(tmp_path, tokenizer):
    m = model(tie_embeddings=False)
    save_checkpoint(tmp_path / "c", m, tokenizer)
    loaded, _ = load_model(tmp_path / "c")
    torch.testing.assert_close(loaded.lm_head.weight, m.lm_head.weight, rtol=0, atol=0)


def test_train_state_loads_with_weights_only_and_restores_rng(tmp_path, tokenizer):
    import random

    import numpy as np

    m = model()
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randint(0, 280, (1, 8))).sum().backward()
    opt.step()
    state = {"step": 3, "optimizer": opt.state_dict(), "rng": rng_state(), "data": {"epoch": 0, "cursor": 5}}
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_checkpoint(tmp_path / "c", m, tokenizer, train_state=state)
    loaded = load_train_state(tmp_path / "c")  # torch.load(weights_only=True) inside
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert loaded["data"] == {"epoch": 0, "cursor": 5} and loaded["step"] == 3
    opt2 = torch.optim.AdamW(model().parameters())
    opt2.load_state_dict(loaded["optimizer"])


def test_latest_checkpoint_skips_damaged_and_incomplete(tmp_path, tokenizer, capsys):
    m = model()
    run = tmp_path / "run"
    for step in (2, 4, 6):
        save_checkpoint(run / "checkpoints" / f"step_{step:07d}", m, tokenizer, meta={"step": step})
    (run / "checkpoints" / "step_0000008.tmp").mkdir()  # a write killed half-way
    with open(run / "checkpoints" / "step_0000006" / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    assert latest_checkpoint(run).name == "step_0000004"
    assert "step_0000006: skipping damaged checkpoint" in capsys.readouterr().err
    _, _ = load_model(run)  # a run directory resolves to its newest valid checkpoint


def test_shape_mismatch_is_a_one_line_checkpoint_error(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "c", model(), tokenizer)
    with pytest.raises(CheckpointError, match=r"model shape differs from the recipe \(n_layer 2 vs 3\)") as err:
        load_weights(model(n_layer=3), tmp_path / "c")
    assert "\n" not in str(err.value)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nowhere")
