"""The family registry: each transformers decoder family foundry runs exactly, as a configuration of the one
`Llama` (LitGPT's single-GPT design), with the mapping of its config.json and weights to and from ours.

Design choices:
- A family is a row here, never a model class: `import_config` turns its config.json into `LlamaConfig`
  switches, `export_config` writes them back, and `import_weights` / `export_weights` rename tensors. State-dict
  keys are transformers' own for every family, so only Phi-3's fused `qkv_proj` and `gate_up_proj` are
  split on import and fused again on export.
- `LlamaConfig.family` remembers the model_type, so an export writes the class the model came from (a Gemma 2
  import exports as Gemma2ForCausalLM). foundry's own models are family "llama" (QK-norm ones export as Qwen3).
- Everything a family's modeling file does is matched against it (tests/model/test_hf_families.py: logits, loss,
  greedy tokens through the engine, export within 1e-4 in float32); a config this module cannot run exactly
  is a one-line CheckpointError that names it, and an architecture outside the registry (mixture-of-experts
  included) is refused with the list of what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from foundry.errors import CheckpointError
from foundry.model.llama import MLP_ACTIVATIONS, ROPE_TYPES, LlamaConfig

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the transformers class an export names in config.json
    import_config: Callable[[dict, dict], None] = lambda cfg, kw: None  # config.json -> LlamaConfig kwargs (in place)
    export_config: Callable[[LlamaConfig, dict], None] = lambda config, out: None  # ours -> config.json (in place)
    import_weights: Callable[[dict, LlamaConfig], dict] = lambda state, config: state
    export_weights: Callable[[dict, LlamaConfig], dict] = lambda state, config: state
    defaults: dict = field(default_factory=dict)  # transformers' defaults for config.json keys it may omit


def layer_types(config: LlamaConfig) -> list[str]:
    return [SLIDING if config.layer_window(i) else FULL for i in range(config.n_layer)]


def _sliding_layers(types: list, n_layer: int, path) -> list[int]:
    if not isinstance(types, list) or len(types) != n_layer or any(t not in (SLIDING, FULL) for t in types):
        raise CheckpointError(f"{path}: layer_types must list {n_layer} of {SLIDING!r} / {FULL!r}, got {types!r}")
    return [i for i, t in enumerate(types) if t == SLIDING]


def _window(kw: dict, window, layers: list[int] | None) -> None:
    """Record a sliding window (None or 0: none) on `layers` (None: all)."""
    if window and (layers is None or layers):
        kw["sliding_window"], kw["sliding_layers"] = int(window), layers


# ---- per-family switches -------------------------------------------------------------------------------
def _mistral_in(cfg, kw):
    _window(kw, cfg.get("sliding_window"), None)


def _mistral_out(config, out):
    out["sliding_window"] = config.sliding_window or None


def _qwen_in(cfg, kw):
    """Qwen2 / Qwen3: the window applies only with use_sliding_window, on layer_types' sliding layers (default:
    layers from max_window_layers on)."""
    if not cfg.get("use_sliding_window") or not cfg.get("sliding_window"):
        return
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or [SLIDING if i >= cfg.get("max_window_layers", 28) else FULL for i in range(n)]
    _window(kw, cfg["sliding_window"], _sliding_layers(types, n, kw["_path"]))


def _qwen3_in(cfg, kw):
    kw["qk_norm"] = True
    _qwen_in(cfg, kw)


def _qwen_out(config, out):
    sliding = bool(config.sliding_window) and config.layer_window(config.n_layer - 1) > 0
    first = next((i for i in range(config.n_layer) if config.layer_window(i)), config.n_layer)
    out.update(use_sliding_window=bool(config.sliding_window), sliding_window=config.sliding_window or None,
               max_window_layers=first if sliding else config.n_layer, layer_types=layer_types(config))


def _gemma_in(cfg, kw):
    """Gemma 2 / 3: (1 + w) norms before and after attention and MLP, sqrt(hidden) embedding scale, GeGLU,
    query_pre_attn_scalar, soft-caps (Gemma 3's attention ignores attn_logit_softcapping in transformers),
    sliding layers interleaved with global ones (Gemma 3: with a rope base of their own)."""
    gemma3 = cfg["model_type"] == "gemma3_text"
    n = cfg["num_hidden_layers"]

    def cap(key, default):  # a soft-cap, transformers' default where config.json omits it; None: off
        return float(cfg.get(key, default) or 0.0)

    kw.update(norm_placement="both", norm_offset=1.0, norm_fp32_scale=True, embed_scale=cfg["hidden_size"] ** 0.5,
              attn_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5, qk_norm=gemma3,
              final_softcap=cap("final_logit_softcapping", None if gemma3 else 30.0),
              attn_softcap=0.0 if gemma3 else cap("attn_logit_softcapping", 50.0),
              tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    pattern = cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6 if gemma3 else 2))
    types = cfg.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
    _window(kw, cfg.get("sliding_window", 4096), _sliding_layers(types, n, kw["_path"]))
    if gemma3 and kw.get("sliding_window"):
        kw["local_rope_theta"] = kw.pop("_local_theta")
    if cfg.get("use_bidirectional_attention"):
        raise CheckpointError(f"{kw['_path']}: use_bidirectional_attention (an encoder) is not supported")


def _gemma_out(config, out):
    gemma3 = config.family == "gemma3_text"
    out.update(hidden_activation=out.pop("hidden_act"), query_pre_attn_scalar=round(config.attn_scale ** -2),
               final_logit_softcapping=config.final_softcap or None,
               attn_logit_softcapping=None if gemma3 else config.attn_softcap or None,
               sliding_window=config.sliding_window or None, layer_types=layer_types(config))
    if gemma3:  # rope per layer type: the global one (maybe scaled) and the sliding layers' plain one
        local = config.local_rope_theta or config.rope_theta
        out["rope_parameters"] = {FULL: out["rope_parameters"], SLIDING: {"rope_type": "default", "rope_theta": local}}
        out["rope_local_base_freq"] = local
        out["use_bidirectional_attention"] = False


def _olmo2_in(cfg, kw):
    kw.update(norm_placement="post", qk_norm=True, qk_norm_scope="projection", norm_fp32_scale=True)


def _smollm3_in(cfg, kw):
    n = cfg["num_hidden_layers"]
    interval = cfg.get("no_rope_layer_interval", 4)
    use_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(use_rope) != n:
        raise CheckpointError(f"{kw['_path']}: no_rope_layers must have {n} entries, got {len(use_rope)}")
    kw["nope_layers"] = [i for i, r in enumerate(use_rope) if not r]
    if cfg.get("use_sliding_window") and cfg.get("sliding_window"):
        types = cfg.get("layer_types") or [SLIDING if not r else FULL for r in use_rope]
        _window(kw, cfg["sliding_window"], _sliding_layers(types, n, kw["_path"]))


def _smollm3_out(config, out):
    out.update(no_rope_layers=[int(i not in config.nope_layers) for i in range(config.n_layer)],
               use_sliding_window=bool(config.sliding_window), sliding_window=config.sliding_window or None,
               layer_types=layer_types(config), mlp_bias=False)


def _phi3_in(cfg, kw):
    _window(kw, cfg.get("sliding_window"), None)  # transformers' Phi-3 masks every layer to its window


def _phi3_out(config, out):
    out.update(sliding_window=config.sliding_window or None, partial_rotary_factor=config.partial_rotary,
               resid_pdrop=0.0, embd_pdrop=0.0)
    out["rope_parameters"]["partial_rotary_factor"] = config.partial_rotary
    if "original_max_position_embeddings" in out["rope_parameters"]:
        out["original_max_position_embeddings"] = out["rope_parameters"]["original_max_position_embeddings"]


def _phi3_split(state: dict, config: LlamaConfig) -> dict:
    """Phi-3's fused qkv_proj (q, k, v rows in that order) and gate_up_proj (gate, then up) -> Llama's four."""
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    out = {}
    for key, value in state.items():
        if key.endswith("self_attn.qkv_proj.weight"):
            stem = key.removesuffix("qkv_proj.weight")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.split([q, kv, kv], dim=0)):
                out[f"{stem}{name}.weight"] = part.clone()
        elif key.endswith("mlp.gate_up_proj.weight"):
            stem = key.removesuffix("gate_up_proj.weight")
            gate, up = value.chunk(2, dim=0)
            out[f"{stem}gate_proj.weight"], out[f"{stem}up_proj.weight"] = gate.clone(), up.clone()
        else:
            out[key] = value
    return out


def _phi3_fuse(state: dict, config: LlamaConfig) -> dict:
    out = {}
    for key, value in state.items():
        if key.endswith("self_attn.q_proj.weight"):
            stem = key.removesuffix("q_proj.weight")
            out[f"{stem}qkv_proj.weight"] = torch.cat(
                [state[f"{stem}{n}_proj.weight"] for n in ("q", "k", "v")], dim=0)
        elif key.endswith("mlp.gate_proj.weight"):
            stem = key.removesuffix("gate_proj.weight")
            out[f"{stem}gate_up_proj.weight"] = torch.cat([value, state[f"{stem}up_proj.weight"]], dim=0)
        elif not key.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")):
            out[key] = value
    return out


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM"),
    Family("mistral", "MistralForCausalLM", _mistral_in, _mistral_out),
    Family("qwen2", "Qwen2ForCausalLM", _qwen_in, _qwen_out),
    Family("qwen3", "Qwen3ForCausalLM", _qwen3_in, _qwen_out),
    Family("gemma2", "Gemma2ForCausalLM", _gemma_in, _gemma_out),
    Family("gemma3_text", "Gemma3ForCausalLM", _gemma_in, _gemma_out),
    Family("phi3", "Phi3ForCausalLM", _phi3_in, _phi3_out, _phi3_split, _phi3_fuse),
    Family("olmo2", "Olmo2ForCausalLM", _olmo2_in),
    Family("smollm3", "SmolLM3ForCausalLM", _smollm3_in, _smollm3_out),
)}


def supported() -> str:
    return ", ".join(f"{f.architecture} ({t})" for t, f in FAMILIES.items())


def family_of(cfg: dict, path) -> Family:
    """The registry row for a config.json, or a one-line CheckpointError naming it and what is supported."""
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or [str(model_type)]
    family = FAMILIES.get(model_type)
    if family is None or any(a != family.architecture for a in archs):
        raise CheckpointError(f"{path}: unsupported architecture {archs[0] if archs else model_type} "
                              f"(model_type '{model_type}'); supported: {supported()}")
    return family


def export_family(config: LlamaConfig) -> Family:
    """The family an export writes: the one the model came from; foundry's QK-norm models as Qwen3."""
    if config.family == "llama" and config.qk_norm:
        return FAMILIES["qwen3"]
    if config.family not in FAMILIES:
        raise CheckpointError(f"model family '{config.family}' has no transformers export; supported: {supported()}")
    return FAMILIES[config.family]


# ---- rope ----------------------------------------------------------------------------------------------
def _rope_block(params: dict | None) -> tuple[str, dict]:
    params = dict(params or {})
    kind = params.pop("rope_type", params.pop("type", "default")) or "default"
    return kind, params


def import_rope(cfg: dict, kw: dict, path, max_positions: int) -> None:
    """rope_theta, rope_scaling and partial_rotary from transformers 5.x `rope_parameters` or 4.x `rope_theta`
    + `rope_scaling`; Gemma 3's are per layer type."""
    params = cfg.get("rope_parameters") or {}
    if cfg["model_type"] == "gemma3_text":
        local = params.get(SLIDING) or {"rope_theta": cfg.get("rope_local_base_freq", 10000.0)}
        kind, rest = _rope_block(local)
        if kind != "default":
            raise CheckpointError(f"{path}: rope scaling '{kind}' on sliding layers is not supported")
        kw["_local_theta"] = float(rest.get("rope_theta", 10000.0))
        params = params.get(FULL) or {"rope_theta": cfg.get("rope_theta", 1e6)}
    if cfg.get("rope_scaling"):
        params = {**params, **cfg["rope_scaling"]}
    kind, rest = _rope_block(params)
    if cfg["model_type"] == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"  # Phi-3's old names for it, as transformers' Phi3Config reads them
    if kind not in ROPE_TYPES:
        raise CheckpointError(f"{path}: rope scaling '{kind}' is not supported "
                              f"(supported: {', '.join(ROPE_TYPES)})")
    kw["rope_theta"] = float(rest.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = rest.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0
    if partial != 1.0:
        if cfg["model_type"] != "phi3":
            raise CheckpointError(f"{path}: partial_rotary_factor {partial} is supported for Phi-3 only")
        kw["partial_rotary"] = float(partial)
    if kind == "default":
        return
    if kind in ("llama3", "yarn", "longrope"):
        if cfg.get("original_max_position_embeddings") and cfg["model_type"] == "phi3":
            rest["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        rest.setdefault("original_max_position_embeddings", max_positions)
    if kind == "yarn" and not rest.get("factor"):  # transformers' fallback: the context's growth
        rest["factor"] = max_positions / rest["original_max_position_embeddings"]
    if kind in ("linear", "dynamic", "llama3") and not isinstance(rest.get("factor"), (int, float)):
        raise CheckpointError(f"{path}: rope scaling '{kind}' needs a numeric 'factor'")
    if kind in ("dynamic", "longrope"):
        rest["max_position_embeddings"] = max_positions  # the trained context these two are defined against
    kw["rope_scaling"] = {"rope_type": kind, **rest}


def export_rope(config: LlamaConfig) -> dict:
    scaling = dict(config.rope_scaling or {"rope_type": "default"})
    scaling.pop("max_position_embeddings", None)
    return {**scaling, "rope_theta": config.rope_theta}


# ---- config.json <-> LlamaConfig -----------------------------------------------------------------------
def import_config(cfg: dict, path: Path, max_seq_len: int) -> LlamaConfig:
    family = family_of(cfg, path)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise CheckpointError(f"{path}: missing or non-integer '{key}'")
    act = cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"
    if family.model_type.startswith("gemma"):
        act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in MLP_ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_act '{act}' is not supported (only {', '.join(MLP_ACTIVATIONS)})")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{path}: mlp_bias is not supported")
    n_head = cfg["num_attention_heads"]
    positions = int(cfg.get("max_position_embeddings") or max_seq_len)
    # q/k/v biases: Qwen2 always, Mistral never, the rest by attention_bias, which also biases o_proj
    bias = family.model_type == "qwen2" or (bool(cfg.get("attention_bias")) and family.model_type != "mistral")
    kw = dict(
        vocab_size=cfg["vocab_size"], n_layer=cfg["num_hidden_layers"], n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head, n_embd=cfg["hidden_size"],
        intermediate_size=cfg.get("intermediate_size") or 0, head_dim=cfg.get("head_dim") or 0,
        max_seq_len=min(positions, max_seq_len), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), attention_bias=bias,
        o_bias=bias and family.model_type != "qwen2", mlp_act=act,
        init_std=float(cfg.get("initializer_range", 0.02)), family=family.model_type, _path=path,
    )
    import_rope(cfg, kw, path, positions)
    family.import_config(cfg, kw)
    kw.pop("_path"), kw.pop("_local_theta", None)
    return LlamaConfig(**kw)


def export_config(config: LlamaConfig, tokenizer, dtype: torch.dtype) -> dict:
    family = export_family(config)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    rope = export_rope(config)
    out = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": config.mlp_act,
        "max_position_embeddings": (config.rope_scaling or {}).get("max_position_embeddings", config.max_seq_len),
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "attention_bias": config.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": pad,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    family.export_config(config, out)
    rope = out["rope_parameters"].get(FULL, out["rope_parameters"])  # Gemma 3: the global layers' (4.x form)
    out["rope_scaling"] = None if rope["rope_type"] == "default" else dict(rope)
    return out


def check_exportable(config: LlamaConfig) -> None:
    """Refuse a config its export family's transformers class would compute differently (a foundry model
    trained with switches that family lacks)."""
    family = export_family(config).model_type
    if family in ("llama", "qwen3", "qwen2", "mistral", "phi3", "smollm3") and (
            config.norm_placement != "pre" or config.norm_offset or config.embed_scale != 1.0 or config.attn_scale
            or config.attn_softcap or config.final_softcap):
        raise CheckpointError(f"model family '{family}' cannot express Gemma/OLMo switches; not exportable")
    if config.o_bias and not config.attention_bias:
        raise CheckpointError("an o_proj bias without q/k/v biases has no transformers equivalent")
    if config.partial_rotary != 1.0 and family != "phi3":
        raise CheckpointError(f"partial rotary is Phi-3's; model family '{family}' cannot express it")
    if config.nope_layers and family != "smollm3":
        raise CheckpointError(f"layers without rope are SmolLM3's; model family '{family}' cannot express them")
    if config.sliding_window and family in ("llama", "olmo2"):
        raise CheckpointError(f"model family '{family}' has no sliding window in transformers")
