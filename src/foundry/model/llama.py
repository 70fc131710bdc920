"""The foundry decoder: a Llama-family transformer in one readable file.

Design choices, each chosen to match Hugging Face `LlamaForCausalLM` so export is a renaming:
- Pre-norm blocks with RMSNorm (no bias anywhere, except optional q/k/v biases for Qwen2).
- Rotary position embeddings in the "rotate half" layout that transformers uses.
- Grouped-query attention (n_kv_head <= n_head) through `F.scaled_dot_product_attention`, which
  picks flash / memory-efficient kernels on CUDA and a fused kernel on CPU.
- SwiGLU MLP: down(silu(gate(x)) * up(x)); or, with `mlp_act: relu2`, the squared ReLU in the gate (the
  modded-nanogpt speedrun's activation, here gated so it stays a Llama with `hidden_act: relu2`).
- Optional QK-norm (`qk_norm`): RMSNorm over each head's queries and keys before rotary, as Qwen3 and
  OLMo 2 do; such a model exports as `Qwen3ForCausalLM`.
- Optional tied input/output embeddings (on by default for small models, where the embedding matrix
  is a large share of the parameters).
- Packed sequences: `segment_ids` confine attention to each packed example (block-diagonal causal
  mask) and `position_ids` restart at 0 for each example (torchtune #892).
- A preallocated KV cache for generation, and a ragged one for continuous batching (Yu et al. 2022,
  "Orca"): each row holds one sequence at its own length, so sequences of different lengths decode in one
  forward pass with their own positions and a key mask, and no padding ever enters a row.

Parameter names are exactly those of `LlamaForCausalLM.state_dict()`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundry.errors import ConfigError


# The MLP gate's activation; names as transformers' ACT2FN spells them, so an export keeps `hidden_act`.
MLP_ACTIVATIONS = {"silu": F.silu, "relu2": lambda x: F.relu(x).square()}


@dataclass
class LlamaConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 256
    intermediate_size: int = 0  # 0: SwiGLU default, 8/3 * n_embd rounded up to a multiple of 64
    head_dim: int = 0  # 0: n_embd // n_head
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 puts biases on q, k and v projections
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before rotary (Qwen3, OLMo 2)
    mlp_act: str = "silu"  # gate activation: silu (SwiGLU) or relu2 (squared ReLU, modded-nanogpt)
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "max_seq_len", "intermediate_size",
                     "head_dim"):
            value, least = getattr(self, name), 0 if name in ("intermediate_size", "head_dim") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"model: {name} must be an integer >= {least}, got {value!r}")
        if self.intermediate_size == 0:
            self.intermediate_size = 64 * math.ceil(8 * self.n_embd / 3 / 64)
        if self.head_dim == 0:
            if self.n_embd % self.n_head:
                raise ConfigError(f"model: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise ConfigError(f"model: mlp_act '{self.mlp_act}' is not one of {', '.join(MLP_ACTIVATIONS)}")
        if self.head_dim % 2:
            raise ConfigError(f"model: head_dim={self.head_dim} must be even for rotary embeddings")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LlamaConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**data)

    def num_params(self, include_embedding: bool = True) -> int:
        d, hd, L = self.n_embd, self.head_dim, self.n_layer
        attn = d * hd * self.n_head * 2 + d * hd * self.n_kv_head * 2
        if self.attention_bias:
            attn += hd * (self.n_head + 2 * self.n_kv_head)
        if self.qk_norm:
            attn += 2 * hd
        block = attn + 3 * d * self.intermediate_size + 2 * d
        core = L * block + d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return core + (embeddings if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 * matmul params + attention (PaLM appendix B)."""
        matmul_params = self.num_params(include_embedding=False) + self.vocab_size * self.n_embd
        attention = 12 * self.n_layer * self.n_head * self.head_dim * seq_len / 2  # causal: half the scores
        return 6 * matmul_params + attention


# Named sizes. "test" is for unit tests; the quickstart uses "4m"; the GPU benchmarks use 124m..1b.
PRESETS: dict[str, dict] = {
    "test": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, vocab_size=512, max_seq_len=256),
    "1m": dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, vocab_size=2048, max_seq_len=512),
    "4m": dict(n_layer=6, n_head=6, n_kv_head=6, n_embd=192, vocab_size=4096, max_seq_len=512),
    "14m": dict(n_layer=8, n_head=8, n_kv_head=4, n_embd=320, vocab_size=8192, max_seq_len=1024),
    "124m": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, vocab_size=32768, max_seq_len=2048,
                 tie_embeddings=False),
    "350m": dict(n_layer=24, n_head=16, n_kv_head=8, n_embd=1024, vocab_size=32768, max_seq_len=2048,
                 tie_embeddings=False),
    "1b": dict(n_layer=22, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=5632, vocab_size=32768,
               max_seq_len=2048, tie_embeddings=False),
}


def config_from_preset(name: str, **overrides) -> LlamaConfig:
    if name not in PRESETS:
        raise ConfigError(f"model: unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return LlamaConfig(**{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as transformers does, then cast back (matters under bf16 autocast).
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (max_len, hd)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); cos/sin: (B, 1, T, hd)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Preallocated keys and values for every layer; `length` tokens are filled."""

    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} tokens")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        self.length += T

    def reset(self) -> None:
        self.length = 0


class RaggedKVCache(KVCache):
    """Rows hold sequences of different lengths (continuous batching): row b holds `lengths[b]` tokens.

    A forward pass over B rows (the first B) appends its T tokens to each row at that row's own offset, with
    positions counted from the row's start and a mask that hides every key past the row's end, so each row
    computes what it would alone. Rows are filled by `load_row` (from a one-sequence prefill cache) and
    moved by `move_row`, which lets a caller keep its live sequences in the first rows.
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, device, dtype):
        super().__init__(config, batch_size, max_len, device, dtype)
        self.lengths = [0] * batch_size  # on the host: building a step's positions needs no device sync

    def prepare(self, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids (B, T) and the boolean attention mask (B, 1, T, S) for appending T tokens to rows :B.
        Rows all of one length (always so for one row) take the plain cache's path: slice writes, and no
        mask for a single new token."""
        lengths = self.lengths[:B]
        longest = max(lengths)
        if longest + T > self.max_len:
            raise ValueError(f"KV cache full: {longest + T} > {self.max_len} tokens")
        self._uniform = longest if min(lengths) == longest else None
        if self._uniform is not None:
            self._positions = torch.arange(longest, longest + T, device=device).expand(B, T)
            if T == 1:
                return self._positions, None
        else:
            offsets = torch.tensor(lengths, device=device)
            self._positions = offsets[:, None] + torch.arange(T, device=device)  # (B, T)
        S = longest + T
        mask = torch.arange(S, device=device)[None, None, :] <= self._positions[:, :, None]  # (B, T, S) causal
        return self._positions, mask[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        S = self._positions.shape[1] + (self._uniform if self._uniform is not None else max(self.lengths[:B]))
        if self._uniform is not None:
            self.k[layer][:B, :, self._uniform:S] = k
            self.v[layer][:B, :, self._uniform:S] = v
        else:
            index = self._positions[:, None, :, None].expand(B, H, T, D)  # each row writes at its own offset
            self.k[layer][:B].scatter_(2, index, k)
            self.v[layer][:B].scatter_(2, index, v)
        return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S]

    def advance(self, T: int) -> None:
        B = self._positions.shape[0]
        self.lengths[:B] = [n + T for n in self.lengths[:B]]

    def load_row(self, row: int, source: KVCache, source_row: int = 0, length: int | None = None) -> None:
        """Copy the first `length` tokens (default: all `source.length`) of `source_row` of a plain cache (a
        prefill's) into `row`."""
        n = source.length if length is None else length
        for layer in range(len(self.k)):
            self.k[layer][row, :, :n] = source.k[layer][source_row, :, :n]
            self.v[layer][row, :, :n] = source.v[layer][source_row, :, :n]
        self.lengths[row] = n

    def move_row(self, src: int, dst: int) -> None:
        n = self.lengths[src]
        if src != dst:
            for layer in range(len(self.k)):
                self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
                self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
            self.lengths[dst] = n
        self.lengths[src] = 0 if src != dst else n

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d, b = config.n_embd, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)
        if config.qk_norm:  # bounds the attention logits, so a higher lr does not blow them up
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, hd)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd), S = cached + T
        # mask None: plain causal over T==S; otherwise a boolean (B, 1, T, S) mask, True = attend.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)
        self.act = MLP_ACTIVATIONS[config.mlp_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named `model` inside Llama, as in transformers, so state-dict keys match one to one."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        # Residual output projections scaled by depth (GPT-2 paper, section 2.3).
        out_std = std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids
        position_ids: torch.Tensor | None = None,  # (B, T); default 0..T-1 (offset by the cache)
        segment_ids: torch.Tensor | None = None,  # (B, T); tokens attend only within their segment
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
        logits_at: torch.Tensor | None = None,  # (B, T) bool: project only these positions to the vocabulary
    ) -> torch.Tensor:
        """Logits (B, T, vocab); the final hidden states (B, T, n_embd) if `return_hidden`; or, given
        `logits_at`, logits (n, vocab) of its n True positions in row-major order, so a loss over a few
        positions (DPO's completion tokens) never computes the vocabulary projection of the rest."""
        B, T = input_ids.shape
        if isinstance(kv_cache, RaggedKVCache):  # each row at its own length: positions and mask per row
            position_ids, mask = kv_cache.prepare(B, T, input_ids.device)
        else:
            past = kv_cache.length if kv_cache is not None else 0
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            mask = self._attention_mask(B, T, past, segment_ids, input_ids.device)
        cos = self.rope_cos[position_ids].unsqueeze(1).to(self.model.embed_tokens.weight.dtype)  # (B, 1, T, hd)
        sin = self.rope_sin[position_ids].unsqueeze(1).to(cos.dtype)
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        for block in self.model.layers:
            x = block(x, cos, sin, mask, kv_cache)
        x = self.model.norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if return_hidden:
            return x
        if logits_at is not None:
            x = x[logits_at]  # (n, d)
        return self.lm_head(x)

    @staticmethod
    def _attention_mask(B, T, past, segment_ids, device) -> torch.Tensor | None:
        if segment_ids is None and (past == 0 or T == 1):
            return None  # SDPA's is_causal (or no mask at all for one new token) is fastest
        S = past + T
        q_pos = torch.arange(past, S, device=device)
        mask = (torch.arange(S, device=device)[None, :] <= q_pos[:, None]).expand(B, 1, T, S)  # causal
        if segment_ids is not None:
            if past:
                raise ValueError("segment_ids are for packed training batches, not cached decoding")
            same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, T, T)
            mask = mask & same
        return mask

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        w = self.model.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, w.device, w.dtype)

    def new_ragged_kv_cache(self, batch_size: int, max_len: int | None = None) -> RaggedKVCache:
        w = self.model.embed_tokens.weight
        return RaggedKVCache(self.config, batch_size, max_len or self.config.max_seq_len, w.device, w.dtype)
