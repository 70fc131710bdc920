"""Hugging Face interchange: `foundry export --format hf` and `foundry import`.

Design choices:
- Every family is a configuration of the one `Llama`; `foundry.model.families` is the registry that maps a
  transformers model_type's config.json to `LlamaConfig` and back and renames weights (only Phi-3's fused
  projections change shape). State-dict keys are transformers' own, so export and import are a config mapping
  plus a safetensors copy. An export writes the class the model came from (docs/MODELS.md).
- Tied embeddings are stored once (`model.embed_tokens.weight`) with `tie_word_embeddings: true`, which
  is what transformers expects; an untied model stores `lm_head.weight` as well.
- A foundry model with q/k/v biases but none on o_proj exports with an all-zero `o_proj.bias` where the class
  biases all four projections (Llama, Qwen3); the logits are identical. foundry's own QK-norm models export as
  `Qwen3ForCausalLM`, and a squared-ReLU gate keeps `hidden_act: relu2`.
- Import reads safetensors only (single file or sharded with `model.safetensors.index.json`), never
  pickled `pytorch_model.bin`. The context length is capped (default 4096); sliding windows are computed
  (masked in attention and in the KV caches), never avoided by a shorter context.
- Features we cannot run exactly are refused by name: an unknown rope type, an MLP bias, an activation we lack,
  an architecture outside the registry (mixture-of-experts included).
- The imported tokenizer.json is kept byte for byte; its special tokens (which are not foundry's seven)
  are recorded in `tokenizer_config.json` under `foundry_special_tokens` for `Tokenizer.load`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from foundry.errors import CheckpointError, ConfigError
from foundry.model import families
from foundry.model.llama import Llama, LlamaConfig
from foundry.utils.io import atomic_directory, atomic_write_json, read_json

# model_type -> architecture name written by transformers' save_pretrained.
SUPPORTED = {t: f.architecture for t, f in families.FAMILIES.items()}
DEFAULT_MAX_SEQ_LEN = 4096


# ---- export --------------------------------------------------------------------------------------
def hf_config_dict(config: LlamaConfig, tokenizer, dtype: torch.dtype) -> dict:
    """The transformers config.json of our config, for the family it exports as (rope written in both the 4.x
    and 5.x forms)."""
    return families.export_config(config, tokenizer, dtype)


def stop_token_ids(tokenizer) -> list[int]:
    """End of document, end of turn and the model's own stop tokens: the ids generation stops at."""
    return [i for i in tokenizer.stop_ids if i is not None]


def export_hf(model: Llama, tokenizer, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a directory that `AutoModelForCausalLM/AutoTokenizer.from_pretrained` load offline."""
    from safetensors.torch import save_file

    config = model.config
    families.check_exportable(config)
    family = families.export_family(config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it from embed_tokens
    if config.attention_bias and not config.o_bias and family.model_type != "qwen2":
        dtype0 = state["model.embed_tokens.weight"].dtype
        for i in range(config.n_layer):
            state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(config.n_embd, dtype=dtype0)
    state = family.export_weights(state, config)
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
def config_from_hf(cfg: dict, path: Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> LlamaConfig:
    """Map a transformers config.json of a registered family to ours, or refuse what we cannot run."""
    try:
        return families.import_config(cfg, path, max_seq_len)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a field of the wrong type or shape
        raise CheckpointError(f"{path}: not a valid config ({type(exc).__name__}: {exc})") from None


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
    state = families.family_of(cfg, cfg_path).import_weights(load_hf_state(hf_dir), config)

    try:
        with torch.device("meta"):  # parameters without storage: the loaded tensors become them (one copy)
            model = Llama(config)
    except ConfigError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None
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
    for key, target in expected.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise CheckpointError(f"{hf_dir}: tensor {key} has shape {tuple(state[key].shape)}, "
                                  f"config implies {tuple(target.shape)}")
    # each tensor is cast (a no-op for float32 files) and dropped from `state` as it goes, so the peak is one
    # model, not the loaded weights plus a randomly initialised copy
    model.load_state_dict({key: state.pop(key).to(torch.float32) for key in list(expected)}, strict=False,
                          assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:  # a family whose weight mapping misses a tensor: never hand back a model without storage
        raise CheckpointError(f"{hf_dir}: no weights for {len(left)} tensor(s) e.g. {left[0]}")

    try:
        text = tok_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{tok_path}: not a valid tokenizer.json ({exc})") from None
    return model, text
