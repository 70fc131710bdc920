"""Sequence classifiers on top of either foundry model, each the layout of a `transformers` class.

- `BertClassifier`: the encoder with BERT's pooler and a linear head, `BertForSequenceClassification`'s
  parameter names. Pooling `first`: tanh(dense(h[first token])) (BERT's [CLS] pooling; the sequence starts
  with the tokenizer's `<|bos|>`), exportable; `mean`: the pooler over the mean of non-padding tokens.
- `LlamaClassifier`: the decoder with a bias-free `score` head on the last non-padding token (a causal
  model sees the whole text only there), `LlamaForSequenceClassification`'s names and pooling rule.

Label names travel in the config (`labels`), so a checkpoint says what its outputs mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from foundry.errors import ConfigError
from foundry.model.encoder import BertBackbone, EncoderConfig, init_bert_weights
from foundry.model.llama import Llama, LlamaConfig

POOLINGS = {"bert": ("first", "mean"), "llama": ("last",)}


@dataclass
class ClassifierConfig:
    architecture: str = "classifier"
    base: dict = field(default_factory=dict)  # the encoder's or decoder's own config
    labels: list = field(default_factory=list)
    pooling: str = "first"

    def __post_init__(self):
        self.base_config = base_config_from_dict(self.base)
        kind = "bert" if isinstance(self.base_config, EncoderConfig) else "llama"
        if self.pooling not in POOLINGS[kind]:
            raise ConfigError(f"classifier: pooling '{self.pooling}' does not fit a {kind} model "
                              f"(choose {' or '.join(POOLINGS[kind])})")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"classifier: needs at least two distinct labels, got {self.labels}")

    @property
    def kind(self) -> str:
        return "bert" if isinstance(self.base_config, EncoderConfig) else "llama"

    @property
    def max_seq_len(self) -> int:
        return self.base_config.max_seq_len

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, "base": dict(self.base), "labels": list(self.labels),
                "pooling": self.pooling}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassifierConfig":
        unknown = set(data) - {"architecture", "base", "labels", "pooling"}
        if unknown:
            raise ConfigError(f"classifier config: unknown keys {sorted(unknown)}")
        return cls(**data)

    def flops_per_token(self, seq_len: int) -> float:
        return self.base_config.flops_per_token(seq_len)


def base_config_from_dict(data: dict):
    if data.get("architecture") == "bert":
        return EncoderConfig.from_dict(data)
    return LlamaConfig.from_dict(data)


class BertClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.bert = BertBackbone(config.base_config, pooler=True)
        self.classifier = nn.Linear(config.base_config.n_embd, config.num_labels)
        init_bert_weights(self, config.base_config.init_std)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Class logits (B, num_labels); `attention_mask` (B, T) is 1 on real tokens (right padding)."""
        h = self.bert(input_ids, attention_mask=attention_mask)  # (B, T, d)
        if self.config.pooling == "first":
            pooled = h[:, 0]
        else:
            keep = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).to(h.dtype)
            pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        return self.classifier(self.bert.pooler(pooled))


class LlamaClassifier(Llama):
    """The decoder without its LM head; `score` reads the hidden state of the last non-padding token."""

    def __init__(self, config: ClassifierConfig):
        super().__init__(config.base_config)
        del self.lm_head
        self.score = nn.Linear(config.base_config.n_embd, config.num_labels, bias=False)
        nn.init.normal_(self.score.weight, 0.0, config.base_config.init_std)
        self.config = config

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        h = Llama.forward(self, input_ids, return_hidden=True)  # (B, T, d); causal, so padding on the right is unseen
        B, T = input_ids.shape
        lengths = attention_mask.long().sum(1) if attention_mask is not None else torch.full((B,), T)
        last = (lengths - 1).clamp(min=0).to(h.device)
        return self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)


def Classifier(config: ClassifierConfig) -> nn.Module:
    return BertClassifier(config) if config.kind == "bert" else LlamaClassifier(config)


def classifier_from_model(model: nn.Module, labels: list[str], pooling: str | None = None) -> nn.Module:
    """A fresh classifier whose body is `model`'s weights (an Encoder or a Llama); the head is new."""
    kind = "bert" if isinstance(model.config, EncoderConfig) else "llama"
    config = ClassifierConfig(base=model.config.to_dict(), labels=list(labels), pooling=pooling or POOLINGS[kind][0])
    clf = Classifier(config)
    body = {k: v for k, v in model.state_dict().items()
            if k.startswith("bert.") or k.startswith("model.")}
    missing, unexpected = clf.load_state_dict(body, strict=False)
    new = {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias", "score.weight"}
    if unexpected or set(missing) - new:
        raise ConfigError(f"classifier: the model's weights do not fit (missing {sorted(set(missing) - new)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    return clf


# ---- inputs and prediction (shared by fine-tuning, evaluation and serving) --------------------------------
def encode_for_classifier(config: ClassifierConfig, tokenizer, text: str, max_length: int) -> list[int]:
    """Token ids for one text: an encoder reads `<|bos|> text <|endoftext|>` (its first token is pooled), a
    decoder `text <|endoftext|>` (its last token is pooled); the text is cut to fit `max_length`."""
    ids = tokenizer.encode(text)
    if config.kind == "bert":
        return [tokenizer.bos_id] + ids[:max(0, max_length - 2)] + [tokenizer.eos_id]
    return ids[:max(0, max_length - 1)] + [tokenizer.eos_id]


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), padded on the right."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def classify(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32,
             max_length: int | None = None) -> torch.Tensor:
    """Class probabilities (N, num_labels) for `texts` (the model is put in eval mode)."""
    model.eval()
    config = model.config
    max_length = min(max_length or config.max_seq_len, config.max_seq_len)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [encode_for_classifier(config, tokenizer, t, max_length) for t in texts[start:start + batch_size]]
        ids, mask = pad_batch(rows, tokenizer.pad_id)
        out.append(torch.softmax(model(ids.to(device), attention_mask=mask.to(device)).float(), -1).cpu())
    return torch.cat(out) if out else torch.empty(0, config.num_labels)
