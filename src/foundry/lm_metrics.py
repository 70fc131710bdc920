"""Language-modelling numbers, computed one way everywhere: loss, perplexity, bits per byte.

Used by the training loop's validation (`val/loss`, `val/ppl`, `val/bpb`) and by `foundry eval`'s
perplexity, so the two can be compared. Bits per byte = total nats / ln 2 / UTF-8 bytes of the scored
text: unlike the per-token loss it compares models with different tokenizers fairly.
"""

from __future__ import annotations

import math

IGNORE_INDEX = -100  # a target equal to this is not predicted (prompt tokens in SFT, padding)
MAX_LOSS_FOR_PPL = 50.0  # exp(50) ~ 5e21: a diverged model's perplexity stays a finite number


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOSS_FOR_PPL))


def lm_scores(total_nats: float, tokens: int, nbytes: float | None = None) -> dict:
    """{"loss" (nats per token), "ppl", "bpb" (when the bytes are known)} of `tokens` scored tokens."""
    if tokens == 0:
        return {"loss": float("nan"), "ppl": float("nan"), "bpb": float("nan")}
    loss = total_nats / tokens
    out = {"loss": loss, "ppl": perplexity(loss)}
    if nbytes:
        out["bpb"] = total_nats / math.log(2) / nbytes
    return out
