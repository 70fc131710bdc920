"""`foundry plan`: per-device memory, tokens per step, time and cost of a run, before running it.

Memory per device, for AdamW training of our Llama block (docs/DISTRIBUTED.md has the table per preset):

- parameters: fp32 master weights, 4 bytes each (DDP: whole model; FSDP: 1/world_size of it);
- gradients: fp32, 4 bytes each (DDP uses `gradient_as_bucket_view`, so its buckets add nothing);
- optimiser: AdamW's exp_avg and exp_avg_sq, 8 bytes per parameter (FSDP: sharded like the weights);
- working set: what exists only during a step. Under bf16 autocast (DDP) the bf16 weight copies
  autocast caches (2 bytes per parameter); under FSDP2 the all-gathered bf16 weights and the unsharded
  gradients of the root and of two blocks (the current one and the prefetched one); the dense fp32
  gradient the embedding's backward builds (V·d, twice with tied embeddings, whose two gradients are
  summed); and, unless AdamW is fused, one fp32 temporary the size of the (local) parameters that the
  foreach implementation allocates inside `step()`;
- activations: the tensors autograd saves for backward, counted tensor by tensor for our block
  (eager mode, SDPA flash attention, which keeps only q, k, v, the output and the log-sum-exp: no
  T x T score matrix). This adapts Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", section 4.1 (34·s·b·h bytes per layer for GPT with flash attention) to
  our block: SwiGLU (three I-wide tensors instead of one 4h GeLU), GQA (k and v are n_kv_head·hd
  wide), RMSNorm computed in fp32 and no dropout. Per token and per layer, in bytes:
      fp32:          36·d + 8·kv + 16·I + 4·H
      bf16 autocast: 22·d + 4·kv + 8·I + 4·H   (the residual stream and norms stay fp32)
  with d = n_embd, kv = n_kv_head·head_dim, I = intermediate_size, H = n_head;
- logits: the loss is computed in fp32 over the vocabulary: at the start of backward the saved
  log-softmax and two fp32 gradients of it live together, 12·V bytes per token (+2·V for the bf16
  logits under autocast).

torch.compile fuses the elementwise tail of each block and saves less; the estimate is for eager mode
and so errs high. tests/train/test_plan.py checks the estimate against a measured peak on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from foundry.errors import ConfigError
from foundry.hardware import ACCELERATORS
from foundry.model.llama import PRESETS, LlamaConfig, config_from_preset

GIB = 1024**3
STRATEGIES = ("ddp", "fsdp")
# --gpu names: the hardware table's accelerators in lower case ("rtx-4090").
GPUS = {name.lower().replace(" ", "-"): acc for name, acc in ACCELERATORS.items()}


@dataclass
class MemoryEstimate:
    """Bytes per device at the peak of one training step."""

    params: int
    grads: int
    optimizer: int
    working: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.working + self.activations + self.logits

    def as_gib(self) -> dict:
        return {k: v / GIB for k, v in {**asdict(self), "total": self.total}.items()}


def block_params(cfg: LlamaConfig) -> int:
    return (cfg.num_params(include_embedding=False) - cfg.n_embd) // cfg.n_layer


def activation_bytes_per_token_layer(cfg: LlamaConfig, dtype: str) -> int:
    """Bytes autograd saves per token in one block (see the module docstring for the derivation)."""
    d, kv, inter, heads = cfg.n_embd, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size, cfg.n_head
    if dtype == "bfloat16":
        # norm1 4d (x) + 2d (x̂ bf16) | q,k,v input 2d | SDPA q 2d, k,v 2kv each, out 2d, lse 4H
        # | o_proj input 2d | norm2 + mlp input 8d | gate, silu, up, product 2I each
        return 22 * d + 4 * kv + 8 * inter + 4 * heads
    # norm1 4d + 4d | q,k,v input 4d | SDPA q 4d, k, v 4kv each, out 4d, lse 4H | o_proj input 4d
    # | norm2 + mlp input 12d | gate, silu, up, product 4I each
    return 36 * d + 8 * kv + 16 * inter + 4 * heads


def activation_bytes(cfg: LlamaConfig, tokens: int, dtype: str) -> int:
    per_layer = activation_bytes_per_token_layer(cfg, dtype)
    # final norm + lm_head input: fp32 4d + 4d + 4d, bf16 4d + 2d + 2d
    tail = (8 if dtype == "bfloat16" else 12) * cfg.n_embd
    return tokens * (cfg.n_layer * per_layer + tail)


def logits_bytes(cfg: LlamaConfig, tokens: int, dtype: str) -> int:
    return tokens * cfg.vocab_size * (14 if dtype == "bfloat16" else 12)


def estimate_memory(cfg: LlamaConfig, micro_batch: int, block_size: int, world_size: int = 1,
                    strategy: str = "ddp", dtype: str = "bfloat16", fused_optimizer: bool = True,
                    grad_accum: int = 1) -> MemoryEstimate:
    """Peak bytes per device for one training step of AdamW (see the module docstring).

    FSDP with accumulation: the inner micro-steps skip the reduce-scatter (`sync_context`), so every
    rank holds the whole model's unsharded fp32 gradients until the last micro-step."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"plan: strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"plan: dtype must be bfloat16 or float32, got '{dtype}'")
    n = cfg.num_params()
    shards = world_size if strategy == "fsdp" else 1
    params, grads, optimizer = 4 * n // shards, 4 * n // shards, 8 * n // shards
    if shards > 1 and grad_accum > 1:
        grads += 4 * n  # unsharded gradients accumulated without sync
    if strategy == "fsdp" and world_size > 1:
        root = n - cfg.n_layer * block_params(cfg)  # embeddings, final norm, lm_head
        gathered = root + 2 * block_params(cfg)
        param_bytes = 2 if dtype == "bfloat16" else 4
        working = gathered * (param_bytes + param_bytes + 4)  # unsharded weights + grads + fp32 reduce copy
    else:
        working = 2 * n if dtype == "bfloat16" else 0  # autocast's cached bf16 weight copies
    working += 4 * cfg.vocab_size * cfg.n_embd * (2 if cfg.tie_embeddings else 1)  # embedding backward
    if not fused_optimizer:
        working += 4 * n // shards  # foreach AdamW's temporary
    tokens = micro_batch * block_size
    return MemoryEstimate(params, grads, optimizer, working, activation_bytes(cfg, tokens, dtype),
                          logits_bytes(cfg, tokens, dtype))


def suggest_batch(cfg: LlamaConfig, block_size: int, device_gib: float, target_batch_tokens: int,
                  world_size: int = 1, strategy: str = "ddp", dtype: str = "bfloat16",
                  headroom: float = 0.85) -> tuple[int, int] | None:
    """Largest power-of-two micro-batch that fits `headroom` of the device, and the accumulation that
    brings the global batch to at least `target_batch_tokens`; None if even one sequence does not fit."""
    budget = device_gib * GIB * headroom
    best = None
    micro = 1
    while micro <= 4096:
        if estimate_memory(cfg, micro, block_size, world_size, strategy, dtype).total > budget:
            break
        best = micro
        micro *= 2
    if best is None:
        return None
    per_step = best * block_size * world_size
    accum = max(1, math.ceil(target_batch_tokens / per_step))
    if accum == 1:  # a smaller micro-batch can reach the target exactly with no accumulation
        while best > 1 and (best // 2) * block_size * world_size >= target_batch_tokens:
            best //= 2
    return best, accum


def plan(cfg: LlamaConfig, micro_batch: int, block_size: int, grad_accum: int, world_size: int, strategy: str,
         dtype: str, token_budget: float, mfu: float, peak_flops: float, price_per_gpu_hour: float,
         device_gib: float | None = None) -> dict:
    """Everything `foundry plan` prints, as a dict (JSON-ready)."""
    if block_size > cfg.max_seq_len:
        raise ConfigError(f"plan: block_size {block_size} exceeds the model's max_seq_len {cfg.max_seq_len}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"plan: --mfu is a fraction in (0, 1], got {mfu}")
    mem = estimate_memory(cfg, micro_batch, block_size, world_size, strategy, dtype, grad_accum=grad_accum)
    tokens_per_step = micro_batch * block_size * grad_accum * world_size
    flops_per_token = cfg.flops_per_token(block_size)
    tokens_per_second = world_size * peak_flops * mfu / flops_per_token
    seconds = token_budget / tokens_per_second
    out = {
        "params": cfg.num_params(),
        "strategy": strategy, "world_size": world_size, "dtype": dtype,
        "micro_batch": micro_batch, "block_size": block_size, "grad_accum": grad_accum,
        "memory_gib": mem.as_gib(),
        "memory_gib_other_strategy": {s: estimate_memory(cfg, micro_batch, block_size, world_size, s, dtype,
                                                         grad_accum=grad_accum).total / GIB for s in STRATEGIES},
        "tokens_per_step": tokens_per_step,
        "steps": math.ceil(token_budget / tokens_per_step),
        "flops_per_token": flops_per_token,
        "tokens_per_second": tokens_per_second,
        "hours": seconds / 3600,
        "gpu_hours": seconds / 3600 * world_size,
        "cost": seconds / 3600 * world_size * price_per_gpu_hour,
        "token_budget": token_budget,
    }
    if device_gib is not None:
        out["device_gib"] = device_gib
        out["fits"] = mem.total <= device_gib * GIB
        out["suggestion"] = suggest_batch(cfg, block_size, device_gib, tokens_per_step, world_size, strategy, dtype)
    return out


def recipe_settings(path: str) -> tuple[dict, dict]:
    """(model section, train section) of a recipe, at the top level or under its first stage that has them."""
    from foundry.config import read_yaml

    data = read_yaml(path)
    candidates = [data] + [v for v in data.values() if isinstance(v, dict)]
    model = next((c["model"] for c in candidates if isinstance(c.get("model"), dict)), {})
    train = next((c["train"] for c in candidates if isinstance(c.get("train"), dict)), {})
    return model, train


def model_config_for(model_section: dict, preset: str | None, source: str) -> LlamaConfig:
    section = dict(model_section)
    name = preset or section.pop("preset", None)
    section.pop("preset", None)
    if name is None:
        raise ConfigError(f"{source}: no model preset; pass --preset NAME ({', '.join(PRESETS)})")
    known = set(LlamaConfig.__dataclass_fields__)
    return config_from_preset(name, **{k: v for k, v in section.items() if k in known and v is not None})


def parse_number(text: str, what: str) -> float:
    """'2e9', '2B', '500M', '1.5T' -> float."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except ValueError:
        raise ConfigError(f"plan: {what} '{text}' is not a number (examples: 2e9, 500M, 2B)") from None


def format_plan(p: dict) -> str:
    m = p["memory_gib"]
    lines = [
        f"model            {p['params'] / 1e6:,.1f}M parameters, {p['dtype']}, {p['strategy'].upper()} "
        f"x {p['world_size']} device(s)",
        f"batch            {p['micro_batch']} x {p['block_size']} tokens x {p['grad_accum']} accumulation x "
        f"{p['world_size']} = {p['tokens_per_step']:,} tokens per step",
        "memory per device (estimate, GiB)",
        f"  parameters     {m['params']:8.2f}",
        f"  gradients      {m['grads']:8.2f}",
        f"  AdamW state    {m['optimizer']:8.2f}",
        f"  working set    {m['working']:8.2f}",
        f"  activations    {m['activations']:8.2f}",
        f"  logits (fp32)  {m['logits']:8.2f}",
        f"  total          {m['total']:8.2f}   (DDP {p['memory_gib_other_strategy']['ddp']:.2f}, "
        f"FSDP {p['memory_gib_other_strategy']['fsdp']:.2f})",
        f"budget           {p['token_budget']:,.0f} tokens = {p['steps']:,} steps",
        f"throughput       {p['tokens_per_second']:,.0f} tokens/s at the assumed MFU "
        f"({p['flops_per_token'] / 1e9:.2f} GFLOP per token)",
        f"time             {p['hours']:.2f} h wall, {p['gpu_hours']:.1f} GPU-hours, cost {p['cost']:,.2f}",
    ]
    if "suggestion" in p:
        verdict = "fits" if p["fits"] else "does NOT fit"
        lines.append(f"device           {p['device_gib']:.0f} GiB: this configuration {verdict}")
        s = p["suggestion"]
        if s is None:
            lines.append("suggestion       even one sequence does not fit: use FSDP, more devices or a shorter block")
        else:
            lines.append(f"suggestion       micro_batch_size={s[0]} grad_accum_steps={s[1]} "
                         f"({s[0] * p['block_size'] * s[1] * p['world_size']:,} tokens per step)")
    return "\n".join(lines)


def memory_table(block_size: int = 2048, micro_batch: int = 4, world_size: int = 8) -> str:
    """Markdown table of the estimate for every preset under DDP and FSDP (docs/DISTRIBUTED.md)."""
    rows = [f"| preset | params | weights + grads + AdamW, DDP | same, FSDP x{world_size} | activations + logits "
            f"per sequence | total DDP, micro-batch {micro_batch} | total FSDP x{world_size}, micro-batch {micro_batch} |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name in PRESETS:
        cfg = config_from_preset(name)
        t = min(block_size, cfg.max_seq_len)
        ddp = estimate_memory(cfg, micro_batch, t, world_size, "ddp")
        fsdp = estimate_memory(cfg, micro_batch, t, world_size, "fsdp")
        one = estimate_memory(cfg, 1, t, world_size, "ddp")
        states = [(m.params + m.grads + m.optimizer) / GIB for m in (ddp, fsdp)]
        rows.append(f"| {name} (T={t}) | {cfg.num_params() / 1e6:,.1f}M | {states[0]:.2f} | {states[1]:.2f} | "
                    f"{(one.activations + one.logits) / GIB:.2f} | {ddp.total / GIB:.2f} | {fsdp.total / GIB:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":  # regenerate the table in docs/DISTRIBUTED.md
    print(memory_table())


# ---- fine-tuning a given model: `foundry plan HF_DIR --context N --method full|lora` ------------------

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linear_shape(cfg: LlamaConfig, name: str) -> tuple[int, int]:
    """(in, out) of a block's Linear."""
    d, q, kv, inter = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, inter), "up_proj": (d, inter), "down_proj": (inter, d)}[name]


def lora_params(cfg: LlamaConfig, rank: int, targets: tuple[str, ...]) -> int:
    return cfg.n_layer * sum(rank * sum(_linear_shape(cfg, t)) for t in targets if t in LINEARS)


def finetune_activation_bytes_per_token_layer(cfg: LlamaConfig, trains: set[str], lora_rank: int = 0,
                                              lora_targets: tuple[str, ...] = ()) -> int:
    """fp32 bytes autograd saves per token in one block when only the Linears in `trains` (or carrying an
    adapter) need weight gradients: a frozen Linear keeps no copy of its input (the fp32 formula of
    `activation_bytes_per_token_layer` less those inputs), an adapter keeps its rank-r middle."""
    d, inter = cfg.n_embd, cfg.intermediate_size
    needs = trains | set(lora_targets)
    full = activation_bytes_per_token_layer(cfg, "float32")
    dropped = 0
    if not needs & {"q_proj", "k_proj", "v_proj"}:
        dropped += 4 * d  # the attention input (the norm keeps its own)
    if "o_proj" not in needs:
        dropped += 4 * d
    if not needs & {"gate_proj", "up_proj"}:
        dropped += 4 * d
    if "down_proj" not in needs:
        dropped += 4 * inter
    return full - dropped + 4 * lora_rank * sum(1 for t in lora_targets if t in LINEARS)


@dataclass
class FinetuneMemoryEstimate(MemoryEstimate):
    """Bytes at the peak of a fine-tuning step, which is the larger of two moments: the end of the forward
    (every saved activation, one chunk of logits, the projection's gradient the chunked loss holds) and the
    backward (the gradients filling in while the activations are freed; one block recomputed under
    activation checkpointing). Gradients do not exist during the forward: the loop frees them at every
    step (`zero_grad(set_to_none=True)`)."""

    recompute: int = 0  # one block's activations, rebuilt in backward (activation checkpointing)

    @property
    def end_of_forward(self) -> int:
        return self.activations + self.logits + self.working

    @property
    def backward(self) -> int:
        return self.grads + self.working + self.recompute

    @property
    def total(self) -> int:
        return self.params + self.optimizer + max(self.end_of_forward, self.backward)


def estimate_finetune_memory(cfg: LlamaConfig, micro_batch: int, context: int, method: str = "full",
                             activation_checkpointing: bool = False, lora_rank: int = 8,
                             lora_targets: tuple[str, ...] = ("q_proj", "v_proj"), scored_fraction: float = 1.0,
                             fused_optimizer: bool = True, chunk: int | None = None) -> MemoryEstimate:
    """Peak bytes of one fp32 training step of foundry's loop on one device (CPU, or GPU in fp32):

    - weights 4 bytes per parameter (LoRA: plus the adapters); gradients and AdamW's two moments (4 + 8
      bytes) for what trains only; the loop's AdamW is fused (CPU and CUDA), without a temporary (else
      foreach's, the size of what trains); when the embedding trains, one more V x d fp32 gradient: the
      projection's, which the chunked loss holds until backward, then the embedding's dense one (never both);
    - activations: every block's saved tensors, or, with activation checkpointing, each block's input
      (4 d bytes per token), and one block recomputed in full during backward;
    - logits: the loss's vocabulary projection is chunked (`foundry.train.chunked_ce`): one chunk of at
      most `chunk_rows(V)` scored tokens holds its fp32 logits, their log-softmax and gradient (12 V bytes per
      token), whatever the context; `scored_fraction` of the tokens reach it (SFT: the assistant share).
    The peak is the larger of the end of the forward and the backward (`FinetuneMemoryEstimate`).
    """
    if method not in ("full", "lora"):
        raise ConfigError(f"plan: --method must be full or lora, got '{method}'")
    n = cfg.num_params()
    V, d = cfg.vocab_size, cfg.n_embd
    if method == "full":
        trainable, extra, trains, targets = n, 0, set(LINEARS), ()
    else:
        extra = lora_params(cfg, lora_rank, tuple(lora_targets))
        trainable, trains, targets = extra, set(), tuple(lora_targets)
    params = 4 * (n + extra)
    grads, optimizer = 4 * trainable, 8 * trainable
    working = 0 if fused_optimizer else 4 * trainable
    if method == "full":  # one V x d gradient at a time: the projection's (saved by the loss), then the embedding's
        working += 4 * V * d
    tokens = micro_batch * context
    per_layer = finetune_activation_bytes_per_token_layer(cfg, trains, lora_rank if method == "lora" else 0, targets)
    tail = 12 * d  # final norm and the hidden states the loss reads
    recompute = 0
    if activation_checkpointing:
        activations, recompute = tokens * (cfg.n_layer * 4 * d + tail), tokens * per_layer
    else:
        activations = tokens * (cfg.n_layer * per_layer + tail)
    from foundry.train.chunked_ce import chunk_rows

    scored = max(1, int(tokens * scored_fraction))
    logits = 12 * V * min(chunk or chunk_rows(V), scored) + 8 * d * scored  # one chunk, plus the hidden gradient of the scored
    return FinetuneMemoryEstimate(params, grads, optimizer, working, activations, logits, recompute)


def model_config_at(path: str) -> LlamaConfig:
    """The LlamaConfig of a Hugging Face directory (config.json) or a foundry checkpoint / run directory."""
    import json
    from pathlib import Path

    from foundry.errors import CheckpointError

    p = Path(path)
    if (p / "config.json").is_file() and not (p / "model_config.json").is_file():
        from foundry.model.hf import config_from_hf

        try:
            raw = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{p / 'config.json'}: not valid JSON ({exc})") from None
        return config_from_hf(raw, p / "config.json", max_seq_len=int(raw.get("max_position_embeddings", 2048)))
    from foundry.checkpoints import load_model_config, resolve_checkpoint

    return load_model_config(resolve_checkpoint(p))


def plan_finetune(cfg: LlamaConfig, context: int, method: str, activation_checkpointing: bool, micro_batch: int,
                  device_gib: float | None, device_name: str, lora_rank: int = 8,
                  lora_targets: tuple[str, ...] = ("q_proj", "v_proj"), fused_optimizer: bool = True) -> dict:
    mem = estimate_finetune_memory(cfg, micro_batch, context, method, activation_checkpointing, lora_rank,
                                   lora_targets, fused_optimizer=fused_optimizer)
    out = {"params": cfg.num_params(), "method": method, "activation_checkpointing": activation_checkpointing,
           "context": context, "micro_batch": micro_batch, "dtype": "float32", "device": device_name,
           "memory_gib": {**mem.as_gib(), "end_of_forward": mem.end_of_forward / GIB, "backward": mem.backward / GIB}}
    if method == "lora":
        out["lora"] = {"rank": lora_rank, "targets": list(lora_targets),
                       "params": lora_params(cfg, lora_rank, tuple(lora_targets))}
    if device_gib is not None:
        out["device_gib"] = device_gib
        out["fits"] = mem.total <= device_gib * GIB
    return out


def format_finetune_plan(p: dict) -> str:
    m = p["memory_gib"]
    how = p["method"] + (f" (rank {p['lora']['rank']} on {', '.join(p['lora']['targets'])})" if "lora" in p else "")
    lines = [
        f"model            {p['params'] / 1e6:,.1f}M parameters, {p['dtype']}, {how}"
        f"{', activation checkpointing' if p['activation_checkpointing'] else ''}",
        f"batch            {p['micro_batch']} x {p['context']} tokens",
        "memory (estimate, GiB)",
        f"  weights        {m['params']:8.2f}",
        f"  gradients      {m['grads']:8.2f}",
        f"  AdamW state    {m['optimizer']:8.2f}",
        f"  working set    {m['working']:8.2f}",
        f"  activations    {m['activations']:8.2f}",
        f"  logits (chunk) {m['logits']:8.2f}",
        f"  recompute      {m['recompute']:8.2f}   (one block, activation checkpointing)",
        f"  peak           {m['total']:8.2f}   (weights + AdamW + the larger of end of forward "
        f"{m['end_of_forward']:.2f} and backward {m['backward']:.2f})",
    ]
    if "fits" in p:
        lines.append(f"device           {p['device']}, {p['device_gib']:.0f} GiB: {'fits' if p['fits'] else 'does NOT fit'}")
    return "\n".join(lines)
