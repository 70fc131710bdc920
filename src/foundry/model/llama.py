"""The foundry decoder: a Llama-family transformer in one readable file.

Design choices, each chosen to match Hugging Face `LlamaForCausalLM` so export is a renaming:
- Pre-norm blocks with RMSNorm (no bias anywhere, except optional q/k/v biases for Qwen2).
- Rotary position embeddings in the "rotate half" layout that transformers uses.
- Grouped-query attention (n_kv_head <= n_head) through `F.scaled_dot_product_attention`, which
  picks flash / memory-efficient kernels on CUDA and a fused kernel on CPU.
- SwiGLU MLP: down(silu(gate(x)) * up(x)); or, with `mlp_act: relu2`, the squared ReLU in the gate (the
  modded-nanogpt speedrun's activation, here gated so it stays a Llama with `hidden_act: relu2`).
- Optional QK-norm (`qk_norm`): RMSNorm over each head's queries and keys before rotary, as Qwen3 does (OLMo 2:
  over the whole projection); foundry's own such model exports as `Qwen3ForCausalLM`.
- Every other open family is a configuration of this one model, never a class of its own (LitGPT's design; the
  registry is `foundry.model.families`, docs/MODELS.md): norms before, after or around attention and MLP with
  transformers' names for each placement, (1 + w) norms, an embedding scale, GeGLU, an attention scale and
  tanh soft-caps (Gemma 2), per-layer sliding windows, per-layer rope base or no rope (Gemma 3, SmolLM3), rope
  scaling (linear, dynamic, YaRN, Llama 3, longrope) and partial rotary (Phi-3). Each switch defaults off, and
  with all off the forward pass takes the plain path: one rope table, one mask, SDPA's is_causal.
- Sliding-window attention is computed, in training and in both caches: a key `window` or more positions back is
  masked (the caches keep every key; no rolling buffer).
- Optional tied input/output embeddings (on by default for small models, where the embedding matrix
  is a large share of the parameters).
- Packed sequences: `segment_ids` confine attention to each packed example (block-diagonal causal
  mask) and `position_ids` restart at 0 for each example (torchtune #892).
- A preallocated KV cache for generation, and a ragged one for continuous batching (`foundry.model.kv_cache`);
  the rope variants live in `foundry.model.rope`.

Parameter names are exactly those of `LlamaForCausalLM.state_dict()` (of the family's class for the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundry.errors import ConfigError
from foundry.model.config_dict import ConfigDict
from foundry.model.kv_cache import KVCache, RaggedKVCache, causal_mask
from foundry.model.rope import apply_rotary, rotary_tables


# The MLP gate's activation; names as transformers' ACT2FN spells them, so an export keeps `hidden_act`.
MLP_ACTIVATIONS = {"silu": F.silu, "relu2": lambda x: F.relu(x).square(),
                   "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
NORM_PLACEMENTS = ("pre", "post", "both")  # Llama | OLMo 2 | Gemma 2/3 (see Block)
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


@dataclass
class LlamaConfig(ConfigDict):
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
    qk_norm: bool = False  # RMSNorm on the queries and keys before rotary (Qwen3, OLMo 2, Gemma 3)
    mlp_act: str = "silu"  # gate activation: silu (SwiGLU), relu2 (squared ReLU), gelu_pytorch_tanh (Gemma)
    init_std: float = 0.02
    # Family switches. Every default is the plain Llama above, so a model_config.json without them loads as before.
    family: str = "llama"  # the transformers model_type an export writes (foundry's own: llama, or qwen3 with qk_norm)
    o_bias: bool = False  # a bias on o_proj as well (transformers' attention_bias for Llama, Gemma, OLMo 2, SmolLM3)
    qk_norm_scope: str = "head"  # head: one RMSNorm per head (Qwen3, Gemma 3); projection: over all heads (OLMo 2)
    norm_placement: str = "pre"  # pre: Llama; post: after attention and MLP (OLMo 2); both: Gemma's pre and post
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma stores weight - 1 (offset 1)
    norm_fp32_scale: bool = False  # multiply by the weight in float32, then cast (Gemma, OLMo 2; Llama casts first)
    embed_scale: float = 1.0  # the embedding output times this, rounded to the model dtype (Gemma: sqrt(n_embd))
    attn_scale: float = 0.0  # attention logit scale; 0: head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # cap * tanh(logits / cap) on attention logits (Gemma 2); 0: none
    final_softcap: float = 0.0  # the same on the output logits (Gemma 2); 0: none
    sliding_window: int = 0  # attend to the last `sliding_window` keys only, on `sliding_layers`; 0: none
    sliding_layers: list[int] | None = None  # layer indices with the window; None: every layer (Mistral)
    local_rope_theta: float = 0.0  # rope base of the sliding layers (Gemma 3's rope_local_base_freq); 0: rope_theta
    nope_layers: list[int] = field(default_factory=list)  # layer indices without rotary embeddings (SmolLM3)
    rope_scaling: dict | None = None  # transformers' rope_parameters besides rope_type/theta, e.g. llama3, yarn
    partial_rotary: float = 1.0  # rotary on the first int(head_dim * partial_rotary) dims only (Phi-3)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "max_seq_len", "intermediate_size",
                     "head_dim", "sliding_window"):
            value, least = getattr(self, name), 0 if name in ("intermediate_size", "head_dim", "sliding_window") else 1
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
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ConfigError(f"model: norm_placement '{self.norm_placement}' is not one of {', '.join(NORM_PLACEMENTS)}")
        if self.qk_norm_scope not in ("head", "projection"):
            raise ConfigError(f"model: qk_norm_scope '{self.qk_norm_scope}' is not head or projection")
        if self.rotary_dim % 2 or self.rotary_dim < 2 or self.rotary_dim > self.head_dim:
            raise ConfigError(f"model: rotary dims int(head_dim={self.head_dim} * partial_rotary="
                              f"{self.partial_rotary}) must be even and in 2..head_dim for rotary embeddings")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"model: rope_scaling rope_type '{rope_type}' is not one of {', '.join(ROPE_TYPES)}")
        for name in ("sliding_layers", "nope_layers"):
            layers = getattr(self, name)
            if layers is not None and any(not isinstance(i, int) or not 0 <= i < self.n_layer for i in layers):
                raise ConfigError(f"model: {name} must list layer indices in 0..{self.n_layer - 1}, got {layers}")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary)

    def layer_window(self, layer: int) -> int:
        """The sliding window of `layer` (0: full causal attention)."""
        if self.sliding_window and (self.sliding_layers is None or layer in self.sliding_layers):
            return self.sliding_window
        return 0

    def num_params(self, include_embedding: bool = True) -> int:
        d, hd, L = self.n_embd, self.head_dim, self.n_layer
        attn = d * hd * self.n_head * 2 + d * hd * self.n_kv_head * 2
        if self.attention_bias:
            attn += hd * (self.n_head + 2 * self.n_kv_head)
        if self.o_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * hd if self.qk_norm_scope == "head" else hd * (self.n_head + self.n_kv_head)
        norms = {"pre": 2, "post": 2, "both": 4}[self.norm_placement]
        block = attn + 3 * d * self.intermediate_size + norms * d
        core = L * block + d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return core + (embeddings if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 * matmul params + attention (PaLM appendix B).
        A sliding layer scores at most `sliding_window` keys per query."""
        matmul_params = self.num_params(include_embedding=False) + self.vocab_size * self.n_embd
        keys = sum(min(seq_len / 2, self.layer_window(i) or seq_len) for i in range(self.n_layer))  # causal: half
        attention = 12 * self.n_head * self.head_dim * keys
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
    def __init__(self, dim: int, eps: float, offset: float = 0.0, fp32_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))
        self.eps, self.offset, self.fp32_scale = eps, offset, fp32_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as transformers does, then cast back (matters under bf16 autocast).
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.fp32_scale:  # Gemma's (1 + w) and OLMo 2 scale in float32 before the cast
            return (x * (self.weight.float() + self.offset)).to(dtype)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d, b = config.n_embd, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=config.o_bias)
        self.qk_norm_per_head = config.qk_norm_scope == "head"
        if config.qk_norm:  # bounds the attention logits, so a higher lr does not blow them up
            q_dim, k_dim = (self.head_dim, self.head_dim) if self.qk_norm_per_head else \
                (self.n_head * self.head_dim, self.n_kv_head * self.head_dim)  # OLMo 2: over the whole projection
            self.q_norm = RMSNorm(q_dim, config.norm_eps, config.norm_offset, config.norm_fp32_scale)
            self.k_norm = RMSNorm(k_dim, config.norm_eps, config.norm_offset, config.norm_fp32_scale)
        self.scale = config.attn_scale or None  # None: SDPA's head_dim ** -0.5
        self.softcap = config.attn_softcap

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if hasattr(self, "q_norm") and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, H, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, hd)
        if hasattr(self, "q_norm") and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        if cos is not None:  # None: a layer without rotary embeddings (SmolLM3's NoPE layers)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd), S = cached + T
        # mask None: plain causal over T==S; otherwise a boolean (B, 1, T, S) mask, True = attend.
        if self.softcap:
            y = self._softcapped_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, scale=self.scale,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def _softcapped_attention(self, q, k, v, mask):
        """Attention with cap * tanh(scores / cap) before the mask (Gemma 2), which SDPA cannot do."""
        T, S = q.shape[2], k.shape[2]
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, H, S, hd)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        scores = (q @ k.transpose(-2, -1)) * (self.scale or self.head_dim ** -0.5)  # (B, H, T, S)
        scores = self.softcap * torch.tanh(scores / self.softcap)
        if mask is None and T > 1:
            mask = causal_mask(torch.arange(T, device=q.device), S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v  # (B, H, T, hd)


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
    """A decoder layer. Norm placement, with transformers' names (so state-dict keys match each family):
    pre (Llama): x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x));
    post (OLMo 2): x + post_attention_layernorm(attn(x)), then x + post_feedforward_layernorm(mlp(x));
    both (Gemma 2/3): x + post_attention_layernorm(attn(input_layernorm(x))),
    then x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.placement = config.norm_placement

        def norm():
            return RMSNorm(config.n_embd, config.norm_eps, config.norm_offset, config.norm_fp32_scale)

        if self.placement != "post":
            self.input_layernorm = norm()
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = norm()
        if self.placement == "both":
            self.pre_feedforward_layernorm = norm()
        if self.placement != "pre":
            self.post_feedforward_layernorm = norm()
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, kv_cache):
        if self.placement == "pre":
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
            return x + self.mlp(self.post_attention_layernorm(x))
        h = x if self.placement == "post" else self.input_layernorm(x)
        x = x + self.post_attention_layernorm(self.self_attn(h, cos, sin, mask, kv_cache))
        h = x if self.placement == "post" else self.pre_feedforward_layernorm(x)
        return x + self.post_feedforward_layernorm(self.mlp(h))


class Backbone(nn.Module):
    """Named `model` inside Llama, as in transformers, so state-dict keys match one to one."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps, config.norm_offset, config.norm_fp32_scale)


class SoftcappedLinear(nn.Linear):
    """The output projection with cap * tanh(logits / cap) (Gemma 2's final_logit_softcapping), so every caller
    of `lm_head` (the engine's prefill included) gets the model's real logits."""

    def __init__(self, d_in: int, d_out: int, cap: float):
        super().__init__(d_in, d_out, bias=False)
        self.cap = cap

    def forward(self, x):
        return self.cap * torch.tanh(super().forward(x) / self.cap)


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        if config.final_softcap:
            self.lm_head = SoftcappedLinear(config.n_embd, config.vocab_size, config.final_softcap)
        else:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        scaling, rd = config.rope_scaling, config.rotary_dim
        if (scaling or {}).get("rope_type") == "dynamic" and config.max_seq_len > scaling["max_position_embeddings"]:
            raise ConfigError(f"model: dynamic rope is exact only within its trained context "
                              f"({scaling['max_position_embeddings']}), max_seq_len is {config.max_seq_len}")
        cos, sin = rotary_tables(rd, config.max_seq_len, config.rope_theta, scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Per-layer attention: rotary table ("global", "local" or None) and sliding window (0: full).
        self.layer_windows = [config.layer_window(i) for i in range(config.n_layer)]
        self.layer_ropes = ["global"] * config.n_layer
        if config.local_rope_theta:  # Gemma 3: sliding layers use a plain rope of their own base
            cos, sin = rotary_tables(rd, config.max_seq_len, config.local_rope_theta)
            self.register_buffer("rope_cos_local", cos, persistent=False)
            self.register_buffer("rope_sin_local", sin, persistent=False)
            self.layer_ropes = ["local" if w else "global" for w in self.layer_windows]
        for i in config.nope_layers:
            self.layer_ropes[i] = None
        self.longrope_from = 0  # longrope: past this many tokens, the long factors' table (transformers' switch)
        if (scaling or {}).get("rope_type") == "longrope":
            self.longrope_from = scaling["original_max_position_embeddings"]
            cos, sin = rotary_tables(rd, config.max_seq_len, config.rope_theta, scaling, long=True)
            self.register_buffer("rope_cos_long", cos, persistent=False)
            self.register_buffer("rope_sin_long", sin, persistent=False)
        self.embed_scale = config.embed_scale  # forward reads no config: subclasses replace self.config
        self._plain = not any(self.layer_windows) and set(self.layer_ropes) == {"global"} and not self.longrope_from
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        # Residual output projections scaled by depth (GPT-2 paper, section 2.3).
        out_std = std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                nn.init.constant_(p, 1.0 - self.config.norm_offset)  # a scale of one
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., n_embd) -> logits (..., vocab): lm_head, with the final soft-cap if any."""
        return self.lm_head(hidden)

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
        ragged = isinstance(kv_cache, RaggedKVCache)
        if ragged:  # each row at its own length: positions and mask per row
            position_ids, mask = kv_cache.prepare(B, T, input_ids.device)
        else:
            past = kv_cache.length if kv_cache is not None else 0
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            mask = self._attention_mask(B, T, past, segment_ids, input_ids.device)
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        if self.embed_scale != 1.0:  # Gemma: sqrt(n_embd), rounded to the model dtype as transformers does
            x = x * torch.tensor(self.embed_scale).to(x.dtype)
        if self._plain:  # one rope table and one mask for every layer (foundry's own shapes): no per-layer work
            cos = self.rope_cos[position_ids].unsqueeze(1).to(x.dtype)  # (B, 1, T, rd)
            sin = self.rope_sin[position_ids].unsqueeze(1).to(x.dtype)
            for block in self.model.layers:
                x = block(x, cos, sin, mask, kv_cache)
        else:
            # The step's key count (transformers' longrope switch reads it) and each distinct window's mask.
            if ragged:
                length = max(kv_cache.lengths[:B]) + T
                windows = {w: kv_cache.window_mask(w) if w else mask for w in set(self.layer_windows)}
            else:
                length = past + T if past or not self.longrope_from else int(position_ids.max()) + 1
                windows = {w: self._attention_mask(B, T, past, segment_ids, input_ids.device, w) if w else mask
                           for w in set(self.layer_windows)}
            long = self._longrope_rows(B, T, length, kv_cache)
            ropes = {None: (None, None)}
            for kind in set(self.layer_ropes) - {None}:
                ropes[kind] = self._rope(kind, position_ids, long, x.dtype)
            for block, kind, w in zip(self.model.layers, self.layer_ropes, self.layer_windows):
                x = block(x, *ropes[kind], windows[w], kv_cache)
        x = self.model.norm(x)
        if self.longrope_from and kv_cache is not None:
            x = self._longrope_reprefill(input_ids, kv_cache, x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if return_hidden:
            return x
        if logits_at is not None:
            x = x[logits_at]  # (n, d)
        return self.project(x)

    def _rope(self, kind: str, position_ids, long, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, rd) of one rope table; `long`: bool or (B,) rows on longrope's long factors."""
        if kind == "local":
            suffix = "_local"
        elif isinstance(long, torch.Tensor):  # rows on either side of the original context
            pick = long[:, None, None, None]
            return tuple(torch.where(pick, getattr(self, f"rope_{f}_long")[position_ids].unsqueeze(1),
                                     getattr(self, f"rope_{f}")[position_ids].unsqueeze(1)).to(dtype)
                         for f in ("cos", "sin"))
        else:
            suffix = "_long" if long else ""
        return (getattr(self, "rope_cos" + suffix)[position_ids].unsqueeze(1).to(dtype),
                getattr(self, "rope_sin" + suffix)[position_ids].unsqueeze(1).to(dtype))

    def _longrope_rows(self, B: int, T: int, length: int, kv_cache) -> bool | torch.Tensor:
        """Longrope's factors, as transformers picks them for a sequence alone: the long ones once it holds more
        than the original context. One choice per call, or one per row when a ragged cache's rows differ."""
        if not self.longrope_from:
            return False
        if not isinstance(kv_cache, RaggedKVCache):
            return length > self.longrope_from
        rows = [n + T > self.longrope_from for n in kv_cache.row_lengths(B)]
        if all(rows) or not any(rows):
            return rows[0]
        return torch.tensor(rows, device=self.rope_cos.device)

    def _longrope_reprefill(self, input_ids: torch.Tensor, kv_cache: KVCache, x: torch.Tensor) -> torch.Tensor:
        """A cached sequence that grows past longrope's original context is recomputed whole with the long
        factors, as transformers' Phi-3 does when generating (it drops its cache at that step): each such row's
        keys, values and final hidden states (T, d) are replaced by those of a fresh forward over its tokens."""
        B, T = input_ids.shape
        kv_cache.record_tokens(input_ids)
        old = self.longrope_from
        crossing = [(row, n) for row, n in enumerate(kv_cache.row_lengths(B)) if 0 < n <= old < n + T]
        if crossing:
            x = x.clone()
        for row, n in crossing:
            fresh = KVCache(self.config, 1, n + T, x.device, self.model.embed_tokens.weight.dtype)
            hidden = self.forward(kv_cache.tokens[row:row + 1, :n + T], kv_cache=fresh, return_hidden=True)
            for layer in range(len(kv_cache.k)):
                kv_cache.k[layer][row, :, :n + T] = fresh.k[layer][0]
                kv_cache.v[layer][row, :, :n + T] = fresh.v[layer][0]
            x[row] = hidden[0, n:]
        return x

    @staticmethod
    def _attention_mask(B, T, past, segment_ids, device, window: int = 0) -> torch.Tensor | None:
        S = past + T
        hides = window and S > window  # a sliding window hides some key only past its length
        if segment_ids is None and not hides and (past == 0 or T == 1):
            return None  # SDPA's is_causal (or no mask at all for one new token) is fastest
        mask = causal_mask(torch.arange(past, S, device=device), S, window).expand(B, 1, T, S)
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
