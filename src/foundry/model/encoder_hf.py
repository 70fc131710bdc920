"""Hugging Face interchange for the encoder and the sequence classifiers.

- `Encoder` -> `BertForMaskedLM`; `BertClassifier` (first-token pooling) -> `BertForSequenceClassification`;
  `LlamaClassifier` -> `LlamaForSequenceClassification`. Parameter names are already transformers', so
  export is a config mapping plus a safetensors copy (tied tensors stored once, as transformers does).
- The exported tokenizer gains `<|mask|>` as an added special token at `mask_token_id` (one past foundry's
  vocabulary), so `AutoTokenizer` + `fill-mask` work on the directory.
- `id2label` / `label2id` carry the label names; `pad_token_id` is what LlamaForSequenceClassification pools by.
- Import reads a `bert` directory back (BertForMaskedLM layout) into an `Encoder`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from foundry.errors import CheckpointError
from foundry.model.classifier import BertClassifier, ClassifierConfig, LlamaClassifier
from foundry.model.encoder import Encoder, EncoderConfig
from foundry.utils.io import atomic_directory, atomic_write_json, read_json

MASK_TOKEN = "<|mask|>"


def bert_config_dict(config: EncoderConfig, tokenizer, dtype: torch.dtype, architecture: str) -> dict:
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_seq_len,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.init_std,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": pad,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _save_tokenizer_with_mask(tokenizer, directory: Path, mask_token_id: int) -> None:
    """tokenizer.json with `<|mask|>` appended at `mask_token_id` (the id past the vocabulary)."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer.save(directory)
    hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    if hf.token_to_id(MASK_TOKEN) is None:
        if hf.get_vocab_size() != mask_token_id:
            return  # a vocabulary padded past the tokenizer: leave the tokenizer as it is
        hf.add_special_tokens([AddedToken(MASK_TOKEN, special=True)])
        hf.save(str(directory / "tokenizer.json"))
    cfg_file = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg["mask_token"] = MASK_TOKEN
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")


def _state_for_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for key in getattr(model, "tied_weights", {}):
        state.pop(key, None)
    return state


def export_encoder_hf(model: torch.nn.Module, tokenizer, out_dir: str | Path, overwrite: bool = False) -> str:
    """Write an Encoder, BertClassifier or LlamaClassifier as a transformers directory; returns its class name."""
    from safetensors.torch import save_file

    from foundry.model.hf import hf_config_dict

    state = _state_for_hf(model)
    dtype = next(iter(state.values())).dtype
    if isinstance(model, Encoder):
        arch = "BertForMaskedLM"
        config = bert_config_dict(model.config, tokenizer, dtype, arch)
        mask_id = model.config.mask_token_id
    elif isinstance(model, (BertClassifier, LlamaClassifier)):
        cc: ClassifierConfig = model.config
        if cc.kind == "bert":
            if cc.pooling != "first":
                raise CheckpointError(f"export: a classifier with '{cc.pooling}' pooling has no transformers "
                                      "class; BertForSequenceClassification pools the first token (pooling: first)")
            arch = "BertForSequenceClassification"
            config = bert_config_dict(cc.base_config, tokenizer, dtype, arch)
            mask_id = cc.base_config.mask_token_id
        else:
            config = hf_config_dict(cc.base_config, tokenizer, dtype)  # Llama's, or Qwen3's with QK-norm
            if config["model_type"] not in ("llama", "qwen3"):
                raise CheckpointError(f"export: a classifier on a {config['model_type']} body has no sequence-"
                                      "classification export yet (Llama and Qwen3 bodies do)")
            arch = "Qwen3ForSequenceClassification" if cc.base_config.qk_norm else "LlamaForSequenceClassification"
            config["architectures"] = [arch]
            config["tie_word_embeddings"] = False  # there is no LM head to tie
            mask_id = None
        config["id2label"] = {str(i): name for i, name in enumerate(cc.labels)}
        config["label2id"] = {name: i for i, name in enumerate(cc.labels)}
        config["problem_type"] = "single_label_classification"
    else:
        raise CheckpointError(f"export: {type(model).__name__} is not an encoder or a classifier")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config)
        if mask_id is not None:
            _save_tokenizer_with_mask(tokenizer, tmp, mask_id)
        else:
            tokenizer.save(tmp)
    return arch


def encoder_config_from_hf(cfg: dict, path: Path, mask_token_id: int) -> EncoderConfig:
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act '{cfg['hidden_act']}' is not supported (only gelu)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type '{cfg['position_embedding_type']}' is not supported")
    try:
        return EncoderConfig(
            vocab_size=cfg["vocab_size"], mask_token_id=mask_token_id, n_layer=cfg["num_hidden_layers"],
            n_head=cfg["num_attention_heads"], n_embd=cfg["hidden_size"],
            intermediate_size=cfg.get("intermediate_size") or 0,
            max_seq_len=cfg.get("max_position_embeddings", 512), type_vocab_size=cfg.get("type_vocab_size", 2),
            norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), init_std=float(cfg.get("initializer_range", 0.02)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid BERT config ({type(exc).__name__}: {exc})") from None


def import_bert_model(hf_dir: str | Path, state: dict[str, torch.Tensor], tokenizer_json: str) -> Encoder:
    """A BertForMaskedLM directory's config and weights -> Encoder (float32)."""
    from tokenizers import Tokenizer as HFTokenizer

    hf_dir = Path(hf_dir)
    cfg = read_json(hf_dir / "config.json")
    archs = cfg.get("architectures") or ["BertForMaskedLM"]
    if archs[0] not in ("BertForMaskedLM", "BertForPreTraining", "BertModel"):
        raise CheckpointError(f"{hf_dir}: {archs[0]} cannot be imported as an encoder (BertForMaskedLM can)")
    hf_tok = HFTokenizer.from_str(tokenizer_json)
    mask_id = next((hf_tok.token_to_id(t) for t in (MASK_TOKEN, "[MASK]", "<mask>") if hf_tok.token_to_id(t) is not None),
                   None)
    if mask_id is None:
        raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: no mask token ({MASK_TOKEN} or [MASK])")
    model = Encoder(encoder_config_from_hf(cfg, hf_dir / "config.json", mask_id))
    state = {k: v for k, v in state.items() if not k.startswith("cls.seq_relationship") and
             not k.startswith("bert.pooler")}
    expected = {k: v for k, v in model.state_dict().items() if k not in model.tied_weights}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected) - set(model.tied_weights))
    if missing or extra:
        raise CheckpointError(f"{hf_dir}: weights do not fit a BertForMaskedLM (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    with torch.no_grad():
        for key, target in expected.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise CheckpointError(f"{hf_dir}: tensor {key} has shape {tuple(state[key].shape)}, "
                                      f"config implies {tuple(target.shape)}")
            target.copy_(state[key].to(torch.float32))
    return model


def bert_special_tokens(hf_dir: str | Path, tokenizer_json: str) -> dict[str, str]:
    """foundry's roles for a BERT tokenizer: end of text = eos or [SEP], first token = bos or [CLS], pad."""
    from tokenizers import Tokenizer as HFTokenizer

    hf_dir = Path(hf_dir)
    hf_tok = HFTokenizer.from_str(tokenizer_json)
    tok_cfg: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        if (hf_dir / name).is_file():
            tok_cfg.update({k: v for k, v in read_json(hf_dir / name).items() if v is not None})

    def pick(*candidates) -> str | None:
        for key in candidates:
            value = tok_cfg.get(key, key if key.startswith("[") else None)
            token = value.get("content") if isinstance(value, dict) else value
            if isinstance(token, str) and hf_tok.token_to_id(token) is not None:
                return token
        return None

    eos = pick("eos_token", "sep_token", "[SEP]")
    if eos is None:
        raise CheckpointError(f"{hf_dir}: cannot find the end-of-text token (no eos_token or sep_token, no [SEP])")
    mapping = {"eos": eos, "eot": eos}
    for role, keys in (("bos", ("bos_token", "cls_token", "[CLS]")), ("pad", ("pad_token", "[PAD]"))):
        token = pick(*keys)
        if token is not None:
            mapping[role] = token
    return mapping
