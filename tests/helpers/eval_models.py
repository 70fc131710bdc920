"""Tiny tokenizer and model shared by the eval, bakeoff and report tests (trained in seconds on CPU)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from foundry.data.tokenizer import Tokenizer
from foundry.model.llama import Llama, config_from_preset

# Four facts the trained model memorises: context -> the one true ending.
FACTS = [
    ("the red fox eats", " apples in the garden."),
    ("the blue bird sings", " songs at the window."),
    ("the green frog jumps", " over the old stone."),
    ("the tall man reads", " books by the fire."),
]
FILLER = ("a small grey cat sleeps on the warm mat while rain falls on the roof and wind moves the trees "
          "near the river where children play with boats made of paper and string").split()


@functools.lru_cache(maxsize=None)
def tokenizer() -> Tokenizer:
    texts = [c + e for c, e in FACTS] * 20 + [" ".join(FILLER)] * 20
    return Tokenizer.train(texts, vocab_size=300, min_frequency=2)


def fresh_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(config_from_preset("test", vocab_size=tokenizer().vocab_size, max_seq_len=64))


@functools.lru_cache(maxsize=None)
def trained_model(steps: int = 80) -> Llama:
    """A model that has memorised FACTS (each read after <|endoftext|>, ended by <|endoftext|>)."""
    tok = tokenizer()
    model = fresh_model(0)
    rows = [[tok.eos_id] + tok.encode(c + e) + [tok.eos_id] for c, e in FACTS]
    width = max(map(len, rows))
    x = torch.zeros(len(rows), width - 1, dtype=torch.long)
    y = torch.full((len(rows), width - 1), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r) - 1] = torch.tensor(r[:-1])
        y[i, :len(r) - 1] = torch.tensor(r[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a loaded 2-core machine
    try:
        for _ in range(steps):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model
