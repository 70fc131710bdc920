"""Import: one GGUF file -> a Hugging Face directory that `foundry.checkpoints.import_hf` reads (see the
package docstring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foundry.errors import CheckpointError
from foundry.model.gguf.arch import (
    ARCHS, CONTROL, GEMMA3_LOCAL_ROPE_THETA, NORMAL, PRE_TOKENIZERS, SMOLLM3_NO_ROPE_STEP, SWA_PATTERN, UNUSED,
    USER_DEFINED, GGUFArch, gemma_attn_scalar, gguf_module, tensor_names, unpermute_rows,
)
from foundry.utils.io import atomic_write_json


def _field_value(field):
    """A metadata value from the reader's raw parts (the same across gguf versions >= 0.10)."""
    gguf = gguf_module()
    vt = gguf.GGUFValueType

    def one(part, kind):
        if kind == vt.STRING:
            return bytes(part).decode("utf-8")
        value = part[0].item()
        return bool(value) if kind == vt.BOOL else value

    if field.types[0] == vt.ARRAY:
        return [one(field.parts[i], field.types[-1]) for i in field.data]
    return one(field.parts[field.data[0]], field.types[0])


def read_gguf(path: str | Path):
    """`(reader, metadata dict)`, or a one-line CheckpointError for a file that is not GGUF or is cut short."""
    gguf = gguf_module()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {name: _field_value(field) for name, field in reader.fields.items()
                if not name.startswith("GGUF.")}
    except Exception as exc:  # numpy/struct errors from a file cut short or damaged
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: truncated or damaged GGUF file (the reader stopped at: {reason})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise CheckpointError(f"{path}: truncated GGUF file (tensor {t.name} ends past the end of the file)")
    return reader, meta


def gguf_architecture(path: str | Path) -> str:
    return str(read_gguf(path)[1].get("general.architecture"))


def _dequantised(t, path: Path) -> np.ndarray:
    gguf = gguf_module()
    try:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        name = getattr(t.tensor_type, "name", t.tensor_type)
        raise CheckpointError(f"{path}: tensor {t.name} has quantisation type {name}, which the gguf package "
                              "cannot dequantise") from None
    return np.asarray(data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])


def gguf_to_hf(path: str | Path, hf_dir: str | Path) -> Path:
    """One GGUF file -> a transformers directory (float32 safetensors, tokenizer.json rebuilt from the
    vocabulary, tokenizer_config.json with the chat template, generation_config.json with the stop ids)."""
    import torch
    from safetensors.torch import save_file

    path, hf_dir = Path(path), Path(hf_dir)
    reader, meta = read_gguf(path)
    name = meta.get("general.architecture")
    if name not in ARCHS:
        raise CheckpointError(f"{path}: unsupported GGUF architecture '{name}'; supported: {', '.join(ARCHS)}")
    arch = ARCHS[name]

    def key(suffix: str, default=None):
        full = f"{name}.{suffix}" if not suffix.startswith("tokenizer.") else suffix
        if full in meta:
            return meta[full]
        if default is None:
            raise CheckpointError(f"{path}: missing metadata key {full}")
        return default

    tok_model = key("tokenizer.ggml.model")
    if tok_model != "gpt2":
        what = "a SentencePiece ('llama') vocabulary" if tok_model == "llama" else f"tokenizer model '{tok_model}'"
        raise CheckpointError(f"{path}: {what}; only byte-level BPE ('gpt2') vocabularies can be imported")
    pre = key("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: pre-tokenizer '{pre}' is not supported (supported: "
                              f"{', '.join(PRE_TOKENIZERS)})")
    n_layer, n_embd, n_head = key("block_count"), key("embedding_length"), key("attention.head_count")
    n_kv = key("attention.head_count_kv", n_head)
    head_dim = meta.get(f"{name}.attention.key_length") or meta.get(f"{name}.rope.dimension_count") \
        or n_embd // n_head

    to_hf = {gg: hf for hf, gg in tensor_names(arch, n_layer).items()}
    rope_tables = {f"{t}.weight" for t in ("rope_freqs", "rope_factors_long", "rope_factors_short")}
    state, tables = {}, {}
    for t in reader.tensors:
        if t.name in rope_tables and arch.rope_tensor and t.name.startswith(arch.rope_tensor):
            tables[t.name.removesuffix(".weight")] = [float(x) for x in _dequantised(t, path).reshape(-1)]
            continue
        if t.name not in to_hf:
            raise CheckpointError(f"{path}: tensor {t.name} is not in the {name} table")
        w = _dequantised(t, path)
        if arch.permute_qk and t.name.endswith("attn_q.weight"):
            w = unpermute_rows(w, n_head)
        elif arch.permute_qk and t.name.endswith("attn_k.weight"):
            w = unpermute_rows(w, n_kv)
        if arch.norm_shift and t.name.endswith("norm.weight"):
            w = w - np.float32(arch.norm_shift)
        state[to_hf[t.name]] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    if "model.embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: missing tensor token_embd.weight")
    n_vocab = state["model.embed_tokens.weight"].shape[0]

    tokens, types = key("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.token_type") or []
    eos = key("tokenizer.ggml.eos_token_id")
    eot, bos, pad = (meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "bos", "padding"))
    stops = [i for i in dict.fromkeys([eos, eot]) if isinstance(i, int)]
    if any(not 0 <= i < len(tokens) for i in stops + [i for i in (bos, pad) if i is not None]):
        raise CheckpointError(f"{path}: a special token id is outside the {len(tokens)}-token vocabulary")
    tied = "output.weight" not in {t.name for t in reader.tensors}
    config = {
        "architectures": [arch.architecture],
        "model_type": arch.model_type,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": key("context_length"),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "rope_theta": key("rope.freq_base", 10000.0),
        "rope_scaling": _rope_scaling_of(meta, name, tables, key("context_length"), path),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    _arch_config(arch, config, meta, head_dim)
    hf_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_json(hf_dir / "config.json", config)
    atomic_write_json(hf_dir / "generation_config.json", {"bos_token_id": bos, "eos_token_id": stops,
                                                          "pad_token_id": pad})
    (hf_dir / "tokenizer.json").write_text(
        _tokenizer_json(tokens, types, key("tokenizer.ggml.merges"), pre, path), encoding="utf-8")
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos],
        "pad_token": tokens[pad] if pad is not None else None,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    if isinstance(meta.get("tokenizer.chat_template"), str):
        tok_cfg["chat_template"] = meta["tokenizer.chat_template"]
    atomic_write_json(hf_dir / "tokenizer_config.json", tok_cfg)
    return hf_dir


def _rope_scaling_of(meta: dict, name: str, tables: dict, context: int, path: Path) -> dict | None:
    """transformers' rope_scaling of a file's rope metadata and tables: linear and YaRN from rope.scaling.*,
    Llama 3's per-dimension divisors (rope_freqs) as the longrope of one factor list with no attention scaling
    (the same frequencies: the bands' parameters are not recoverable from them), Phi-3's pair as longrope."""
    kind = meta.get(f"{name}.rope.scaling.type", "none")
    factor = meta.get(f"{name}.rope.scaling.factor")
    original = meta.get(f"{name}.rope.scaling.original_context_length") or context
    if "rope_factors_long" in tables or "rope_factors_short" in tables:
        long, short = tables.get("rope_factors_long"), tables.get("rope_factors_short")
        if long is None or short is None:
            raise CheckpointError(f"{path}: rope_factors_long and rope_factors_short come as a pair")
        attention = meta.get(f"{name}.rope.scaling.attn_factor", 1.0)
        return {"rope_type": "longrope", "long_factor": long, "short_factor": short, "attention_factor": attention,
                "original_max_position_embeddings": original}
    if "rope_freqs" in tables:
        if kind not in ("none", None):
            raise CheckpointError(f"{path}: rope_freqs together with rope scaling '{kind}' is not supported")
        return {"rope_type": "longrope", "long_factor": tables["rope_freqs"], "short_factor": tables["rope_freqs"],
                "factor": 1.0, "attention_factor": 1.0, "original_max_position_embeddings": context}
    if kind in ("none", None):
        return None
    if kind not in ("linear", "yarn") or not isinstance(factor, (int, float)):
        raise CheckpointError(f"{path}: rope scaling '{kind}' is not supported (linear, yarn with a factor)")
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}


def _arch_config(arch: GGUFArch, config: dict, meta: dict, head_dim: int) -> None:
    """The family's own config.json keys, from what llama.cpp reads or hard-codes for the architecture."""
    name, n = arch.name, config["num_hidden_layers"]

    def window(default=None):
        return meta.get(f"{name}.attention.sliding_window", default) or None

    if name in SWA_PATTERN:
        pattern = SWA_PATTERN[name]
        scalar = gemma_attn_scalar(name, n, config["hidden_size"], config["num_attention_heads"], head_dim)
        config.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=scalar,
                      sliding_window=window(4096 if name == "gemma2" else None),
                      layer_types=["sliding_attention" if i % pattern < pattern - 1 else "full_attention"
                                   for i in range(n)],
                      final_logit_softcapping=meta.get(f"{name}.final_logit_softcapping", 30.0)
                      if name == "gemma2" else None)
        del config["hidden_act"]
        if name == "gemma2":
            config["attn_logit_softcapping"] = meta.get(f"{name}.attn_logit_softcapping", 50.0)
        else:
            config.update(attn_logit_softcapping=None,
                          rope_local_base_freq=meta.get(f"{name}.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_THETA))
    elif name == "phi3":
        rope_dims = meta.get(f"{name}.rope.dimension_count", head_dim)
        config.update(partial_rotary_factor=rope_dims / head_dim, sliding_window=window(),
                      original_max_position_embeddings=meta.get(f"{name}.rope.scaling.original_context_length",
                                                                config["max_position_embeddings"]))
    elif name == "smollm3":
        config.update(no_rope_layers=[int((i + 1) % SMOLLM3_NO_ROPE_STEP != 0) for i in range(n)],
                      no_rope_layer_interval=SMOLLM3_NO_ROPE_STEP, use_sliding_window=False, sliding_window=None)


def _tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str, path: Path) -> str:
    """A byte-level BPE tokenizer.json from GGUF's tokens (byte-level spelling), merges and pre-tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    split, ignore_merges = PRE_TOKENIZERS[pre]
    types = list(types) + [NORMAL] * (len(tokens) - len(types))
    # the trailing ids llama.cpp's converter pads the vocabulary with are no tokens
    size = len(tokens)
    while size and types[size - 1] == UNUSED:
        size -= 1
    vocab = {tokens[i]: i for i in range(size) if types[i] != UNUSED}
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"{path}: merge {m!r} is not two tokens separated by a space")
        pairs.append((parts[0], parts[1]))
    try:
        hf = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    except Exception as exc:  # a merge naming a token outside the vocabulary
        raise CheckpointError(f"{path}: the BPE vocabulary and merges do not fit ({str(exc)[:160]})") from None
    if split is None:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i in range(size) if types[i] == CONTROL])
    hf.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i in range(size) if types[i] == USER_DEFINED])
    return hf.to_str()
