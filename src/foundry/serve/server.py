"""`foundry serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for one foundry model.

Design choices:
- Endpoints `/v1/models`, `/v1/completions`, `/v1/chat/completions`, answered in OpenAI's shapes, so the
  official clients work unchanged; streaming is server-sent events of OpenAI chunks ending `data: [DONE]`.
- Chat requests are rendered by `foundry.data.chat.render_chat(..., add_generation_prompt=True)`, the
  same template SFT trained on.
- Generation runs in worker threads (a pool the size of `max_concurrency`), so the event loop keeps
  answering other clients; a request beyond `max_concurrency` is refused with 429 at once rather than
  queued without bound. A closed stream sets a flag the worker checks after every token, so an abandoned
  request stops using the model within one token.
- Every error a client can cause gets OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
  400 (malformed JSON, bad values, prompt too long), 401 (API key), 404 (unknown model or route),
  413 (request body over 4 MiB), 422 (wrong field types), 429 (too many concurrent requests).
- Binds to 127.0.0.1 unless told otherwise; with `--api-key` every /v1 request needs
  `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request  # module level: FastAPI resolves the string annotations of handlers here
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundry.errors import DataError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 4 << 20  # a request body beyond this is refused with 413 before it is parsed


class APIError(Exception):
    """An error answered to the client as an OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- request bodies ------------------------------------------------------------------------------
class _Request(BaseModel):
    # Fields OpenAI defines that we do not use (logit_bias, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0)
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage]


# ---- generation engine ---------------------------------------------------------------------------
@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Owns the model: bounds concurrent generations and runs each in a worker thread."""

    def __init__(self, model, tokenizer, max_concurrency: int):
        self.model, self.tokenizer = model, tokenizer
        self.max_concurrency = max_concurrency
        self.active = 0
        self.tokens_generated = 0  # over the server's life, for tests and /health
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="foundry-gen")

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.max_concurrency:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1

    def start(self, job: Job):
        """Start generating now (the slot is already acquired; the worker releases it when it ends) and
        return an async iterator of the token ids. Closing the iterator stops the worker."""
        from foundry.serve.generate import generate

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def work():
            try:
                for token in generate(self.model, self.tokenizer, job.prompt_ids, max_new_tokens=job.max_tokens,
                                      temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
                                      seed=job.seed):
                    if job.cancelled.is_set():
                        break
                    with self._lock:
                        self.tokens_generated += 1
                    loop.call_soon_threadsafe(queue.put_nowait, token)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as exc:  # surfaced to the request as a 500
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                self.release()

        try:
            self._pool.submit(work)
        except RuntimeError:  # pool shut down
            self.release()
            raise APIError(503, "server is shutting down", "server_error") from None

        async def feed():
            try:
                while True:
                    item = await queue.get()
                    if item is done:
                        return
                    if isinstance(item, BaseException):
                        raise APIError(500, f"generation failed: {item}", "server_error")
                    yield item
            finally:
                job.cancelled.set()  # the client went away (or we are done): stop the worker at the next token

        return feed()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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


# ---- the app ---------------------------------------------------------------------------------------
@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_prompt_tokens: int | None = None  # default: the context length minus one
    max_tokens_limit: int = 512
    max_concurrency: int = 4
    passages: int = 3


def _message_text(content) -> str:
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


def create_app(model, tokenizer, settings: ServerSettings, index=None):
    """The FastAPI app serving `model` under `settings.model_name` (optionally grounded in `index`)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from foundry.data.chat import render_chat, validate_messages

    model.eval()
    engine = Engine(model, tokenizer, settings.max_concurrency)
    context = model.config.max_seq_len
    max_prompt = min(settings.max_prompt_tokens or context - 1, context - 1)
    created = int(time.time())
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        engine.shutdown()

    app = FastAPI(title="foundry", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    async def parse(request: Request, cls):
        check_key(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        try:
            req = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(x) for x in first["loc"])
            raise APIError(422, f"{param}: {first['msg']}", param=param, code="invalid_type") from None
        if req.model != settings.model_name:
            raise APIError(404, f"model '{req.model}' does not exist; this server serves '{settings.model_name}'",
                           param="model", code="model_not_found")
        return req

    def make_job(req: _Request, prompt_ids: list[int], default_max: int) -> Job:
        max_tokens = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
        if max_tokens is None:
            max_tokens = default_max
        if max_tokens < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens",
                           code="invalid_value")
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of "
                                f"{settings.max_tokens_limit}", param="max_tokens", code="invalid_value")
        if req.n != 1:
            raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
        if not 0 <= req.temperature <= 2:
            raise APIError(400, f"temperature must be in [0, 2], got {req.temperature}", param="temperature",
                           code="invalid_value")
        if req.top_p is not None and not 0 < req.top_p <= 1:
            raise APIError(400, f"top_p must be in (0, 1], got {req.top_p}", param="top_p", code="invalid_value")
        if req.seed is not None and not -(2**63) <= req.seed < 2**64:
            raise APIError(400, f"seed must fit in 64 bits, got {req.seed}", param="seed", code="invalid_value")
        if req.top_k is not None and req.top_k < 1:
            raise APIError(400, f"top_k must be at least 1, got {req.top_k}", param="top_k", code="invalid_value")
        if len(prompt_ids) > max_prompt:
            raise APIError(400, f"prompt has {len(prompt_ids)} tokens, over the limit of {max_prompt}",
                           param="prompt", code="context_length_exceeded")
        if any(not 0 <= i < model.config.vocab_size for i in prompt_ids):
            raise APIError(400, "prompt token id out of the vocabulary", param="prompt", code="invalid_value")
        # The reply is cut at the context limit (finish_reason "length") rather than refused.
        max_tokens = min(max_tokens, context - len(prompt_ids))
        top_p = None if req.top_p in (None, 1.0) else req.top_p
        return Job(list(prompt_ids), max_tokens, req.temperature, req.top_k, top_p, req.seed)

    def stop_list(req: _Request) -> list[str]:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop", code="invalid_value")
        return stop

    def acquire() -> None:
        if not engine.try_acquire():
            raise APIError(429, f"server is busy: {settings.max_concurrency} requests already running; "
                                "retry shortly", "rate_limit_error", code="too_many_concurrent_requests")

    def usage(job: Job, stream: TextStream) -> dict:
        # Tokens the reply consumed: after a stop string the worker may have run a token or two further.
        used = len(stream.ids)
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": used,
                "total_tokens": len(job.prompt_ids) + used}

    def finish_reason(job: Job, stream: TextStream) -> str:
        return "stop" if stream.stopped or len(stream.ids) < job.max_tokens else "length"

    def ground(question: str) -> str:
        if index is None:
            return question
        from foundry.serve.retrieval import grounded_prompt

        return grounded_prompt(index, question, settings.passages)

    async def respond(req: _Request, job: Job, kind: Literal["text", "chat"]):
        stop = stop_list(req)
        acquire()
        rid = ("cmpl-" if kind == "text" else "chatcmpl-") + uuid.uuid4().hex[:24]
        obj = "text_completion" if kind == "text" else "chat.completion"
        stream = TextStream(tokenizer, stop)

        def choice(text: str, reason: str | None, first: bool = False) -> dict:
            if kind == "text":
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            if req.stream:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": reason}

        tokens = engine.start(job)
        if not req.stream:
            try:
                async for token in tokens:
                    stream.push(token)
                    if stream.stopped:
                        break
            finally:
                await tokens.aclose()
            stream.finish()
            return {"id": rid, "object": obj, "created": int(time.time()), "model": settings.model_name,
                    "choices": [choice(stream.text, finish_reason(job, stream))], "usage": usage(job, stream)}

        chunk_obj = "text_completion" if kind == "text" else "chat.completion.chunk"
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def sse(choices: list, extra: dict | None = None) -> str:
            body = {"id": rid, "object": chunk_obj, "created": int(time.time()), "model": settings.model_name,
                    "choices": choices, **(extra or {})}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            try:
                if kind == "chat":
                    yield sse([choice("", None, first=True)])
                async for token in tokens:
                    delta = stream.push(token)
                    if delta:
                        yield sse([choice(delta, None)])
                    if stream.stopped:
                        break
                tail = stream.finish()
                yield sse([choice(tail, finish_reason(job, stream))])
                if include_usage:
                    yield sse([], {"usage": usage(job, stream)})
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
            finally:
                await tokens.aclose()  # stops the worker if the client closed the stream
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "active": engine.active,
                "max_concurrency": settings.max_concurrency}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "foundry"}]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request):
        check_key(request)
        if name != settings.model_name:
            raise APIError(404, f"model '{name}' does not exist", param="model", code="model_not_found")
        return {"id": name, "object": "model", "created": created, "owned_by": "foundry"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        prompt = req.prompt
        if isinstance(prompt, list):
            if prompt and all(isinstance(p, int) for p in prompt):
                ids = list(prompt)
            elif len(prompt) == 1:
                ids = tokenizer.encode(ground(prompt[0]))
            else:
                raise APIError(400, "only one prompt per request is supported", param="prompt",
                               code="invalid_value")
        else:
            ids = tokenizer.encode(ground(prompt))
        job = make_job(req, ids, DEFAULT_COMPLETION_TOKENS)
        return await respond(req, job, "text")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, ChatRequest)
        messages = []
        for m in req.messages:
            role = "system" if m.role == "developer" else m.role
            messages.append({"role": role, "content": _message_text(m.content)})
        try:
            messages = validate_messages(messages, "messages", need_assistant=False)
        except DataError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        if index is not None and messages and messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": ground(messages[-1]["content"])}
        ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
        job = make_job(req, ids, settings.max_tokens_limit)
        return await respond(req, job, "chat")

    return app
