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
  line naming the family and the switch (`write._unfaithful`), never written silently wrong. Where llama.cpp attends
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

from foundry.model.gguf.arch import QUANTS
from foundry.model.gguf.read import gguf_architecture, gguf_to_hf, read_gguf
from foundry.model.gguf.write import export_gguf, hf_to_gguf

__all__ = ["QUANTS", "export_gguf", "gguf_architecture", "gguf_to_hf", "hf_to_gguf", "read_gguf"]
