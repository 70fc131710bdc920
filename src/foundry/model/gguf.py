"""GGUF interchange (the format llama.cpp and Ollama run): a converter between a Hugging Face model
directory and one `.gguf` file, so GGUF follows whatever families the Hugging Face import and export learn.

Design choices:
- Export is `foundry checkpoint -> export_hf (a temporary directory) -> hf_to_gguf`; import is
  `gguf_to_hf (a temporary directory) -> foundry.checkpoints.import_hf`. Both sides read and write transformers'
  files only (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
  `generation_config.json`); export interprets config.json with the family registry, nothing else of foundry's.
- A family is one entry of `ARCHS` (its llama.cpp architecture, transformers class, per-layer tensor names, and
  how llama.cpp's graph for it differs: q/k permutation, Gemma's norm shift, whether it has an `output` tensor,
  computes sliding windows, reads rope tables) plus a `MODEL_TYPES` line naming the transformers `model_type`s
  written as it. Mistral is written as llama (as llama.cpp does); a Llama with q/k/v biases (foundry's export of a
  Qwen2 import) as qwen2; a model with QK-norm is Qwen3 already. The switches are read from config.json by the
  family registry (`foundry.model.families`, through `config_from_hf`), so GGUF and the Hugging Face import agree
  on what a config means.
- What llama.cpp hard-codes instead of reading (llama-model.cpp's load_hparams: Gemma's sliding-layer pattern and
  attention scale, Gemma 3's local rope base, SmolLM3's no-rope step) must hold, or the export is refused in one
  line naming the family and the switch (`_unfaithful`), never written silently wrong. Where llama.cpp attends
  fully (llama, qwen2, qwen3, smollm3; phi3, whose window llama.cpp disables) a sliding window caps the context
  to it, within which full attention is exact.
- Rope as llama.cpp's converter writes it: linear and YaRN as `rope.scaling.*`; Llama 3's bands as the
  `rope_freqs` tensor of per-dimension divisors (import reads it back as the longrope of one factor list, which
  computes the same frequencies: the bands' parameters are not recoverable); Phi-3's longrope as
  `rope_factors_long/short` + `rope.scaling.attn_factor`; dynamic NTK as plain rope (the two agree within the
  trained context, the file's context length).
- Gemma's norms scale by (1 + w): llama.cpp stores 1 + w (convert_hf_to_gguf `Gemma2Model.modify_tensors`), and
  transformers' GGUF loader subtracts the 1 again; so do we. Phi-3's fused `qkv_proj` / `gate_up_proj` stay fused
  (`attn_qkv`, `ffn_up`), as llama.cpp's phi3 reads them.
- Weights: `--quant f16` stores every matrix in float16, `q8_0` in 8-bit blocks of 32 (a matrix whose rows
  are not a multiple of 32 stays float16); vectors (norms, biases) stay float32, as llama.cpp's converter
  does. Import dequantises every tensor to float32 with `gguf.quants.dequantize`.
- Tokenizer: byte-level BPE only (`tokenizer.ggml.model` "gpt2"): tokens in their byte-level spelling,
  merges, token types (special added tokens CONTROL, other added tokens USER_DEFINED, ids without a token
  `[PADn]` UNUSED up to the embedding's size, as llama.cpp's converter pads), and the pre-tokenizer by
  llama.cpp's name (`PRE_TOKENIZERS`, recognised from tokenizer.json's split regex). SentencePiece
  (`llama`) vocabularies are refused.
- Stop tokens: `generation_config.json`'s `eos_token_id` list is the stop set; its first id is written as
  `tokenizer.ggml.eos_token_id`, the next different one as `eot_token_id` (llama.cpp stops at both), and
  import writes both back as the list. The chat template is `tokenizer.chat_template`, byte for byte.
- Every refusal is a one-line CheckpointError naming the file; the output is written to a temporary
  sibling and renamed into place, and an existing output is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundry.errors import CheckpointError, FoundryError
from foundry.utils.hf_files import chat_template_of, read_tokenizer_config
from foundry.utils.io import atomic_write_json, fsync_dir, read_json

QUANTS = ("f16", "q8_0")


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp architecture: its name, the transformers class a file of it imports as, transformers'
    per-layer tensor names -> llama.cpp's, and how llama.cpp's graph for it differs from transformers'."""

    name: str
    model_type: str  # the transformers model_type a file of this architecture imports as
    architecture: str  # ... and its class
    layer_tensors: dict[str, str]
    permute_qk: bool = False  # llama.cpp's `llama` rope works on interleaved pairs (see the docstring)
    norm_shift: float = 0.0  # added to every norm weight: llama.cpp stores Gemma's (1 + w) scales with the 1 in
    output: bool = True  # an untied `output` tensor exists (Gemma 2 has none: always tied)
    output_required: bool = False  # llama.cpp loads no file without `output` (OLMo 2): a tied model writes a copy
    swa: bool = False  # llama.cpp computes sliding windows (else it attends fully: the context is capped to them)
    # per-dimension rope divisors its graph applies: "rope_freqs" (llama's only: qwen2, qwen3 and smollm3 list the
    # tensor but pass no factors to ggml_rope_ext) or "rope_factors" (Phi-3's long / short pair)
    rope_tensor: str = ""
    scaled_rope: bool = True  # llama.cpp reads rope.scaling.type (linear / yarn) for it (the converter writes it)


GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}
ATTENTION = {f"self_attn.{p}_proj.weight": f"attn_{g}.weight"
             for p, g in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output"))}
MLP = {f"mlp.{p}_proj.weight": f"ffn_{p}.weight" for p in ("gate", "up", "down")}
PRE_NORMS = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight"}
LLAMA_LAYER = {**PRE_NORMS, **ATTENTION, **MLP}
QKV_BIAS = {f"self_attn.{p}_proj.bias": f"attn_{p}.bias" for p in "qkv"}
QK_NORM = {"self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
POST_NORMS = {"post_attention_layernorm.weight": "post_attention_norm.weight",
              "post_feedforward_layernorm.weight": "post_ffw_norm.weight"}
GEMMA_LAYER = {"input_layernorm.weight": "attn_norm.weight", "pre_feedforward_layernorm.weight": "ffn_norm.weight",
               **POST_NORMS, **ATTENTION, **MLP}
PHI3_LAYER = {**PRE_NORMS, "self_attn.qkv_proj.weight": "attn_qkv.weight",  # fused, as llama.cpp's phi3 reads them
              "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"}

ARCHS = {a.name: a for a in (
    GGUFArch("llama", "llama", "LlamaForCausalLM", LLAMA_LAYER, permute_qk=True, rope_tensor="rope_freqs"),
    GGUFArch("qwen2", "qwen2", "Qwen2ForCausalLM", {**LLAMA_LAYER, **QKV_BIAS}),
    GGUFArch("qwen3", "qwen3", "Qwen3ForCausalLM", {**LLAMA_LAYER, **QK_NORM}),
    GGUFArch("gemma2", "gemma2", "Gemma2ForCausalLM", GEMMA_LAYER, norm_shift=1.0, output=False, swa=True,
             scaled_rope=False),
    GGUFArch("gemma3", "gemma3_text", "Gemma3ForCausalLM", {**GEMMA_LAYER, **QK_NORM}, norm_shift=1.0, swa=True),
    GGUFArch("phi3", "phi3", "Phi3ForCausalLM", PHI3_LAYER, rope_tensor="rope_factors", scaled_rope=False),
    GGUFArch("olmo2", "olmo2", "Olmo2ForCausalLM", {**POST_NORMS, **ATTENTION, **QK_NORM, **MLP},
             output_required=True),
    GGUFArch("smollm3", "smollm3", "SmolLM3ForCausalLM", LLAMA_LAYER, permute_qk=True),
)}
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3_text": "gemma3", "phi3": "phi3", "olmo2": "olmo2", "smollm3": "smollm3"}  # model_type -> ARCHS
# What llama.cpp hard-codes rather than reads (llama-model.cpp, load_hparams): Gemma 2 / 3 slide on every layer but
# each `pattern`th, Gemma 3's sliding layers use rope base 10000, SmolLM3 skips rope on every 4th layer
# (n_no_rope_layer_step), and Gemma's attention scale is head_dim ** -0.5 (n_embd / n_head for the 27B sizes).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6}
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
SMOLLM3_NO_ROPE_STEP = 4

# llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) -> the split regex before byte-level mapping (None:
# GPT-2's own, i.e. `ByteLevel(use_regex=True)`) and whether whole words skip the merges (Llama 3's BPE).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"gpt-2": (None, False), "qwen2": (QWEN2_SPLIT, False), "llama-bpe": (LLAMA3_SPLIT, True)}

# gguf.TokenType values (stable in the format): what an id is.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")  # as foundry.model.hf looks for


def _gguf():
    try:
        import gguf
    except ImportError:  # a dependency, but say what to install rather than a traceback
        raise FoundryError("GGUF needs the 'gguf' package (pip install 'gguf>=0.10')") from None
    return gguf


# ---- export: Hugging Face directory -> GGUF -------------------------------------------------------
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


def _config_int(cfg: dict, key: str, where: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{where}: missing or non-integer '{key}'")
    return value


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


def _rope_kind(config) -> str:
    return (config.rope_scaling or {}).get("rope_type", "default")


def _gemma_attn_scalar(arch: str, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> float:
    """The query_pre_attn_scalar llama.cpp's Gemma graphs use: head_dim, or n_embd / n_head at the 27B depth."""
    return n_embd / n_head if n_layer == GEMMA_27B_LAYERS[arch] else float(head_dim)


def _rope_divisors(config) -> np.ndarray | None:
    """Per-dimension divisors of the rope frequencies (llama.cpp's `rope_freqs`) for Llama 3's bands, or a longrope
    with one factor list and no attention scaling; None when the rope is not of that form."""
    from foundry.model.rope import rope_frequencies

    scaling, kind = config.rope_scaling or {}, _rope_kind(config)
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
        scalar, want_scalar = (config.attn_scale or config.head_dim ** -0.5) ** -2, _gemma_attn_scalar(
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
    kind, scaling = _rope_kind(config), config.rope_scaling or {}
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


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout -> llama.cpp's interleaved pairs (convert_hf_to_gguf `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_names(arch: GGUFArch, n_layer: int) -> dict[str, str]:
    names = dict(GLOBAL_TENSORS)
    if not arch.output:
        names.pop("lm_head.weight")
    for i in range(n_layer):
        names.update({f"model.layers.{i}.{hf}": f"blk.{i}.{gg}" for hf, gg in arch.layer_tensors.items()})
    return names


def _gguf_tensors(arch: GGUFArch, state: dict, config, where: Path) -> dict[str, np.ndarray]:
    """transformers names -> llama.cpp names, float32 numpy, q/k rows permuted for the llama-rope architectures,
    Gemma's norms shifted by 1, and the rope tables llama.cpp reads as tensors (rope_freqs, rope_factors_*)."""
    n_head, n_kv = config.n_head, config.n_kv_head
    names = _tensor_names(arch, config.n_layer)
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
            w = _permute_rows(w, n_head)
        elif arch.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            w = _permute_rows(w, n_kv)
        if arch.norm_shift and gg_name.endswith("norm.weight"):
            w = w + np.float32(arch.norm_shift)
        out[gg_name] = np.ascontiguousarray(w)
    if arch.output_required and "output.weight" not in out:  # the tied matrix twice: the same logits
        out["output.weight"] = out["token_embd.weight"]
    divisors = _rope_divisors(config) if arch.rope_tensor == "rope_freqs" else None
    if divisors is not None:
        out["rope_freqs.weight"] = divisors
    if arch.rope_tensor == "rope_factors" and _rope_kind(config) == "longrope":
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
    scaling, kind = config.rope_scaling or {}, _rope_kind(config)
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

    gguf = _gguf()
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


# ---- import: GGUF -> Hugging Face directory -------------------------------------------------------
def _field_value(field):
    """A metadata value from the reader's raw parts (the same across gguf versions >= 0.10)."""
    gguf = _gguf()
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
    gguf = _gguf()
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
    gguf = _gguf()
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

    to_hf = {gg: hf for hf, gg in _tensor_names(arch, n_layer).items()}
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
            w = _unpermute_rows(w, n_head)
        elif arch.permute_qk and t.name.endswith("attn_k.weight"):
            w = _unpermute_rows(w, n_kv)
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
        scalar = _gemma_attn_scalar(name, n, config["hidden_size"], config["num_attention_heads"], head_dim)
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
