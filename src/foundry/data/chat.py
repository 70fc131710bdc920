"""The one chat template: SFT masks, generation, export and the server all render through here."""

from __future__ import annotations

ROLES = ("system", "user", "assistant")

# Jinja form stored in tokenizer_config.json so transformers' apply_chat_template renders the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
