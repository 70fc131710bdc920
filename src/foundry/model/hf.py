"""Hugging Face interchange: `foundry export --format hf` and `foundry import`.

Design choices:
- Our state-dict keys are exactly `LlamaForCausalLM`'s, so export and import are a config mapping plus
  a safetensors copy; no tensor is renamed.
- Tied embeddings are stored once (`model.embed_tokens.weight`) with `tie_word_embeddings: true`, which
  is what transformers expects; an untied model stores `lm_head.weight` as well.
- A model with q/k/v biases (imported from Qwen2) is exported as `LlamaForCausalLM` with
  `attention_bias: true` and an all-zero `o_proj.bias`, because transformers' Llama puts a bias on all
  four projections; the logits are identical. A model with QK-norm is exported as `Qwen3ForCausalLM`
  (Llama's layout plus `self_attn.q_norm` / `k_norm`), and a squared-ReLU gate keeps `hidden_act: relu2`.
- Import reads safetensors only (single file or sharded with `model.safetensors.index.json`), never
  pickled `pytorch_model.bin`. The context length is capped (default 4096) and also to a Mistral
  sliding window, so sliding-window attention never comes into play and full attention is exact.
- Features we cannot run exactly are refused by name: rope scaling, an MLP bias, an activation other than silu or relu2,
  an unknown architecture.
- The imported tokenizer.json is kept byte for byte; its special tokens (which are not foundry's seven)
  are recorded in `tokenizer_config.json` under `foundry_special_tokens` for `Tokenizer.load`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from foundry.errors import CheckpointError, ConfigError
from foundry.model.llama import MLP_ACTIVATIONS, Llama, LlamaConfig
from foundry.utils.io import atomic_directory, atomic_write_json, read_json

# model_type -> architecture name written by transformers' save_pretrained.
SUPPORTED = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "qwen3": "Qwen3ForCausalLM"}
DEFAULT_MAX_SEQ_LEN = 4096


# ---- export --------------------------------------------------------------------------------------
def hf_config_dict(config: LlamaConfig, tokenizer, dtype: torch.dtype) -> dict:
    """transformers `LlamaConfig` fields for our config (rope written in both the 4.x and 5.x forms); with
    QK-norm, `Qwen3Config`'s, whose attention is Llama's plus the per-head q/k RMSNorm."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    model_type = "qwen3" if config.qk_norm else "llama"
    return {
        "architectures": [SUPPORTED[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": config.mlp_act,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
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
        **({"use_sliding_window": False, "sliding_window": None} if config.qk_norm else {}),
    }


def stop_token_ids(tokenizer) -> list[int]:
    """End of document, end of turn and the model's own stop tokens: the ids generation stops at."""
    return [i for i in tokenizer.stop_ids if i is not None]


def export_hf(model: Llama, tokenizer, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a directory that `AutoModelForCausalLM/AutoTokenizer.from_pretrained` load offline."""
    from safetensors.torch import save_file

    config = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it from embed_tokens
    if config.attention_bias:
        dtype0 = state["model.embed_tokens.weight"].dtype
        for i in range(config.n_layer):
            state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(config.n_embd, dtype=dtype0)
    dtype = state["model.embed_tokens.weight"].dtype
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config_dict(config, tokenizer, dtype))
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        atomic_write_json(tmp / "generation_config.json", {
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": stop_token_ids(tokenizer),
            "pad_token_id": pad,
        })
        tokenizer.save(tmp)  # tokenizer.json + tokenizer_config.json with the chat template
    return Path(out_dir)


# ---- import --------------------------------------------------------------------------------------
def _rope(cfg: dict, path: Path) -> float:
    """rope_theta, refusing any scaled rope (transformers 4.x `rope_scaling`, 5.x `rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for block in (params, scaling):
        kind = block.get("rope_type", block.get("type", "default"))
        if kind not in (None, "default"):
            raise CheckpointError(f"{path}: rope scaling '{kind}' is not supported (only plain rotary embeddings)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def config_from_hf(cfg: dict, path: Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> LlamaConfig:
    """Map a transformers config.json (Llama, Mistral, Qwen2) to ours, or refuse what we cannot run."""
    try:
        return _map_hf_config(cfg, path, max_seq_len)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a field of the wrong type or shape
        raise CheckpointError(f"{path}: not a valid config ({type(exc).__name__}: {exc})") from None


def _map_hf_config(cfg: dict, path: Path, max_seq_len: int) -> LlamaConfig:
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or [SUPPORTED.get(model_type, str(model_type))]
    if model_type not in SUPPORTED or any(a not in SUPPORTED.values() for a in archs):
        raise CheckpointError(f"{path}: unsupported architecture {archs[0] if archs else model_type} "
                              f"(model_type '{model_type}'); supported: {', '.join(SUPPORTED.values())}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise CheckpointError(f"{path}: missing or non-integer '{key}'")
    if cfg.get("hidden_act", "silu") not in MLP_ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_act '{cfg['hidden_act']}' is not supported "
                              f"(only {', '.join(MLP_ACTIVATIONS)})")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{path}: mlp_bias is not supported")
    theta = _rope(cfg, path)
    n_head = cfg["num_attention_heads"]
    limit = min(int(cfg.get("max_position_embeddings") or max_seq_len), max_seq_len)
    window = cfg.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and window and cfg.get("use_sliding_window") \
            and cfg.get("max_window_layers", 0) < cfg["num_hidden_layers"]:
        # Qwen2 mixes full and sliding layers here; refuse rather than silently change its attention.
        raise CheckpointError(f"{path}: sliding window attention on some layers (use_sliding_window with "
                              "max_window_layers < num_hidden_layers) is not supported")
    if model_type == "mistral" and window:
        limit = min(limit, int(window))  # within the window, sliding attention equals full attention
    bias = bool(cfg.get("attention_bias", False)) or model_type == "qwen2"
    try:
        return LlamaConfig(
            vocab_size=cfg["vocab_size"],
            n_layer=cfg["num_hidden_layers"],
            n_head=n_head,
            n_kv_head=cfg.get("num_key_value_heads") or n_head,
            n_embd=cfg["hidden_size"],
            intermediate_size=cfg.get("intermediate_size") or 0,
            head_dim=cfg.get("head_dim") or 0,
            max_seq_len=limit,
            rope_theta=theta,
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bias,
            qk_norm=model_type == "qwen3",
            mlp_act=cfg.get("hidden_act", "silu"),
            init_std=float(cfg.get("initializer_range", 0.02)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _weight_files(hf_dir: Path) -> list[Path]:
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard file(s) missing: {', '.join(missing)}")
        return files
    pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (hf_dir / n).exists()]
    hint = (f"; found {pickled[0]}, which foundry never unpickles: re-save it with safetensors "
            "(save_pretrained(..., safe_serialization=True))") if pickled else ""
    raise CheckpointError(f"{hf_dir}: missing weights file model.safetensors "
                          f"(or model.safetensors.index.json){hint}")


def load_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(hf_dir):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({str(exc)[:200]})") from None
    return state


def import_hf_model(hf_dir: str | Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN):
    """Read a local transformers checkpoint directory -> (Llama in float32, tokenizer.json text). The tokenizer
    object (its special tokens by foundry role, its chat template, its stop tokens) is built by the checkpoint
    store (`foundry.checkpoints.import_hf`, through `Tokenizer.from_hf_directory`), so the model needs no
    data code."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: not a directory")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (not a Hugging Face model directory)")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    config = config_from_hf(cfg, cfg_path, max_seq_len)
    tok_path = hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: missing; only fast tokenizers (tokenizer.json) can be imported")
    state = load_hf_state(hf_dir)

    model = Llama(config)
    expected = dict(model.state_dict())
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        state.pop("lm_head.weight", None)  # some exporters store the tied copy too
    extra = sorted(set(state) - set(expected))
    o_bias = [k for k in extra if k.endswith("self_attn.o_proj.bias")]
    if o_bias:  # Llama with attention_bias: an o_proj bias we can drop only if it is zero
        if any(state[k].abs().max() > 0 for k in o_bias):
            raise CheckpointError(f"{hf_dir}: non-zero o_proj biases are not supported")
        extra = [k for k in extra if k not in o_bias]
    missing = sorted(set(expected) - set(state))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]}")
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s) e.g. {extra[0]}")
        raise CheckpointError(f"{hf_dir}: weights do not fit the config ({'; '.join(parts)})")
    with torch.no_grad():
        for key, target in expected.items():
            src = state[key]
            if tuple(src.shape) != tuple(target.shape):
                raise CheckpointError(f"{hf_dir}: tensor {key} has shape {tuple(src.shape)}, "
                                      f"config implies {tuple(target.shape)}")
            target.copy_(src.to(torch.float32))

    try:
        text = tok_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{tok_path}: not a valid tokenizer.json ({exc})") from None
    return model, text
