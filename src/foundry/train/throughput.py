"""What a step is worth, counted from its batch: real (non-padding) and supervised tokens for tokens/s, and
the FLOPs it needs for MFU."""

from __future__ import annotations

import torch

from foundry.lm_metrics import IGNORE_INDEX


def _sequence_lengths(batch: dict, key: str, pad_id: int | None) -> list[int]:
    """Lengths of the sequences in batch[key] (B, T): packed segments, else each row up to its padding."""
    ids = batch[key]
    segments = batch.get(key.removesuffix("input_ids") + "segment_ids")
    if isinstance(segments, torch.Tensor):
        counts = torch.stack([torch.bincount(row, minlength=int(segments.max()) + 1) for row in segments])
        return [int(n) for n in counts[:, 1:].flatten() if n > 0]  # segment 0 is padding
    if pad_id is None or ids.dim() != 2:
        return [int(ids.shape[-1])] * (int(ids.numel()) // max(int(ids.shape[-1]), 1))
    not_pad = ids != pad_id  # (B, T); a row's padding is the run after its last non-pad token
    T = ids.shape[1]
    last = torch.where(not_pad.any(1), T - not_pad.flip(1).int().argmax(1), torch.zeros(ids.shape[0], dtype=torch.long))
    return [int(n) for n in last]


def batch_tokens(batch: dict, pad_id: int | None = None) -> tuple[int, int]:
    """(real tokens, supervised tokens) of a batch, for tokens/s, whatever the objective's units are.

    Real tokens are the non-padding ones (a pad id inside a text still counts; without a pad id, all);
    supervised ones have targets != -100.
    """
    real, _ = token_counts(batch, pad_id)
    targets = batch.get("targets")
    supervised = int((targets != IGNORE_INDEX).sum()) if isinstance(targets, torch.Tensor) else 0
    return real, supervised


def token_counts(batch: dict, pad_id: int | None) -> tuple[int, int]:
    """(real tokens, sum of squared sequence lengths) over every `*input_ids` tensor of the batch."""
    real = squares = 0
    for key, ids in batch.items():
        if key.endswith("input_ids") and isinstance(ids, torch.Tensor):
            lengths = _sequence_lengths(batch, key, pad_id)
            real += sum(lengths)
            squares += sum(n * n for n in lengths)
    return real, squares


class FlopCounter:
    """The FLOPs a training step needs (PaLM appendix B, counted for what this step really does), for MFU.

    Per real token: 2 x body matmul parameters forward, 2 x backward to the inputs, and 2 x the body
    parameters that TRAIN for their weight gradients (LoRA freezes most: 4N rather than 6N); attention
    6 x layers x heads x head_dim x length per token of each sequence (causal: half the scores); the
    vocabulary projection only at supervised positions (the loss's chunked logits): 4 x V x d there, 6 when
    the projection trains. Recomputation (activation checkpointing) is not useful work and is not counted.
    Models other than the Llama fall back to `config.flops_per_token(block_size)` per token.
    """

    def __init__(self, base: torch.nn.Module, block_size: int):
        cfg = getattr(base, "config", None)
        head = getattr(base, "lm_head", None)
        self.per_token_fallback = 0.0
        self.llama = isinstance(head, torch.nn.Module) and hasattr(cfg, "n_head") and hasattr(cfg, "vocab_size")
        if not self.llama:
            self.per_token_fallback = cfg.flops_per_token(block_size) if hasattr(cfg, "flops_per_token") else 0.0
            return
        shared = {id(p) for p in head.parameters()}
        embed = getattr(getattr(base, "model", None), "embed_tokens", None)
        if isinstance(embed, torch.nn.Module):
            shared |= {id(p) for p in embed.parameters()}
        self.body = cfg.num_params(include_embedding=False)
        self.trainable_body = sum(p.numel() for p in base.parameters() if p.requires_grad and id(p) not in shared)
        self.head = cfg.vocab_size * cfg.n_embd
        self.head_trains = any(p.requires_grad for p in head.parameters())
        self.attention = 6 * cfg.n_layer * cfg.n_head * cfg.head_dim

    @property
    def enabled(self) -> bool:
        return self.llama or self.per_token_fallback > 0

    def __call__(self, batch: dict, pad_id: int | None) -> float:
        real, squares = token_counts(batch, pad_id)
        if not self.llama:
            return real * self.per_token_fallback
        targets = batch.get("targets")
        scored = int((targets != IGNORE_INDEX).sum()) if isinstance(targets, torch.Tensor) else real
        return (real * (4 * self.body + 2 * min(self.trainable_body, self.body)) + self.attention * squares
                + scored * self.head * (6 if self.head_trains else 4))
