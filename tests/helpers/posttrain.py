"""Shared tiny fixtures for the post-training tests (chat, SFT, DPO, LoRA): a tokenizer trained here,
with foundry's special tokens, and tiny chat / preference sets (checked in tests/test_helpers.py)."""

from __future__ import annotations

from pathlib import Path


CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "Which book follows Ruth? The answer is 1 Samuel.",
    "Quote Genesis 1:3 please. Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog, 12345 times.",
    "Answer briefly and politely; say yes or no.",
] * 20


def tiny_tokenizer(vocab_size: int = 400):
    from foundry.data.tokenizer import Tokenizer

    return Tokenizer.train(CORPUS, vocab_size=vocab_size, min_frequency=2)


BOOKS = ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
         "2 Samuel", "1 Kings", "2 Kings", "Ezra", "Esther"]


def book_chats(system: bool = False) -> list[dict]:
    """'Which book follows X?' -> 'Y', one conversation per adjacent pair of BOOKS."""
    chats = []
    for a, b in zip(BOOKS, BOOKS[1:]):
        msgs = [{"role": "system", "content": "Answer briefly."}] if system else []
        msgs += [{"role": "user", "content": f"Which book follows {a}?"}, {"role": "assistant", "content": b}]
        chats.append({"messages": msgs})
    return chats


def base_checkpoint(path: Path, tok, seed: int = 0, **overrides) -> Path:
    """A randomly initialised 'test'-preset model saved as a foundry checkpoint."""
    import torch

    from foundry.model.llama import Llama, config_from_preset
    from foundry.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    model = Llama(config_from_preset("test", **{"max_seq_len": 128, **overrides}))
    return save_checkpoint(path, model, tok, None, {"step": 0, "stage": "test"})
