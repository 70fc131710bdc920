"""An imported Hugging Face tokenizer directory, read for `Tokenizer.from_hf_directory`: its special tokens by
foundry role (eos, bos, pad, end of turn), its own chat template, and the model's stop tokens.

Design choices:
- The end of turn is what the model's own template writes right after an assistant turn's content (ChatML's
  `<|im_end|>`, Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`, Mistral's `</s>`), found by rendering a probe
  conversation; a vocabulary without a template falls back to the well-known names, then to end of text.
- Stop tokens are `generation_config.json`'s `eos_token_id` list (Llama 3 instruct stops at `<|eot_id|>` and
  `<|eom_id|>`), then config.json's: generation stops where the model's own authors said it should.
"""

from __future__ import annotations

import json
from pathlib import Path

from foundry.data.chat_template import ChatTemplate, special_token_strings
from foundry.errors import CheckpointError, FoundryError
from foundry.utils.hf_files import chat_template_file, chat_template_of, read_tokenizer_config, token_text

KNOWN_END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")


def _ids(value) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _template_end_of_turn(template: str, tokens: dict, hf_tok) -> str | None:
    """The special token the template writes right after an assistant turn's content."""
    probe = "\u2063probe\u2063"
    try:
        text = ChatTemplate(template, "probe", tokens).render(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
    except FoundryError:
        return None
    rest = text[text.find(probe) + len(probe):].lstrip() if probe in text else ""
    specials = {t.content for t in hf_tok.get_added_tokens_decoder().values() if t.special}
    return next((t for t in sorted(specials, key=len, reverse=True) if rest.startswith(t)), None)


def foreign_tokenizer_settings(hf_dir: str | Path, model_config: dict, tokenizer_json: str, hf_tok) -> dict:
    """Keyword arguments of `Tokenizer.from_foreign` for an imported directory: `special_tokens` by role, the
    model's own `chat_template` (None for a base model), the strings its context holds, the stop tokens."""
    hf_dir = Path(hf_dir)
    tok_cfg = read_tokenizer_config(hf_dir)

    def from_id(key):
        ids = _ids(model_config.get(key))
        return hf_tok.id_to_token(ids[0]) if ids else None

    special = {}
    for role, key in (("eos", "eos_token"), ("bos", "bos_token"), ("pad", "pad_token")):
        token = token_text(tok_cfg.get(key)) or from_id(f"{key}_id")
        if token is not None and hf_tok.token_to_id(token) is not None:
            special[role] = token
    if "eos" not in special:
        raise CheckpointError(f"{hf_dir}: cannot find the end-of-text token (no eos_token in "
                              "tokenizer_config.json and no eos_token_id in config.json)")
    template = chat_template_of(hf_dir, tok_cfg)
    tokens = special_token_strings(tok_cfg)
    eot = _template_end_of_turn(template, tokens, hf_tok) if template else None
    special["eot"] = next((t for t in ((eot,) if eot else ()) + KNOWN_END_OF_TURN
                           if hf_tok.token_to_id(t) is not None), special["eos"])
    for role in ("system", "user", "assistant"):
        if hf_tok.token_to_id(f"<|{role}|>") is not None:
            special[role] = f"<|{role}|>"

    generation_file = hf_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.is_file() else {}
    stop_ids = _ids(generation.get("eos_token_id") if isinstance(generation, dict) else None)
    stops = [hf_tok.id_to_token(i) for i in dict.fromkeys(stop_ids + _ids(model_config.get("eos_token_id")))]
    return {"special_tokens": special, "chat_template": template,
            "template_name": str(chat_template_file(hf_dir)) if template else "foundry",
            "template_tokens": tokens, "stop_tokens": [t for t in stops if t]}
