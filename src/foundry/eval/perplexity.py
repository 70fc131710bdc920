"""Perplexity and bits per byte of a model on a dataset's validation split, or on any text.

A split is scored as one token stream (documents each followed by `<|endoftext|>`, as in the shards)
cut into consecutive windows of `block_size + 1` tokens that overlap by one token, so every token
after the first is predicted exactly once, with the context reset at each window boundary.

Bits per byte = total nats / ln 2 / UTF-8 bytes of the scored text. It compares models with different
tokenizers fairly (perplexity per token does not). When only the first `max_tokens` of a split are
scored, the split's bytes are scaled by the scored share of its tokens.

Token source: the dataset's packed shards of this model's tokenizer (`DIR/tokens/<sha256[:16]>`, or the
earlier single `DIR/tokens`) when it has them, else `DIR/{split}.jsonl` tokenised on the fly (so any model
can be scored on any dataset).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from foundry.errors import DataError
from foundry.lm_metrics import IGNORE_INDEX, lm_scores


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def stream_loss(model, tokens, block_size: int, batch_size: int = 8, blocks: list | None = None) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods in nats, number of predicted tokens) over `tokens`.

    `blocks`, when given, receives one `(nats, tokens)` pair per window, in order: the per-window scores
    that paired comparisons of two models on the same text need (`foundry.eval.findings`).
    """
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n = int(tokens.numel())
    if n < 2:
        return 0.0, 0
    device = model_device(model)
    starts = list(range(0, n - 1, block_size))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = [tokens[s:s + block_size + 1] for s in starts[i:i + batch_size]]
        width = max(len(c) for c in chunk)
        x = torch.zeros(len(chunk), width - 1, dtype=torch.long)
        y = torch.full((len(chunk), width - 1), IGNORE_INDEX, dtype=torch.long)
        for row, c in enumerate(chunk):
            x[row, :len(c) - 1] = c[:-1]
            y[row, :len(c) - 1] = c[1:]
        logits = model(x.to(device)).float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=IGNORE_INDEX,
                              reduction="none").view(len(chunk), -1)
        total += nll.sum().item()
        count += int((y != IGNORE_INDEX).sum())
        if blocks is not None:
            blocks.extend(zip(nll.sum(dim=1).tolist(), (y != IGNORE_INDEX).sum(dim=1).tolist()))
    return total, count


def _summary(nats: float, count: int, nbytes: float, blocks: list | None = None) -> dict:
    """The one computation (`foundry.lm_metrics`) under its one set of names: loss, ppl, bpb."""
    scores = lm_scores(nats, count, nbytes)
    out = {"loss": scores["loss"], "ppl": scores["ppl"], "bpb": scores.get("bpb", float("nan")),
           "tokens": count, "bytes": int(round(nbytes))}
    if blocks and nbytes:
        # Each window's bits per byte, its bytes taken at the split's average bytes per token.
        bytes_per_token = nbytes / count
        out["block_bpb"] = [round(lm_scores(n, t, t * bytes_per_token)["bpb"], 6) for n, t in blocks if t]
    return out


def text_perplexity(model, tokenizer, text: str, block_size: int | None = None) -> dict:
    """Perplexity of one text, read as a document (after `<|endoftext|>`)."""
    ids = [tokenizer.eos_id] + tokenizer.encode(text)
    nats, count = stream_loss(model, ids, block_size or model.config.max_seq_len)
    return _summary(nats, count, len(text.encode("utf-8")))


def dataset_perplexity(model, tokenizer, dataset_dir: str | Path, split: str = "val", max_tokens: int | None = None,
                       block_size: int | None = None, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte on `dataset_dir`'s `split` (see module docstring)."""
    dataset_dir = Path(dataset_dir)
    block_size = block_size or model.config.max_seq_len
    from foundry.data.shards import TokenStream, find_token_dir

    tokens_dir = find_token_dir(dataset_dir, tokenizer)
    index_file = tokens_dir / "index.json" if tokens_dir is not None else None
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file is not None else None
    if index and split in index.get("splits", {}):
        stream = TokenStream(tokens_dir, split)
        n = stream.num_tokens if max_tokens is None else min(stream.num_tokens, max_tokens)
        if n < 2:
            raise DataError(f"{dataset_dir}: split '{split}' has no tokens to score")
        tokens = np.concatenate([[tokenizer.eos_id], stream.read(0, n)])
        blocks: list = []
        nats, count = stream_loss(model, tokens, block_size, batch_size, blocks)
        nbytes = stream.info["bytes"] * n / stream.num_tokens
        return {**_summary(nats, count, nbytes, blocks), "source": "shards"}
    from foundry.data.tokenizer import iter_split_texts

    texts = list(iter_split_texts(dataset_dir, split))
    if not texts:
        raise DataError(f"{dataset_dir / f'{split}.jsonl'}: the '{split}' split is empty; nothing to score")
    tokens, nbytes = [tokenizer.eos_id], 0
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        tokens += ids + [tokenizer.eos_id]
        nbytes += len(text.encode("utf-8"))
        if max_tokens is not None and len(tokens) > max_tokens:
            break
    if max_tokens is not None and len(tokens) > max_tokens + 1:
        # Scale the bytes of the documents read by the share of their tokens that is scored.
        nbytes *= max_tokens / (len(tokens) - 1)
        tokens = tokens[:max_tokens + 1]
    blocks: list = []
    nats, count = stream_loss(model, tokens, block_size, batch_size, blocks)
    return {**_summary(nats, count, nbytes, blocks), "source": f"{split}.jsonl"}
