"""Models made outside foundry, as a starting model or for `foundry model import`: a transformers directory
(decoder families through `foundry.model.hf`, BERT through `foundry.model.encoder_hf`), a .gguf file
(through a temporary transformers directory), their tokenizers, and the chat template a recipe chooses."""

from __future__ import annotations

from pathlib import Path

from foundry.checkpoints.files import resolve_checkpoint
from foundry.errors import CheckpointError, ConfigError, DataError
from foundry.utils.io import read_json


def import_hf(hf_dir, max_seq_len: int | None = None):
    """A local transformers checkpoint directory (or a .gguf file) -> (Llama in float32, Tokenizer): the
    weights through `foundry.model.hf`, the tokenizer with its special tokens mapped to foundry's roles, its own
    chat template and the model's stop tokens. A base model without a template gets foundry's, whose markers
    are added to its vocabulary as special tokens (the embedding grown, new rows the mean of the others)."""
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.hf import DEFAULT_MAX_SEQ_LEN, import_hf_model

    if str(hf_dir).endswith(".gguf"):  # a llama.cpp file: converted to a transformers directory, then as one
        return _import_gguf(Path(hf_dir), max_seq_len)
    hf_dir = Path(hf_dir)
    config_file = hf_dir / "config.json"
    if config_file.is_file() and isinstance(cfg := read_json(config_file), dict) and cfg.get("model_type") == "bert":
        return _import_bert(hf_dir, cfg)
    model, text = import_hf_model(hf_dir, max_seq_len or DEFAULT_MAX_SEQ_LEN)
    tokenizer = Tokenizer.from_hf_directory(hf_dir, read_json(config_file), text)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: tokenizer has {tokenizer.vocab_size} tokens but "
                              f"the model's embedding only {model.config.vocab_size}")
    if tokenizer.chat_template.name == "foundry":  # a base model: foundry's template, with real marker tokens
        tokenizer = use_foundry_template(model, tokenizer)
    return model, tokenizer


def use_foundry_template(model, tokenizer):
    """`tokenizer` with foundry's chat template; markers its vocabulary lacks are added as special tokens and
    `model`'s embedding grows to hold them (new rows the mean of the trained ones)."""
    from foundry.model.vocab import add_token_rows

    trained = tokenizer.vocab_size
    tokenizer = tokenizer.with_foundry_template()
    added = [tokenizer.token_to_id(t) for t in tokenizer.added_tokens]
    add_token_rows(model, [i for i in added if i is not None], trained)
    return tokenizer


def choose_chat_template(model, tokenizer, choice: str):
    """A recipe's `chat_template`: "model" (the tokenizer's own, the default), "foundry", or a .jinja file."""
    if choice == "model":
        return tokenizer
    if choice == "foundry":
        return use_foundry_template(model, tokenizer)
    path = Path(choice)
    if path.suffix != ".jinja" or not path.is_file():
        raise ConfigError(f"chat_template: '{choice}' is not 'model', 'foundry' or an existing .jinja file")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return tokenizer.with_chat_template(source, str(path))


def _import_gguf(path: Path, max_seq_len: int | None):
    """A .gguf file -> (Llama, Tokenizer) through a temporary Hugging Face directory (`foundry.model.gguf`)."""
    import tempfile

    from foundry.model.gguf import gguf_to_hf

    with tempfile.TemporaryDirectory(prefix="foundry-gguf-") as tmp:
        hf_dir = gguf_to_hf(path, Path(tmp) / "hf")
        try:
            model, tokenizer = import_hf(hf_dir, max_seq_len)
        except CheckpointError as exc:  # name the user's file, not the temporary directory
            raise CheckpointError(f"{path}: {str(exc).replace(str(hf_dir) + '/', '')}") from None
    if tokenizer.chat_template.name != "foundry":  # the template came from the file's tokenizer.chat_template
        tokenizer = tokenizer.with_chat_template(tokenizer.chat_template.source, f"{path} (tokenizer.chat_template)")
    return model, tokenizer


def load_tokenizer(path):
    """A model's tokenizer without its weights: a tokenizer directory or tokenizer.json, a foundry checkpoint or
    run directory (its best checkpoint), or a Hugging Face model directory (its own special tokens mapped to
    foundry's roles, as `import_hf` maps them, so the hash is the one the imported checkpoint keeps)."""
    from foundry.data.tokenizer import Tokenizer

    path = Path(path)
    if path.is_dir() and not (path / "tokenizer.json").is_file() and (path / "checkpoints").is_dir():
        path = resolve_checkpoint(path)
    hf_config = path / "config.json" if path.is_dir() else None
    try:
        return Tokenizer.load(path)
    except DataError:
        if hf_config is None or not hf_config.is_file() or not (path / "tokenizer.json").is_file():
            raise
    cfg = read_json(hf_config)
    text = (path / "tokenizer.json").read_text(encoding="utf-8")
    if isinstance(cfg, dict) and cfg.get("model_type") == "bert":
        from foundry.model.encoder_hf import bert_special_tokens

        return Tokenizer.from_foreign(text, bert_special_tokens(path, text))
    tokenizer = Tokenizer.from_hf_directory(path, cfg if isinstance(cfg, dict) else {}, text)
    # a base model's tokenizer gains foundry's markers on import: the same here, so the hashes agree
    return tokenizer.with_foundry_template() if tokenizer.chat_template.name == "foundry" else tokenizer


def _import_bert(hf_dir: Path, cfg: dict):
    """A BertForMaskedLM directory -> (Encoder, Tokenizer)."""
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.encoder_hf import bert_special_tokens, import_bert_model
    from foundry.model.hf import load_hf_state

    tok_path = hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: missing; only fast tokenizers (tokenizer.json) can be imported")
    text = tok_path.read_text(encoding="utf-8")
    model = import_bert_model(hf_dir, load_hf_state(hf_dir), text)
    tokenizer = Tokenizer.from_foreign(text, bert_special_tokens(hf_dir, text))
    return model, tokenizer
