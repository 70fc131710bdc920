"""Chat rendering for every consumer: SFT masks, DPO, GRPO, evaluation, generation, export and the server.

Design choices:
- A model keeps its own chat template (`foundry.data.chat_template`): `render_chat` renders through the
  tokenizer's template, which for an imported model is the model's own Jinja template, rendered as
  transformers renders it (same text, same ids as `apply_chat_template`).
- foundry's own template, for models foundry trains from scratch (and base models imported without one):
  no newlines, `<|system|>{content}<|end|><|user|>{content}<|end|><|assistant|>{content}<|end|>`; the
  generation prompt is `<|assistant|>`. `CHAT_TEMPLATE` is the same thing in Jinja, stored in
  `tokenizer_config.json`; `render_text` is its direct (fast) form, checked equal to the Jinja one.
- The rendered string is encoded ONCE and the assistant mask comes from character spans of that string
  mapped through the tokenizer's offsets, never by searching for a response marker in the ids, which
  fails silently when the marker tokenises differently in context (trl #1820).
- Each assistant turn's end-of-turn token is supervised, so a tuned model learns to stop (trl #1623).
- Conversations longer than the context are truncated by one stated rule (`fit_conversation`), and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from foundry.errors import DataError
from foundry.lm_metrics import IGNORE_INDEX

ROLES = ("system", "user", "assistant")

# Jinja form stored in tokenizer_config.json so transformers' apply_chat_template renders the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

END = "<|end|>"
GENERATION_PROMPT = "<|assistant|>"
# foundry's template markers; a model given foundry's template must have each as one special token
FOUNDRY_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", END)


def role_marker(role: str) -> str:
    return f"<|{role}|>"


def render_text(messages: list[dict], add_generation_prompt: bool = False, template=None,
                where: str = "conversation") -> tuple[str, list[tuple[int, int]]]:
    """The exact text the chat template renders, plus the character spans the loss is taken on.

    `template`: a `ChatTemplate` (a model's own); None or foundry's own renders foundry's template directly,
    where a supervised span is an assistant turn's content and its `<|end|>` (the role marker is not in it).
    """
    if template is not None and template.source != CHAT_TEMPLATE:
        return template.render_with_spans(messages, add_generation_prompt, where)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in messages:
        head, body = role_marker(m["role"]), m["content"] + END
        parts += [head, body]
        pos += len(head)
        if m["role"] == "assistant":
            spans.append((pos, pos + len(body)))
        pos += len(body)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), spans


def _encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # foundry's Tokenizer wraps a Hugging Face `tokenizers.Tokenizer`; its Encoding carries character offsets.
    hf = getattr(tokenizer, "_hf", tokenizer)
    enc = hf.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                where: str = "conversation") -> tuple[list[int], list[bool]]:
    """Token ids of the conversation rendered by the tokenizer's chat template and, per token, whether the
    loss is taken on it.

    Returns (ids, assistant_mask) with len(ids) == len(assistant_mask); mask[i] is True when token i lies
    inside what an assistant turn adds (its content and its end-of-turn). `where` names the conversation
    (`file:line`, or the request) in the one-line error of a template that cannot render it.
    """
    text, spans = render_text(messages, add_generation_prompt, getattr(tokenizer, "chat_template", None), where)
    ids, offsets = _encode_with_offsets(tokenizer, text)
    mask = [False] * len(ids)
    j = 0  # spans and offsets are both sorted: one merge-like pass
    for i, (start, end) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        # a token counts only when it lies wholly inside a span (special tokens split the text before BPE)
        mask[i] = j < len(spans) and spans[j][0] <= start and end <= spans[j][1] and end > start
    return ids, mask


def assistant_loss_targets(ids: list[int], mask: list[bool]) -> list[int]:
    """Next-token targets for `ids`: targets[t] = ids[t+1] where token t+1 is supervised, else -100."""
    return [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


# ---- reading --------------------------------------------------------------------------------------

def validate_messages(messages, where: str, need_assistant: bool = True) -> list[dict]:
    """Check one conversation's structure; `where` is the `file:line` prefix for errors."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for k, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {k} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {k} has unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {k} content must be a string, got {type(m['content']).__name__}")
        if m["role"] == "system" and k != 1:
            raise DataError(f"{where}: message {k} is a system message; only the first message may be one")
        out.append({"role": m["role"], "content": m["content"]})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: conversation has no assistant turn, so there is nothing to learn from")
    return out


def iter_jsonl(path: str | Path, kind: str) -> Iterator[tuple[int, object]]:
    """(1-based line, parsed value) for every non-blank line; `kind` names the data in errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            yield lineno, value


class Conversation(list):
    """A conversation's messages that remember where they were read (`file:line`), so a template that cannot
    render them names that line."""

    def __init__(self, messages: list[dict], where: str):
        super().__init__(messages)
        self.where = where


def read_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from JSONL `{"messages": [{"role", "content"}, ...]}`, one per line (blank lines skipped)."""
    conversations = []
    for lineno, record in iter_jsonl(path, "chat data"):
        if not isinstance(record, dict) or "messages" not in record:
            raise DataError(f"{path}:{lineno}: expected an object with a 'messages' list")
        where = f"{path}:{lineno}"
        conversations.append(Conversation(validate_messages(record["messages"], where), where))
    if not conversations:
        raise DataError(f"{path}: no conversations")
    return conversations


# ---- fitting into the context ----------------------------------------------------------------------

@dataclass
class TruncationStats:
    """How many conversations each branch of the truncation rule touched."""

    conversations: int = 0
    dropped_turns: int = 0  # conversations that lost whole early turns
    cut_tail: int = 0  # conversations whose last tokens were cut
    skipped: int = 0  # conversations with no supervised token left after truncation
    tokens: int = 0  # tokens kept
    supervised: int = 0  # supervised tokens kept

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EncodedChat:
    ids: list[int]
    mask: list[bool]
    meta: dict = field(default_factory=dict)


def fit_conversation(tokenizer, messages: list[dict], max_tokens: int,
                     stats: TruncationStats | None = None) -> EncodedChat | None:
    """Render `messages` into at most `max_tokens` tokens by the stated rule; None if nothing is left to learn.

    Rule: (1) drop whole exchanges from the start, keeping the system prompt, each time removing
    everything up to the next user turn, while at least one assistant turn remains; (2) if the last
    exchange alone is still too long, cut the tail of the token sequence (the final assistant turn
    loses its end, so that example does not teach stopping); (3) if no supervised token survives,
    skip the conversation.
    """
    stats = stats if stats is not None else TruncationStats()
    stats.conversations += 1
    where = getattr(messages, "where", "conversation")
    ids, mask = render_chat(tokenizer, messages, where=where)
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    dropped = False
    while len(ids) > max_tokens:
        # the next exchange starts at the second user turn; stop if dropping would lose every assistant turn
        starts = [k for k, m in enumerate(rest) if m["role"] == "user" and k > 0]
        if not starts or not any(m["role"] == "assistant" for m in rest[starts[0]:]):
            break
        rest = rest[starts[0]:]
        dropped = True
        ids, mask = render_chat(tokenizer, system + rest, where=where)
    stats.dropped_turns += dropped
    if len(ids) > max_tokens:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
        stats.cut_tail += 1
    # a supervised token at position 0 has no context to be predicted from
    if not any(mask[1:]):
        stats.skipped += 1
        return None
    stats.tokens += len(ids)
    stats.supervised += sum(mask[1:])
    return EncodedChat(ids, mask)
