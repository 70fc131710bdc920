"""LoRA: only adapters train, merged logits equal unmerged, bad targets fail in one line."""

from __future__ import annotations

import pytest
import torch

from foundry.errors import ConfigError
from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import LoRALinear, apply_lora, lora_parameter_count, merge_lora


def _model():
    torch.manual_seed(0)
    return Llama(config_from_preset("test"))


def test_wraps_targets_and_freezes_the_rest():
    model = _model()
    names = apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    assert len(names) == 2 * model.config.n_layer
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    n_train, n_total = lora_parameter_count(model)
    assert 0 < n_train < n_total / 10


def test_starts_equal_and_merge_is_exact():
    model = _model()
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        before = model(x)
    apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0 at the start
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(x).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        trained = model(x)
    assert not torch.allclose(trained, before)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(_model().state_dict())  # a normal foundry model again
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=1e-5)


def test_unknown_target_is_one_line_error():
    with pytest.raises(ConfigError) as e:
        apply_lora(_model(), targets=["q_proj", "qkv"])
    assert "'qkv' not found" in str(e.value) and "q_proj" in str(e.value) and "\n" not in str(e.value)


def test_tied_lm_head_refused():
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(_model(), targets=["lm_head"])
