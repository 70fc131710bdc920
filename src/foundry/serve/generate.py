"""Sampling text from a model: greedy or temperature / top-k / top-p, with or without the KV cache.

`generate` yields token ids one at a time so callers (terminal, chat, HTTP server) can stream. The
KV cache is an optimisation only: cached and uncached decoding compute the same logits (up to float
rounding) and, with a seed, draw the same tokens.
"""

from __future__ import annotations

import sys
from typing import Iterator

import torch

from foundry.errors import ConfigError


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> int:
    """One token id from logits (V,): argmax when temperature == 0, else a filtered softmax sample."""
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", sec. 3.1):
        # keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already >= p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int = 128, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: list[int] | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids after `prompt_ids`.

    Stops before yielding any of `stop_ids` (default `<|endoftext|>` and `<|end|>`) and at the model's
    context limit; a prompt longer than the context keeps its last tokens.
    """
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # what torch.Generator.manual_seed accepts
        raise ConfigError(f"seed must fit in 64 bits, got {seed}")
    if stop_ids is None:
        stop_ids = [tokenizer.eos_id, tokenizer.eot_id]
    stop = set(stop_ids)
    context = model.config.max_seq_len
    prompt_ids = list(prompt_ids)[-(context - 1):] or [tokenizer.eos_id]  # an empty prompt starts a document
    budget = min(max_new_tokens, context - len(prompt_ids))
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([prompt_ids], device=device)  # (1, T)
        cache = model.new_kv_cache(1, len(prompt_ids) + budget) if use_cache else None
        next_input = ids
        for _ in range(budget):
            logits = model(next_input if use_cache else ids, kv_cache=cache)  # (1, T or 1, V)
            token = sample_next(logits[0, -1], temperature, top_k, top_p, generator)
            if token in stop:
                return
            yield token
            new = torch.tensor([[token]], device=device)
            ids = torch.cat([ids, new], dim=1)
            next_input = new
    finally:
        model.train(was_training)


def generate_text(model, tokenizer, prompt: str, **kw) -> str:
    """The completion of `prompt` as text (the prompt itself is not included)."""
    return tokenizer.decode(list(generate(model, tokenizer, tokenizer.encode(prompt), **kw)))


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A one-turn chat prompt ending in the generation marker `<|assistant|>`."""
    try:
        from foundry.data.chat import render_chat
    except ImportError:
        return tokenizer.encode(f"<|user|>{prompt}<|end|><|assistant|>")
    ids, _ = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids)


def stream_text(tokenizer, tokens: Iterator[int], out=None) -> str:
    """Print text as tokens arrive; a multi-byte character split across tokens is held back until whole."""
    out = out if out is not None else sys.stdout
    ids: list[int] = []
    printed = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            continue
        out.write(text[len(printed):])
        out.flush()
        printed = text
    text = tokenizer.decode(ids)
    out.write(text[len(printed):] + "\n")
    out.flush()
    return text


