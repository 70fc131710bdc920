"""Sampling text from a model: greedy or temperature / top-k / top-p, with or without the KV cache.

`generate` yields token ids one at a time so callers (terminal, chat) can stream; it runs the one batched
decoder (`foundry.model.decoding`) with one sequence, and `generate_many` runs it with many. Without the
cache, every token recomputes the whole context: the plain reference the cached engine is tested against
(cached and uncached decoding compute the same logits up to float rounding and, with a seed, draw the
same tokens).
"""

from __future__ import annotations

import sys
from typing import Iterator

import torch

from foundry.model.decoding import BatchDecoder, Sampling, Sequence, fit_prompt
from foundry.model.sampling import sample_next
from foundry.serve.engine import generate_many

__all__ = ["generate", "generate_many", "generate_text", "sample_next", "chat_prompt_ids", "stream_text"]


def generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int = 128, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: list[int] | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids after `prompt_ids`.

    Stops before yielding any of `stop_ids` (default the tokenizer's `stop_ids`: end of text, end of turn and the model's own stop tokens) and at the model's
    context limit; a prompt longer than the context keeps its last tokens.
    """
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, None if stop_ids is None else tuple(stop_ids))
    sampling.check()
    was_training = model.training
    model.eval()
    try:
        if use_cache:
            yield from _generate_cached(model, tokenizer, prompt_ids, sampling)
        else:
            yield from _generate_uncached(model, tokenizer, prompt_ids, sampling)
    finally:
        model.train(was_training)


def _generate_cached(model, tokenizer, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
    prompt_ids = fit_prompt(prompt_ids, model.config.max_seq_len, tokenizer.eos_id)
    ready: list[int] = []
    seq = Sequence(prompt_ids, sampling, on_token=lambda _seq, token: ready.append(token))
    decoder = BatchDecoder(model, tokenizer, max_batch=1, max_len=len(prompt_ids) + sampling.max_tokens)
    decoder.add(seq)
    while True:
        yield from ready
        ready.clear()
        if seq.finish_reason is not None:
            if seq.error is not None:  # the decoder ended it alone (its fault boundary); here the caller hears it
                raise seq.error
            return
        decoder.step()


@torch.inference_mode()
def _generate_uncached(model, tokenizer, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
    context = model.config.max_seq_len
    prompt_ids = fit_prompt(prompt_ids, context, tokenizer.eos_id)
    stop = set(tokenizer.stop_ids if sampling.stop_ids is None else sampling.stop_ids)
    device = next(model.parameters()).device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(sampling.seed)
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    for _ in range(min(sampling.max_tokens, context - len(prompt_ids))):
        logits = model(ids)  # (1, T, V)
        token = sample_next(logits[0, -1], sampling.temperature, sampling.top_k, sampling.top_p, generator)
        if token in stop:
            return
        yield token
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)


def generate_text(model, tokenizer, prompt: str, **kw) -> str:
    """The completion of `prompt` as text (the prompt itself is not included)."""
    return tokenizer.decode(list(generate(model, tokenizer, tokenizer.encode(prompt), **kw)))


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A one-turn chat prompt, rendered by the tokenizer's chat template with its generation prompt."""
    from foundry.data.chat import render_chat

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


