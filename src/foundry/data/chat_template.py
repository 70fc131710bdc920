"""A model's own chat template, rendered as transformers renders it, and the assistant spans it implies.

Design choices:
- A chat template belongs to the model's tokenizer (LLaMA-Factory #5145, Unsloth #1787): an imported model
  keeps the Jinja template of its `tokenizer_config.json` (or `chat_template.jinja`), and SFT, DPO, GRPO,
  evaluation, the bake-off, `generate`, `chat` and `serve` all render through `ChatTemplate.render`.
- Rendering matches `transformers.PreTrainedTokenizerBase.apply_chat_template`: a sandboxed, immutable Jinja
  environment (templates are untrusted code) with `trim_blocks` and `lstrip_blocks`, the loop-controls
  extension, a `tojson` that does not HTML-escape, `raise_exception`, `strftime_now`, and the tokenizer's
  special-token strings (`bos_token`, `eos_token`, ...) in the context; `tools` and `documents` are None.
  The rendered text is then encoded with no special tokens added, as `apply_chat_template` does, so the ids
  are the same.
- The loss mask is derived for any template, without assuming marker strings: assistant turn k is
  supervised from the end of the conversation before it rendered with the generation prompt, to the point
  where the conversation ending with turn k stops agreeing with the whole conversation. That covers what
  the turn adds after its content (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, Mistral's `</s>`), so the
  tuned model learns to stop (trl #1623). A template that re-renders the last turn differently (Qwen3's
  empty think block) falls back to the turn's content plus the end-of-turn token that follows it.
- A template that cannot render a conversation is a one-line `DataError` naming the template and `where`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from foundry.errors import DataError


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): renders its body;
        the mask here is derived from the rendered prefixes instead."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=32)
def _compile(source: str):
    return _environment().from_string(source)


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special-token strings its context holds.

    `name` says where it came from (a file, or "foundry"), for error messages and the model card;
    `end_tokens` are the tokenizer's end-of-turn/stop token strings, used by the span fallback."""

    source: str
    name: str
    tokens: dict = field(default_factory=dict)  # bos_token, eos_token, pad_token, unk_token, ...
    end_tokens: tuple[str, ...] = ()

    def _template(self, where: str):
        import jinja2

        try:
            return _compile(self.source)
        except jinja2.TemplateError as exc:
            raise DataError(f"{where}: chat template {self.name} does not compile ({_reason(exc)})") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = False, where: str = "conversation") -> str:
        """The text `apply_chat_template(messages, add_generation_prompt=..., tokenize=False)` gives."""
        template = self._template(where)
        try:
            return template.render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **self.tokens)
        except Exception as exc:  # TemplateError, or a template's own TypeError/KeyError on this conversation
            raise DataError(f"{where}: chat template {self.name} cannot render this conversation "
                            f"({_reason(exc)})") from None

    def render_with_spans(self, messages: list[dict], add_generation_prompt: bool = False,
                          where: str = "conversation") -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of what each assistant turn adds (its content and the
        end-of-turn text the template emits after it)."""
        full = self.render(messages, add_generation_prompt, where)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:k], add_generation_prompt=True, where=where)
            if not full.startswith(before):
                raise DataError(f"{where}: chat template {self.name} renders the conversation before assistant "
                                f"turn {k + 1} differently inside the whole conversation, so its loss mask "
                                "cannot be derived; choose another template (chat_template: foundry or PATH.jinja)")
            start = len(before)
            end = start + _common_prefix_length(self.render(messages[:k + 1], where=where)[start:], full[start:])
            content = message["content"].strip()
            if content and content not in full[start:end]:  # the turn is re-rendered when it is not the last
                at = full.find(content, start)
                if at < 0:
                    raise DataError(f"{where}: chat template {self.name} does not render assistant turn {k + 1}'s "
                                    "content, so there is nothing to supervise")
                end = at + len(content)
                tail = full[end:]
                for token in self.end_tokens:
                    stripped = tail.lstrip(" \n")
                    if stripped.startswith(token):
                        end += len(tail) - len(stripped) + len(token)
                        break
            spans.append((start, end))
        return full, spans


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def special_token_strings(config: dict) -> dict:
    """{bos_token, eos_token, pad_token, unk_token, additional_special_tokens} as strings, as transformers passes
    its `special_tokens_map` to the template."""
    from foundry.utils.hf_files import token_text

    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        if token_text(config.get(key)) is not None:
            out[key] = token_text(config.get(key))
    extra = [token_text(v) for v in config.get("additional_special_tokens") or [] if token_text(v) is not None]
    if extra:
        out["additional_special_tokens"] = extra
    return out
