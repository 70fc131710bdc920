"""Sampling a next token from logits, shared by the serving engine and GRPO's sampler.

Numerically safe at every setting a request can carry: a temperature below `MIN_TEMPERATURE` is greedy,
logits are shifted by their maximum before scaling (no overflow at any temperature), and top-p always keeps
the most likely token, so no request can turn a row's probabilities into inf or nan.
"""

from __future__ import annotations

import torch

MIN_TEMPERATURE = 1e-3  # below this a temperature is greedy: logits / T would overflow float32 near 1e-38


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> int:
    """One token id from logits (V,): argmax when temperature is 0 (or below `MIN_TEMPERATURE`), else a
    filtered softmax sample."""
    if temperature < MIN_TEMPERATURE:
        return int(torch.argmax(logits))
    logits = logits.float()
    logits = (logits - logits.max()) / temperature  # the best token at 0: no overflow for any temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", sec. 3.1):
        # keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already >= p
        drop[0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32 kept none)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_rows(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None):
    """One token per row of logits (B, V): argmax at temperature 0 (or below the engine's MIN_TEMPERATURE),
    else a (top-k filtered) softmax draw, as numerically safe as the serving engine's."""
    if temperature < MIN_TEMPERATURE:
        return logits.argmax(-1)
    logits = logits.float()
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature  # no overflow at any temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
