"""Reading the tokenizer files of a Hugging Face model directory, for the model import, GGUF and the tokenizer.

transformers >= 4.43 saves a chat template as `chat_template.jinja`; older versions (and many hub models) keep
it as `chat_template` in `tokenizer_config.json`: a string, or a list of named templates, of which "default" is
the one `apply_chat_template` uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from foundry.errors import DataError


def read_tokenizer_config(hf_dir: str | Path) -> dict:
    """`special_tokens_map.json` updated by `tokenizer_config.json` (the latter wins), null values dropped."""
    merged: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(hf_dir) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            merged.update({k: v for k, v in data.items() if v is not None})
    return merged


def chat_template_of(hf_dir: str | Path, tokenizer_config: dict) -> str | None:
    """The directory's chat template (`chat_template.jinja`, else tokenizer_config.json's), or None for a base
    model without one."""
    jinja_file = Path(hf_dir) / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{jinja_file}: not UTF-8 text") from None
    value = tokenizer_config.get("chat_template")
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}.get("default")
    if value is not None and not isinstance(value, str):
        raise DataError(f"{Path(hf_dir) / 'tokenizer_config.json'}: 'chat_template' must be a string")
    return value or None


def chat_template_file(hf_dir: str | Path) -> Path:
    """The file a directory's chat template is read from, to name it in messages."""
    jinja_file = Path(hf_dir) / "chat_template.jinja"
    return jinja_file if jinja_file.is_file() else Path(hf_dir) / "tokenizer_config.json"


def token_text(value) -> str | None:
    """A special token as tokenizer configs spell it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
