"""Activation checkpointing: the same loss and gradients, and far fewer tensors kept for backward."""

import copy

import torch

from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import apply_lora
from foundry.train.checkpointing import checkpoint_blocks, is_checkpointed
from foundry.train.objectives import NextTokenObjective


def _batch(V, B=2, T=32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    return {"input_ids": ids, "targets": torch.roll(ids, -1, 1)}


def _saved_bytes(model, batch) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Loss, gradients and the bytes autograd holds for backward at the end of the forward."""
    kept = {}

    def pack(t):
        kept[id(t)] = t.numel() * t.element_size() if t.layout == torch.strided else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = NextTokenObjective().loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params), sum(kept.values())


def test_same_loss_and_gradients_with_much_less_kept():
    torch.manual_seed(0)
    plain = Llama(config_from_preset("test", n_layer=4))
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_blocks(checkpointed) == 4
    batch = _batch(plain.config.vocab_size)
    loss_a, grads_a, kept_a = _saved_bytes(plain, batch)
    loss_b, grads_b, kept_b = _saved_bytes(checkpointed, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert kept_b < 0.3 * kept_a, (kept_a, kept_b)  # the measured saving: blocks keep only their inputs


def test_lora_dropout_recomputed_with_the_same_mask_and_deepcopy_rebinds():
    torch.manual_seed(0)
    model = Llama(config_from_preset("test", n_layer=2))
    apply_lora(model, 4, 8.0, dropout=0.3)
    for m in model.modules():
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    other = copy.deepcopy(model)
    checkpoint_blocks(other)
    twin = copy.deepcopy(other)
    assert all(is_checkpointed(b) for b in twin.model.layers)
    assert twin.model.layers[0].forward.__self__ is twin.model.layers[0]  # not the original's block
    batch = _batch(model.config.vocab_size)
    torch.manual_seed(5)
    loss_a, grads_a, _ = _saved_bytes(model, batch)
    torch.manual_seed(5)
    loss_b, grads_b, _ = _saved_bytes(other, batch)
    torch.testing.assert_close(loss_b, loss_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_train_config_switch_gives_the_same_run(tmp_path):
    from tests.helpers.loop_fixtures import FixedBatches, cfg, random_batch, tiny_model

    from foundry.train.loop import train
    from foundry.utils.io import read_metrics

    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(gen, 4, masked_fraction=0.3) for _ in range(3)]
    losses = {}
    for on in (False, True):
        model = tiny_model()
        train(model, NextTokenObjective(), FixedBatches(batches), cfg(max_steps=3, activation_checkpointing=on),
              tmp_path / str(on), None)
        assert all(is_checkpointed(b) for b in model.model.layers) == on
        losses[on] = [r["loss"] for r in read_metrics(tmp_path / str(on)) if "loss" in r]
    assert len(losses[True]) == 3
    for a, b in zip(losses[False], losses[True]):
        assert abs(a - b) < 1e-5
