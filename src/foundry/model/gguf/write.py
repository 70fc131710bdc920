"""Export: a foundry model, or a Hugging Face directory, -> one GGUF file (see the package docstring)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from foundry.errors import CheckpointError
from foundry.model.gguf.arch import (
    ARCHS, CONTROL, END_OF_TURN_TOKENS, GEMMA3_LOCAL_ROPE_THETA, MODEL_TYPES, NORMAL, PRE_TOKENIZERS, QUANTS,
    SMOLLM3_NO_ROPE_STEP, SWA_PATTERN, UNUSED, USER_DEFINED, GGUFArch, gemma_attn_scalar, gguf_module,
    permute_rows, rope_kind, tensor_names,
)
from foundry.utils.hf_files import chat_template_of, read_tokenizer_config
from foundry.utils.io import fsync_dir, read_json


def export_gguf(model, tokenizer, out: str | Path, quant: str = "f16", overwrite: bool = False) -> Path:
    """A foundry model + tokenizer -> `out` (.gguf), through `export_hf` into a temporary directory."""
    from foundry.model.hf import export_hf

    out = Path(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        hf_dir = export_hf(model, tokenizer, Path(tmp) / "hf")
        try:
            return hf_to_gguf(hf_dir, out, quant=quant, overwrite=overwrite, name=out.stem)
        except CheckpointError as exc:  # name the output, not the temporary directory
            message = str(exc).replace(f"{hf_dir}/", "").replace(str(hf_dir), "the model")
            raise CheckpointError(message if message.startswith(str(out)) else f"{out}: {message}") from None


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise CheckpointError(f"{out}: is a directory; a GGUF export is one file")


def _arch_for(cfg: dict, state: dict, where: Path):
    """The GGUF architecture of a config.json, and its switches as foundry reads them (`LlamaConfig`), or a
    one-line refusal naming the family and what llama.cpp's form of it lacks."""
    from foundry.model.hf import config_from_hf

    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type '{model_type}' has no GGUF architecture here; supported: "
                              f"{', '.join(MODEL_TYPES)}")
    gemma = model_type.startswith("gemma")
    act, expected = (cfg.get("hidden_activation"), "gelu_pytorch_tanh") if gemma else (cfg.get("hidden_act"), "silu")
    if (act or expected) != expected:
        raise CheckpointError(f"{where}: hidden_act '{act}' has no GGUF equivalent "
                              f"(llama.cpp's {MODEL_TYPES[model_type]} uses {expected})")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias has no GGUF equivalent in llama.cpp's {MODEL_TYPES[model_type]}")
    positions = cfg.get("max_position_embeddings")
    config = config_from_hf(cfg, where, positions if isinstance(positions, int) and positions > 0 else 1 << 20)
    arch = MODEL_TYPES[model_type]
    if arch == "llama" and any(k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in state):
        arch = "qwen2"  # foundry's export of a Qwen2 import: Llama with q/k/v biases and a zero o_proj bias
    o_bias = [k for k in state if k.endswith("self_attn.o_proj.bias")]
    if any(bool(state[k].abs().max() > 0) for k in o_bias):
        raise CheckpointError(f"{where}: non-zero o_proj biases have no GGUF equivalent")
    for k in o_bias:
        del state[k]
    reason = _unfaithful(ARCHS[arch], config)
    if reason:
        raise CheckpointError(f"{where}: {model_type} has no faithful GGUF form (llama.cpp's {arch}): {reason}")
    return ARCHS[arch], config


def _rope_divisors(config) -> np.ndarray | None:
    """Per-dimension divisors of the rope frequencies (llama.cpp's `rope_freqs`) for Llama 3's bands, or a longrope
    with one factor list and no attention scaling; None when the rope is not of that form."""
    from foundry.model.rope import rope_frequencies

    scaling, kind = config.rope_scaling or {}, rope_kind(config)
    if kind == "llama3":
        plain, _ = rope_frequencies(config.rotary_dim, config.rope_theta, None)
        scaled, _ = rope_frequencies(config.rotary_dim, config.rope_theta, scaling)
        return (plain / scaled).numpy().astype(np.float32)
    if kind == "longrope" and list(scaling["short_factor"]) == list(scaling["long_factor"]):
        _, attention = rope_frequencies(config.rotary_dim, config.rope_theta, scaling)
        if attention == 1.0:
            return np.asarray(scaling["short_factor"], dtype=np.float32)
    return None


def _unfaithful(arch: GGUFArch, config) -> str | None:
    """What of `config` llama.cpp's `arch` cannot compute (it hard-codes it or has no switch for it), or None."""
    from foundry.model.rope import rope_frequencies

    n = config.n_layer
    if not config.tie_embeddings and not arch.output:
        return f"an untied lm_head, where llama.cpp's {arch.name} has no output tensor (it always ties)"
    if arch.name in SWA_PATTERN:
        pattern = SWA_PATTERN[arch.name]
        want = [i for i in range(n) if i % pattern < pattern - 1]
        have = [i for i in range(n) if config.layer_window(i)]
        if have != want:
            return (f"sliding-window layers {have}, where llama.cpp slides on every layer but each {pattern}th "
                    f"({want})")
        scalar, want_scalar = (config.attn_scale or config.head_dim ** -0.5) ** -2, gemma_attn_scalar(
            arch.name, n, config.n_embd, config.n_head, config.head_dim)
        if abs(scalar - want_scalar) > 1e-3 * want_scalar:
            return f"query_pre_attn_scalar {scalar:g}, where llama.cpp fixes {want_scalar:g} for this shape"
    if arch.name == "gemma2" and not (config.attn_softcap and config.final_softcap):
        return "no attention or final soft-cap, which llama.cpp's gemma2 always applies"
    if arch.name == "gemma3" and config.final_softcap:
        return "a final soft-cap, which llama.cpp's gemma3 sliding-window graph does not apply"
    if arch.name == "gemma3" and config.sliding_window and \
            (config.local_rope_theta or config.rope_theta) != GEMMA3_LOCAL_ROPE_THETA:
        return (f"sliding layers' rope base {config.local_rope_theta or config.rope_theta:g}, where llama.cpp fixes "
                f"{GEMMA3_LOCAL_ROPE_THETA:g}")
    want_nope = [i for i in range(n) if (i + 1) % SMOLLM3_NO_ROPE_STEP == 0] if arch.name == "smollm3" else []
    if list(config.nope_layers) != want_nope:
        return (f"layers without rope {list(config.nope_layers)}, where llama.cpp's {arch.name} skips rope on "
                f"{want_nope or 'none'}")
    if config.partial_rotary != 1.0 and arch.name != "phi3":
        return "partial rotary (Phi-3's only)"
    kind, scaling = rope_kind(config), config.rope_scaling or {}
    if kind in ("linear", "yarn") and not arch.scaled_rope:
        return f"rope scaling '{kind}', which llama.cpp's converter does not write for {arch.name}"
    if kind == "yarn":
        _, attention = rope_frequencies(config.rotary_dim, config.rope_theta, scaling)
        default = 0.1 * math.log(scaling["factor"]) + 1.0 if scaling["factor"] > 1 else 1.0
        if abs(attention - default) > 1e-6 or (scaling.get("beta_fast") or 32) != 32 or \
                (scaling.get("beta_slow") or 1) != 1 or scaling.get("truncate", True) is False:
            return "YaRN with a non-default attention factor, beta or truncation, which llama.cpp does not read"
    if kind == "llama3" and arch.rope_tensor != "rope_freqs":
        return f"Llama 3 rope scaling, whose rope_freqs llama.cpp's {arch.name} graph does not apply (llama's does)"
    if kind == "longrope" and arch.rope_tensor != "rope_factors" and _rope_divisors(config) is None:
        return ("longrope, which llama.cpp computes for phi3 only (and llama, as rope_freqs, when its short and long "
                "factors agree with no attention factor)")
    if kind == "longrope" and arch.rope_tensor == "rope_factors" and \
            len(scaling["long_factor"]) != config.rotary_dim // 2:
        return f"longrope factors of length {len(scaling['long_factor'])}, not rotary dims / 2"
    return None


def _gguf_tensors(arch: GGUFArch, state: dict, config, where: Path) -> dict[str, np.ndarray]:
    """transformers names -> llama.cpp names, float32 numpy, q/k rows permuted for the llama-rope architectures,
    Gemma's norms shifted by 1, and the rope tables llama.cpp reads as tensors (rope_freqs, rope_factors_*)."""
    n_head, n_kv = config.n_head, config.n_kv_head
    names = tensor_names(arch, config.n_layer)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when `output` is absent
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise CheckpointError(f"{where}: tensor {unknown[0]} has no GGUF name in the {arch.name} table "
                              f"({len(unknown)} unmapped)")
    required = set(names) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing = sorted(required - set(state))
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]} for GGUF architecture {arch.name} "
                              f"({len(missing)} missing)")
    out = {}
    for hf_name, gg_name in names.items():
        if hf_name not in state:
            continue
        w = state[hf_name].float().numpy()
        if arch.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            w = permute_rows(w, n_head)
        elif arch.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            w = permute_rows(w, n_kv)
        if arch.norm_shift and gg_name.endswith("norm.weight"):
            w = w + np.float32(arch.norm_shift)
        out[gg_name] = np.ascontiguousarray(w)
    if arch.output_required and "output.weight" not in out:  # the tied matrix twice: the same logits
        out["output.weight"] = out["token_embd.weight"]
    divisors = _rope_divisors(config) if arch.rope_tensor == "rope_freqs" else None
    if divisors is not None:
        out["rope_freqs.weight"] = divisors
    if arch.rope_tensor == "rope_factors" and rope_kind(config) == "longrope":
        for which in ("long", "short"):
            out[f"rope_factors_{which}.weight"] = np.asarray(config.rope_scaling[f"{which}_factor"], np.float32)
    return out


def _write_arch_metadata(w, gguf, arch: GGUFArch, config) -> None:
    """The hyperparameters of `arch` as llama.cpp's converter writes them (convert_hf_to_gguf.py)."""
    from foundry.model.rope import rope_frequencies

    context = config.max_seq_len
    if config.sliding_window and not arch.swa:  # llama.cpp attends fully here: exact within the window
        context = min(context, config.sliding_window)
    w.add_context_length(context)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.n_head)
    w.add_head_count_kv(config.n_kv_head)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.rotary_dim)
    w.add_rope_freq_base(float(config.rope_theta))
    w.add_layer_norm_rms_eps(float(config.norm_eps))
    scaling, kind = config.rope_scaling or {}, rope_kind(config)
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    if arch.swa:
        w.add_sliding_window(config.sliding_window)
    if arch.name == "gemma2":
        w.add_attn_logit_softcapping(float(config.attn_softcap))
        w.add_final_logit_softcapping(float(config.final_softcap))
    if arch.name == "phi3":  # Phi-3's converter writes its window (0: none) and the original context always
        w.add_sliding_window(config.sliding_window)
        w.add_rope_scaling_orig_ctx_len(int(scaling.get("original_max_position_embeddings", config.max_seq_len)))
        if kind == "longrope":
            w.add_rope_scaling_attn_factors(float(rope_frequencies(config.rotary_dim, config.rope_theta, scaling)[1]))


def _stop_ids(hf_dir: Path, cfg: dict) -> list[int]:
    gen = hf_dir / "generation_config.json"
    ids = read_json(gen).get("eos_token_id") if gen.is_file() else None
    ids = cfg.get("eos_token_id") if ids is None else ids
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in dict.fromkeys(ids) if isinstance(i, int)]


def _pre_tokenizer_name(tok: dict, where: Path) -> str:
    pre = tok.get("pre_tokenizer") or {}
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if kind == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split" \
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True) \
            and not steps[1].get("add_prefix_space", False) and steps[0].get("behavior") == "Isolated":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, (split, _) in PRE_TOKENIZERS.items():
            if split is not None and regex == split:
                return name
    raise CheckpointError(f"{where}: pre-tokenizer not recognised as one llama.cpp names (supported: GPT-2's "
                          f"byte-level split and the {', '.join(n for n, (s, _) in PRE_TOKENIZERS.items() if s)} "
                          "split regexes)")


def _vocabulary(hf_dir: Path, n_vocab: int) -> dict:
    """tokenizer.json -> GGUF's token list, token types, merges and pre-tokenizer name."""
    where = hf_dir / "tokenizer.json"
    if not where.is_file():
        raise CheckpointError(f"{where}: missing; GGUF export needs a fast (tokenizer.json) tokenizer")
    try:
        tok = json.loads(where.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc})") from None
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise CheckpointError(f"{where}: a {model.get('type')} tokenizer; GGUF export supports byte-level BPE "
                              "only (tokenizer.ggml.model 'gpt2')")
    pre = _pre_tokenizer_name(tok, where)
    tokens: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    types = dict.fromkeys(tokens, NORMAL)
    for added in tok.get("added_tokens") or []:
        tokens[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    size = max(n_vocab, max(tokens) + 1)
    if size > n_vocab:
        raise CheckpointError(f"{where}: tokenizer ids reach {size - 1} but the embedding has {n_vocab} rows")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"pre": pre, "tokens": [tokens.get(i, f"[PAD{i}]") for i in range(size)],
            "types": [types.get(i, UNUSED) for i in range(size)], "merges": merges}


def _token_id(value, tokens: list[str]) -> int | None:
    value = value.get("content") if isinstance(value, dict) else value
    return tokens.index(value) if isinstance(value, str) and value in tokens else None


def hf_to_gguf(hf_dir: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False,
               name: str | None = None) -> Path:
    """A transformers model directory (safetensors; a family of `MODEL_TYPES`) -> one GGUF file."""
    from foundry.model.hf import load_hf_state

    gguf = gguf_module()
    hf_dir, out = Path(hf_dir), Path(out)
    if quant not in QUANTS:
        raise CheckpointError(f"{out}: --quant {quant} is not supported (choose {', '.join(QUANTS)})")
    _check_target(out, overwrite)
    cfg_path = hf_dir / "config.json"
    cfg = read_json(cfg_path)
    state = load_hf_state(hf_dir)
    arch, config = _arch_for(cfg, state, cfg_path)
    tensors = _gguf_tensors(arch, state, config, hf_dir)
    n_vocab = tensors["token_embd.weight"].shape[0]
    vocab = _vocabulary(hf_dir, n_vocab)
    tok_cfg = read_tokenizer_config(hf_dir)
    stops = _stop_ids(hf_dir, cfg)
    if not stops:
        raise CheckpointError(f"{hf_dir}: no eos_token_id in generation_config.json or config.json")

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), arch.name)
        w.add_name(name or hf_dir.name)
        w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_arch_metadata(w, gguf, arch, config)
        w.add_vocab_size(n_vocab)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        w.add_eos_token_id(stops[0])
        if len(stops) == 1:  # no second stop id: the vocabulary's end-of-turn token, if it has one
            stops += [vocab["tokens"].index(t) for t in END_OF_TURN_TOKENS if t in vocab["tokens"]][:1]
        if len(stops) > 1:
            w.add_eot_token_id(stops[1])
        bos = cfg.get("bos_token_id") if isinstance(cfg.get("bos_token_id"), int) \
            else _token_id(tok_cfg.get("bos_token"), vocab["tokens"])
        pad = _token_id(tok_cfg.get("pad_token"), vocab["tokens"])
        pad = cfg.get("pad_token_id") if pad is None else pad
        if isinstance(bos, int):
            w.add_bos_token_id(bos)
        if isinstance(pad, int):
            w.add_pad_token_id(pad)
        w.add_add_bos_token(bool(tok_cfg.get("add_bos_token", False)))
        w.add_add_eos_token(bool(tok_cfg.get("add_eos_token", False)))
        template = chat_template_of(hf_dir, tok_cfg)
        if template is not None:
            w.add_chat_template(template)

        for gg_name, data in tensors.items():
            if data.ndim == 1:
                w.add_tensor(gg_name, data.astype(np.float32))
            elif quant == "q8_0" and data.shape[-1] % 32 == 0:
                q = gguf.GGMLQuantizationType.Q8_0
                w.add_tensor(gg_name, gguf.quants.quantize(data, q), raw_dtype=q)
            else:
                w.add_tensor(gg_name, data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{out}: write failed ({exc.strerror or exc}); nothing was written") from exc
        raise
    return out
