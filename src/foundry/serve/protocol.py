"""The OpenAI protocol as foundry serves it: request models, validation, errors and response bodies.

Nothing here touches the model or the network: requests in, `Sampling` settings and JSON bodies out, so
each piece is testable alone.
- Request bodies are pydantic models; fields OpenAI defines that do not change the reply (user, ...) are
  accepted and ignored, as OpenAI's API ignores unknown ones; `logprobs`, which would, is refused (400).
- Every error a client can cause is an `APIError`, answered as `{"error": {message, type, param, code}}`.
- `TextStream` turns token ids into text deltas, holding back a split multi-byte character and a
  possible stop-string prefix, so a stop string is never sent and never cut in half.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundry.model.decoding import Sampling
from foundry.model.sampling import MIN_TEMPERATURE

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 4 << 20  # a request body beyond this is refused with 413 before it is parsed
MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    """An error answered to the client as an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- request bodies ------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    # Counts are strict integers: lax parsing would take `true` as 1 and `2.0` as 2.
    max_tokens: int | None = Field(None, strict=True)
    max_completion_tokens: int | None = Field(None, strict=True)
    temperature: float = Field(1.0)
    top_p: float | None = None
    top_k: int | None = Field(None, strict=True)
    n: int = Field(1, strict=True)
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, strict=True)
    logprobs: bool | int | None = None  # not implemented: refused when asked for, never silently ignored
    top_logprobs: int | None = None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage]


def parse_body(raw: bytes, cls: type[_Request]) -> _Request:
    """A request model from a raw body: 413 over the size bound, 400 for bad JSON, 422 for wrong types."""
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(x) for x in first["loc"])
        raise APIError(422, f"{param}: {first['msg']}", param=param, code="invalid_type") from None


def message_text(content) -> str:
    """A chat message's text: a string, or the concatenated text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, "only text content parts are supported", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def stop_strings(req: _Request) -> list[str]:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop", code="invalid_value")
    return stop


@dataclass
class Limits:
    """What this server accepts: prompt and reply lengths, and the model's vocabulary."""

    context: int
    vocab_size: int
    max_prompt_tokens: int
    max_tokens_limit: int
    longest_token_bytes: int = 0  # the most UTF-8 bytes one token stands for (0: unknown, no early check)

    @property
    def prompt_limit(self) -> int:
        return min(self.max_prompt_tokens, self.context - 1)

    def check_prompt_size(self, text_bytes: int) -> None:
        """Refuse (400), before tokenising, a prompt text that cannot fit: every token stands for at most
        `longest_token_bytes` bytes, so a text over `prompt_limit` times that is over the limit for sure.
        A multi-megabyte prompt is then never tokenised at all."""
        if self.longest_token_bytes and text_bytes > self.prompt_limit * self.longest_token_bytes:
            raise APIError(400, f"prompt of {text_bytes:,} bytes is over the limit of {self.prompt_limit} tokens",
                           param="prompt", code="context_length_exceeded")


def request_sampling(req: _Request, prompt_ids: list[int], default_max: int, limits: Limits) -> Sampling:
    """The request's sampling settings, checked; a prompt that leaves no room is refused here (400), before
    it queues. The reply is cut at the context limit (finish_reason "length") rather than refused."""
    max_tokens = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
    if max_tokens is None:
        max_tokens = default_max
    if max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens",
                       code="invalid_value")
    if max_tokens > limits.max_tokens_limit:
        raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
    if not (req.temperature == 0 or MIN_TEMPERATURE <= req.temperature <= 2):  # also refuses nan
        raise APIError(400, f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2], got {req.temperature}",
                       param="temperature", code="invalid_value")
    if req.logprobs not in (None, False, 0) or req.top_logprobs not in (None, 0):
        raise APIError(400, "logprobs are not supported by this server", param="logprobs", code="invalid_value")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {req.top_p}", param="top_p", code="invalid_value")
    if req.seed is not None and not -(2**63) <= req.seed < 2**64:
        raise APIError(400, f"seed must fit in 64 bits, got {req.seed}", param="seed", code="invalid_value")
    if req.top_k is not None and req.top_k < 1:
        raise APIError(400, f"top_k must be at least 1, got {req.top_k}", param="top_k", code="invalid_value")
    max_prompt = limits.prompt_limit
    if len(prompt_ids) > max_prompt:
        raise APIError(400, f"prompt has {len(prompt_ids)} tokens, over the limit of {max_prompt}",
                       param="prompt", code="context_length_exceeded")
    if any(not 0 <= i < limits.vocab_size for i in prompt_ids):
        raise APIError(400, "prompt token id out of the vocabulary", param="prompt", code="invalid_value")
    max_tokens = min(max_tokens, limits.context - len(prompt_ids))
    top_p = None if req.top_p in (None, 1.0) else req.top_p
    return Sampling(max_tokens, req.temperature, req.top_k, top_p, req.seed)


class TextStream:
    """Token ids -> text deltas: holds back a split multi-byte character and a possible stop-string prefix."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False  # a stop string was reached
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        self.text = text
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                self.text, self.stopped = text[:at], True
                return self._emit(len(self.text))
        hold = max((len(s) - 1 for s in self.stop), default=0)
        return self._emit(max(self.sent, len(text) - hold))

    def finish(self) -> str:
        if not self.stopped:
            self.text = self.tokenizer.decode(self.ids)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return delta


# ---- response bodies -----------------------------------------------------------------------------
class Reply:
    """The bodies of one reply (a completion or a chat completion, whole or streamed)."""

    def __init__(self, kind: Literal["text", "chat"], model_name: str, streamed: bool):
        self.kind, self.model_name, self.streamed = kind, model_name, streamed
        self.id = ("cmpl-" if kind == "text" else "chatcmpl-") + _random_id()

    def choice(self, text: str, reason: str | None, first: bool = False) -> dict:
        if self.kind == "text":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        if self.streamed:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason}

    def whole(self, text: str, reason: str, usage: dict) -> dict:
        obj = "text_completion" if self.kind == "text" else "chat.completion"
        return {"id": self.id, "object": obj, "created": int(time.time()), "model": self.model_name,
                "choices": [self.choice(text, reason)], "usage": usage}

    def event(self, choices: list, extra: dict | None = None) -> str:
        """One server-sent event holding a chunk."""
        obj = "text_completion" if self.kind == "text" else "chat.completion.chunk"
        body = {"id": self.id, "object": obj, "created": int(time.time()), "model": self.model_name,
                "choices": choices, **(extra or {})}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, queue_seconds: float) -> dict:
    """OpenAI's usage block, plus the seconds the request waited in the queue before generating."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "queue_seconds": round(queue_seconds, 4)}


def _random_id() -> str:
    import uuid

    return uuid.uuid4().hex[:24]
