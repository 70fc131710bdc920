"""What a GGUF file is to llama.cpp, per architecture: tensor names, the switches its graphs read or hard-code,
pre-tokenizer names and token types; shared by the writer (`write.py`) and the reader (`read.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foundry.errors import FoundryError

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


def gguf_module():
    """The `gguf` package (imported on use: only GGUF commands need it)."""
    try:
        import gguf
    except ImportError:  # a dependency, but say what to install rather than a traceback
        raise FoundryError("GGUF needs the 'gguf' package (pip install 'gguf>=0.10')") from None
    return gguf


def rope_kind(config) -> str:
    return (config.rope_scaling or {}).get("rope_type", "default")


def gemma_attn_scalar(arch: str, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> float:
    """The query_pre_attn_scalar llama.cpp's Gemma graphs use: head_dim, or n_embd / n_head at the 27B depth."""
    return n_embd / n_head if n_layer == GEMMA_27B_LAYERS[arch] else float(head_dim)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout -> llama.cpp's interleaved pairs (convert_hf_to_gguf `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_names(arch: GGUFArch, n_layer: int) -> dict[str, str]:
    names = dict(GLOBAL_TENSORS)
    if not arch.output:
        names.pop("lm_head.weight")
    for i in range(n_layer):
        names.update({f"model.layers.{i}.{hf}": f"blk.{i}.{gg}" for hf, gg in arch.layer_tensors.items()})
    return names
