"""The chunked projection + cross-entropy gives the full computation's loss and gradients (fp32, 1e-5)."""

import pytest
import torch
import torch.nn.functional as F

from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import apply_lora
from foundry.train.chunked_ce import linear_cross_entropy, linear_token_logps
from foundry.train.objectives import NextTokenObjective


def _setup(n=37, d=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    head = torch.nn.Linear(d, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d, generator=g))
    targets = torch.randint(0, V, (n,), generator=g)
    targets[::5] = -100
    return hidden, head, targets


@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_sum_matches_full_loss_and_gradients(chunk):
    hidden, head, targets = _setup()
    full = F.cross_entropy(head(hidden), targets, ignore_index=-100, reduction="sum")
    gh, gw = torch.autograd.grad(full * 0.37, [hidden, head.weight])
    chunked = linear_cross_entropy(hidden, targets, head, [head.weight], chunk_size=chunk)
    ch, cw = torch.autograd.grad(chunked * 0.37, [hidden, head.weight])
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ch, gh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cw, gw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train_head", [True, False])
def test_token_logps_match_full_with_per_token_weights(train_head):
    hidden, head, targets = _setup()
    keep = targets != -100
    t = targets[keep]
    head.weight.requires_grad_(train_head)
    weights = torch.linspace(-1, 2, int(keep.sum()))  # a downstream loss that weighs each token differently
    wrt = [hidden] + ([head.weight] if train_head else [])
    full = -F.cross_entropy(head(hidden[keep]), t, reduction="none")
    expected = torch.autograd.grad((full * weights).sum(), wrt)
    chunked = linear_token_logps(hidden[keep], t, head, [head.weight] if train_head else [], chunk_size=7)
    got = torch.autograd.grad((chunked * weights).sum(), wrt)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _lm_batch(V, B=2, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[:, :5] = -100  # a prompt: no loss there
    return {"input_ids": ids, "targets": targets}


@pytest.mark.parametrize("lora", [False, True])
def test_objective_equals_full_logits_on_a_model(lora):
    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))  # tied embeddings: the projection's gradient joins the embedding's
    if lora:
        apply_lora(model, 4, 8.0)
        for m in model.modules():
            if hasattr(m, "lora_B"):
                torch.nn.init.normal_(m.lora_B, std=0.02)
    batch = _lm_batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(batch["input_ids"])
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), reduction="sum")
    expected = torch.autograd.grad(full, params)
    loss, _ = NextTokenObjective().loss(model, batch)
    got = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_full_logits_tensor_is_built(monkeypatch):
    """The lm_head only ever sees a chunk of the scored tokens, never (B, T) positions at once."""
    from foundry.train import chunked_ce

    monkeypatch.setattr(chunked_ce, "DEFAULT_CHUNK", 4)
    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))
    rows = []
    model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    batch = _lm_batch(model.config.vocab_size)
    n = int((batch["targets"] != -100).sum())
    loss, _ = NextTokenObjective().loss(model, batch)
    loss.backward()
    assert sum(rows) == n and max(rows) <= 4  # scored positions only, chunk by chunk, none recomputed


def test_chunks_shrink_for_large_vocabularies():
    from foundry.train.chunked_ce import chunk_rows

    assert chunk_rows(512) == 1024  # small vocabularies: the token cap
    assert chunk_rows(49152) == 341 and chunk_rows(128256) == 130  # at most 64 MiB of fp32 logits per chunk
