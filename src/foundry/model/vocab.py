"""Growing a decoder's vocabulary for tokens added to its tokenizer (foundry's chat markers on a base model).

New rows of the embedding (and of an untied output projection) start as the mean of the rows the model
was trained with, so the new tokens begin as an average token rather than noise whose logits could
dominate (Hewitt, "Initializing new word embeddings for pretrained language models", 2021). A token whose id
falls in a row the embedding already has (vocabularies padded to a multiple of 64 or 128) keeps that row,
so every logit of the imported model stays exactly as it was.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def add_token_rows(model, token_ids: list[int], trained_rows: int) -> list[int]:
    """Make room for `token_ids`, growing `vocab_size` when an id lies past it; the grown rows are set to the
    mean of the first `trained_rows` rows. Returns the ids that got new rows."""
    config = model.config
    new = [i for i in token_ids if i >= config.vocab_size]
    if not new:
        return []
    embed, size = model.model.embed_tokens, max(new) + 1
    grown = nn.Embedding(size, embed.weight.shape[1], device=embed.weight.device, dtype=embed.weight.dtype)
    grown.weight[:config.vocab_size] = embed.weight
    model.model.embed_tokens = grown
    if config.tie_embeddings:
        model.lm_head.weight = grown.weight
    else:
        head = model.lm_head
        bigger = nn.Linear(head.in_features, size, bias=False, device=head.weight.device, dtype=head.weight.dtype)
        bigger.weight[:config.vocab_size] = head.weight
        model.lm_head = bigger
    config.vocab_size = size
    ids = torch.tensor(new)
    model.model.embed_tokens.weight[ids] = model.model.embed_tokens.weight[:trained_rows].mean(0)
    if not config.tie_embeddings:
        model.lm_head.weight[ids] = model.lm_head.weight[:trained_rows].mean(0)
    return new
