"""The foundry encoder: a bidirectional BERT masked-LM in one readable file.

Design choices, each chosen to match Hugging Face `BertForMaskedLM` so export is a renaming-free copy
(docs/ENCODERS.md says why BERT and not ModernBERT):
- Post-norm blocks (Devlin et al. 2019; Vaswani et al. 2017): x = LayerNorm(x + sublayer(x)), LayerNorm
  with a bias, every Linear with a bias, GELU (erf form) MLP of width 4 * n_embd.
- Learned absolute position embeddings and a (single-row-used) token-type embedding, summed with the
  word embedding and normalised.
- Full (bidirectional) attention through `F.scaled_dot_product_attention`; an optional boolean mask.
- Packed sequences without padding: `segment_ids` confine attention to each packed document (block-diagonal,
  not causal) and `position_ids` restart at 0 for each one (torchtune #892; transformers'
  DataCollatorWithFlattening does the same for BERT-style models).
- The MLM head: dense -> GELU -> LayerNorm -> decoder tied to the word embedding, plus an output bias.
- The mask token is one id past the tokenizer's vocabulary (`mask_token_id`), so an encoder trains on the
  same token shards, with the same tokenizer, as the decoder: no tokenizer change, no re-tokenising.
- No dropout by default (`dropout`), like the decoder; small-data fine-tuning may set it.

Parameter names are exactly those of `BertForMaskedLM.state_dict()` (plus `bert.pooler.*` in the
sequence classifier, `foundry.model.classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundry.errors import ConfigError
from foundry.model.config_dict import ConfigDict


@dataclass
class EncoderConfig(ConfigDict):
    config_name = "encoder config"

    architecture: str = "bert"  # tells a checkpoint's model_config.json from a decoder's
    vocab_size: int = 4097
    mask_token_id: int = 4096  # the id past the tokenizer's vocabulary, used only for [MASK]
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    intermediate_size: int = 0  # 0: 4 * n_embd (BERT)
    max_seq_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        if self.architecture != "bert":
            raise ConfigError(f"encoder: architecture must be 'bert', got {self.architecture!r}")
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "max_seq_len", "intermediate_size",
                     "type_vocab_size"):
            value, least = getattr(self, name), 0 if name == "intermediate_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"model: {name} must be an integer >= {least}, got {value!r}")
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.n_embd
        if self.n_embd % self.n_head:
            raise ConfigError(f"model: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"model: mask_token_id={self.mask_token_id} is outside the vocabulary "
                              f"({self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self, include_embedding: bool = True) -> int:
        d, f, L = self.n_embd, self.intermediate_size, self.n_layer
        block = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
        head = d * d + d + 2 * d + self.vocab_size  # transform, its LayerNorm, output bias
        embeddings = (self.vocab_size + self.max_seq_len + self.type_vocab_size) * d + 2 * d
        return L * block + head + (embeddings if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * matmul params + attention (full, not causal: all the scores)."""
        matmul_params = self.num_params(include_embedding=False) + self.vocab_size * self.n_embd
        return 6 * matmul_params + 12 * self.n_layer * self.n_embd * seq_len


# Named sizes. "bert-test" is for unit tests; "bert-base" is BERT-base's shape (about 110M with a 30k vocab).
ENCODER_PRESETS: dict[str, dict] = {
    "bert-test": dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=256),
    "bert-mini": dict(n_layer=4, n_head=4, n_embd=256, max_seq_len=512),  # ~ Turc et al. 2019 "mini"
    "bert-small": dict(n_layer=4, n_head=8, n_embd=512, max_seq_len=512),
    "bert-medium": dict(n_layer=8, n_head=8, n_embd=512, max_seq_len=512),
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768, max_seq_len=512),
}


def encoder_config_from_preset(name: str, **overrides) -> EncoderConfig:
    if name not in ENCODER_PRESETS:
        raise ConfigError(f"model: unknown encoder preset '{name}'; choose one of {', '.join(ENCODER_PRESETS)}")
    return EncoderConfig(**{**ENCODER_PRESETS[name], **overrides})


def packed_attention_mask(segment_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean (B, 1, T, T), True = attend: only within a segment (packing) and never to padding keys."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])  # (B, 1, T, T) block-diagonal
    if attention_mask is not None:
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        mask = keys if mask is None else mask & keys
    return mask


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        d = config.n_embd
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = config.dropout

    def forward(self, x, mask):
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.key(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = self.value(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, d)


class DenseNorm(nn.Module):
    """`BertSelfOutput` / `BertOutput`: LayerNorm(residual + dropout(dense(x)))."""

    def __init__(self, d_in: int, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, config.n_embd)
        self.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, residual):
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseNorm(config.n_embd, config)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # erf GELU, transformers' "gelu"


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseNorm(config.intermediate_size, config)

    def forward(self, x, mask):
        x = self.attention(x, mask)  # post-norm: LayerNorm(x + attn(x))
        return self.output(self.intermediate(x), x)  # LayerNorm(x + mlp(x))


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        d = config.n_embd
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_seq_len, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, position_ids, token_type_ids):
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))  # (B, T, d)


class LayerStack(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.n_layer))


class Pooler(nn.Module):
    """`BertPooler`: tanh(dense(hidden of the first token))."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first))


class BertBackbone(nn.Module):
    """Named `bert` inside the encoder, as in transformers, so state-dict keys match one to one."""

    def __init__(self, config: EncoderConfig, pooler: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = LayerStack(config)
        if pooler:
            self.pooler = Pooler(config)

    def forward(self, input_ids, position_ids=None, segment_ids=None, attention_mask=None, token_type_ids=None):
        """Final hidden states (B, T, n_embd)."""
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the encoder's max_seq_len {self.config.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = packed_attention_mask(segment_ids, attention_mask)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


class PredictionHead(nn.Module):
    def __init__(self, config: EncoderConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.n_embd, config.n_embd)
        self.transform.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder = nn.Linear(config.n_embd, config.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied, as BERT's
        self.decoder.bias = self.bias

    def forward(self, x):
        x = self.transform.LayerNorm(F.gelu(self.transform.dense(x)))
        return self.decoder(x)  # (B, T, vocab)


class Encoder(nn.Module):
    """BERT for masked-LM: `bert` (embeddings + layers) and `cls.predictions` (the MLM head)."""

    # saved once: transformers re-ties these from their sources
    tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.bert = BertBackbone(config)
        self.cls = nn.Module()
        self.cls.predictions = PredictionHead(config, self.bert.embeddings.word_embeddings)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_bert_weights(self, self.config.init_std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, position_ids=None, segment_ids=None, attention_mask=None, token_type_ids=None,
                return_hidden: bool = False) -> torch.Tensor:
        """MLM logits (B, T, vocab), or the final hidden states (B, T, n_embd) if `return_hidden`."""
        x = self.bert(input_ids, position_ids, segment_ids, attention_mask, token_type_ids)
        return x if return_hidden else self.cls.predictions(x)


def init_bert_weights(model: nn.Module, std: float) -> None:
    """BERT's initialisation (transformers `_init_weights`): normal(0, std) weights, zero biases, unit norms."""
    for name, p in model.named_parameters():
        if "LayerNorm" in name:
            nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, 0.0, std)


def is_encoder(model: nn.Module) -> bool:
    return isinstance(getattr(model, "config", None), EncoderConfig)
