"""`foundry serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for one foundry model: the routes.

Design choices:
- Endpoints `/v1/models`, `/v1/completions`, `/v1/chat/completions`, answered in OpenAI's shapes, so the
  official clients work unchanged; streaming is server-sent events of OpenAI chunks ending `data: [DONE]`.
  Request models, validation and bodies live in `protocol.py`; generation in `engine.py`.
- Chat requests are rendered by `foundry.data.chat.render_chat(..., add_generation_prompt=True)`, the
  same template SFT trained on.
- One engine thread decodes up to `max_concurrency` requests together in batched steps (continuous
  batching); more requests wait in a FIFO queue of `max_queue` places, and only a request finding the
  queue full is refused (429 with `Retry-After`). A client that goes away (a closed stream, or a
  disconnected plain request) leaves the queue at once, or its row before the next step. Each reply's
  usage carries `queue_seconds`, which is also logged (logger `foundry.serve`).
- Every error a client can cause gets OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
  400 (malformed JSON, bad values, prompt too long), 401 (API key), 404 (unknown model or route),
  413 (request body over 4 MiB), 422 (wrong field types), 429 (queue full).
- Binds to 127.0.0.1 unless told otherwise; with `--api-key` every /v1 request needs
  `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Literal

from fastapi import Request  # module level: FastAPI resolves the string annotations of handlers here

from foundry.errors import DataError
from foundry.serve.app import add_model_routes, api_app, check_body_size, check_key, log, off_loop
from foundry.serve.engine import Engine, QueueFull, Sequence
from foundry.serve.protocol import (DEFAULT_COMPLETION_TOKENS, APIError, ChatRequest,
                                    CompletionRequest, Limits, Reply, TextStream, _Request, message_text,
                                    parse_body, request_sampling, stop_strings, usage)

RETRY_AFTER_S = 1  # what a refused client is told to wait: a few decode steps free a place
DISCONNECT_POLL_S = 0.25  # how often a plain (non-streamed) request checks that its client is still there


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_prompt_tokens: int | None = None  # default: the context length minus one
    max_tokens_limit: int = 512
    max_concurrency: int = 16  # sequences decoded together in one batched step
    passages: int = 3
    max_queue: int = 256  # requests waiting for a row; one more is refused with 429


async def read_request(request: Request, cls, settings: ServerSettings) -> _Request:
    """The checked request body: key, size, JSON, types, then the model name."""
    check_key(request, settings.api_key)
    check_body_size(request)
    raw = await request.body()
    req = await off_loop(parse_body, raw, cls) if len(raw) > 1 << 16 else parse_body(raw, cls)
    if req.model != settings.model_name:
        raise APIError(404, f"model '{req.model}' does not exist; this server serves '{settings.model_name}'",
                       param="model", code="model_not_found")
    return req


def open_tokens(engine: Engine, seq: Sequence):
    """Queue `seq` and return its async token iterator, or refuse with 429 when the queue is full."""
    try:
        return engine.stream(seq)
    except QueueFull as exc:
        raise APIError(429, f"server is busy ({exc}); retry after {RETRY_AFTER_S}s", "rate_limit_error",
                       code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None


def finish_reason(seq: Sequence, text: TextStream) -> str:
    return "stop" if text.stopped or seq.finish_reason == "stop" else "length"


def log_reply(reply: Reply, seq: Sequence, text: TextStream) -> None:
    log.info("%s prompt=%d completion=%d queue=%.3fs finish=%s", reply.id, len(seq.prompt_ids), len(text.ids),
             seq.queue_seconds, "cancelled" if seq.cancelled and not text.stopped else finish_reason(seq, text))


async def whole_reply(request: Request, engine: Engine, seq: Sequence, reply: Reply, text: TextStream) -> dict | None:
    """A plain (non-streamed) reply, or None when the client disconnected meanwhile (its sequence is cancelled)."""
    tokens = open_tokens(engine, seq)

    async def collect() -> None:
        async for token in tokens:
            text.push(token)
            if text.stopped:
                break

    task = asyncio.ensure_future(collect())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})  # the cancellation runs the token iterator's cleanup
                log.info("%s client disconnected after %.3fs in the queue", reply.id, seq.queue_seconds)
                return None
        task.result()
    except Exception as exc:
        raise APIError(500, f"generation failed: {exc}", "server_error") from None
    finally:
        await tokens.aclose()  # cancels the sequence if the client went away
    text.finish()
    log_reply(reply, seq, text)
    return reply.whole(text.text, finish_reason(seq, text), usage(len(seq.prompt_ids), len(text.ids),
                                                                   seq.queue_seconds))


def streamed_reply(engine: Engine, seq: Sequence, reply: Reply, text: TextStream, include_usage: bool):
    """A streamed reply: the sequence is queued now (429 before any byte is sent), its chunks follow."""
    from fastapi.responses import StreamingResponse

    tokens = open_tokens(engine, seq)

    async def events():
        try:
            if reply.kind == "chat":
                yield reply.event([reply.choice("", None, first=True)])
            async for token in tokens:
                delta = text.push(token)
                if delta:
                    yield reply.event([reply.choice(delta, None)])
                if text.stopped:
                    break
            tail = text.finish()
            yield reply.event([reply.choice(tail, finish_reason(seq, text))])
            if include_usage:
                yield reply.event([], {"usage": usage(len(seq.prompt_ids), len(text.ids), seq.queue_seconds)})
            log_reply(reply, seq, text)
        except Exception as exc:  # the model failed mid-stream: the client gets an error event
            yield f"data: {json.dumps(APIError(500, f'generation failed: {exc}', 'server_error').body())}\n\n"
        finally:
            await tokens.aclose()  # stops generating (or leaves the queue) if the client closed the stream
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(model, tokenizer, settings: ServerSettings, index=None):
    """The FastAPI app serving `model` under `settings.model_name` (optionally grounded in `index`)."""
    from fastapi.responses import JSONResponse, Response

    from foundry.data.chat import render_chat, validate_messages

    # ---- an image-text (CLIP) model serves /v1/embeddings only (foundry.serve.embeddings) ----------
    if getattr(model.config, "architecture", None) == "clip":
        from foundry.serve.embeddings import create_embeddings_app

        return create_embeddings_app(model, tokenizer, settings)

    model.eval()
    engine = Engine(model, tokenizer, settings.max_concurrency, settings.max_queue)
    context = model.config.max_seq_len
    limits = Limits(context=context, vocab_size=model.config.vocab_size,
                    max_prompt_tokens=settings.max_prompt_tokens or context - 1,
                    max_tokens_limit=settings.max_tokens_limit,
                    longest_token_bytes=max(len(tokenizer.decode([i]).encode()) for i in range(tokenizer.vocab_size)))

    def encode(text: str) -> list[int]:  # in the thread pool; encode_batch lets go of the GIL, encode does not
        limits.check_prompt_size(len(text.encode()))
        return tokenizer.encode_batch([ground(text)])[0]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        engine.shutdown()

    app = api_app("foundry", lifespan=lifespan)
    app.state.engine = engine

    def ground(question: str) -> str:
        if index is None:
            return question
        from foundry.serve.retrieval import grounded_prompt

        return grounded_prompt(index, question, settings.passages)

    async def respond(request: Request, req: _Request, prompt_ids: list[int], default_max: int,
                      kind: Literal["text", "chat"]):
        sampling = request_sampling(req, prompt_ids, default_max, limits)
        text = TextStream(tokenizer, stop_strings(req))
        seq = Sequence(list(prompt_ids), sampling)
        reply = Reply(kind, settings.model_name, req.stream)
        if req.stream:
            return streamed_reply(engine, seq, reply, text, bool((req.stream_options or {}).get("include_usage")))
        body = await whole_reply(request, engine, seq, reply, text)
        if body is None:  # nobody is listening; 499 is what proxies log for a client that closed the request
            return Response(status_code=499)
        return JSONResponse(body, headers={"X-Queue-Seconds": f"{seq.queue_seconds:.4f}"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "active": engine.active, "queued": engine.queued,
                "max_concurrency": settings.max_concurrency, "max_queue": settings.max_queue}

    add_model_routes(app, settings)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await read_request(request, CompletionRequest, settings)
        prompt = req.prompt
        if isinstance(prompt, list):
            if prompt and all(isinstance(p, int) for p in prompt):
                ids = list(prompt)
            elif len(prompt) == 1:
                ids = await off_loop(encode, prompt[0])
            else:
                raise APIError(400, "only one prompt per request is supported", param="prompt",
                               code="invalid_value")
        else:
            ids = await off_loop(encode, prompt)
        return await respond(request, req, ids, DEFAULT_COMPLETION_TOKENS, "text")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await read_request(request, ChatRequest, settings)
        messages = []
        for m in req.messages:
            role = "system" if m.role == "developer" else m.role
            messages.append({"role": role, "content": message_text(m.content)})
        try:
            messages = validate_messages(messages, "messages", need_assistant=False)
        except DataError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        limits.check_prompt_size(sum(len(m["content"].encode()) for m in messages))
        if index is not None and messages and messages[-1]["role"] == "user":
            question = messages[-1]["content"]
            messages[-1] = {"role": "user", "content": await off_loop(ground, question)}
        try:  # the model's own template may refuse a conversation (a system turn, roles not alternating)
            ids, _ = await off_loop(lambda: render_chat(tokenizer, messages, add_generation_prompt=True,
                                                        where="messages"))
        except DataError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        return await respond(request, req, list(ids), settings.max_tokens_limit, "chat")

    add_chat_page(app, settings, index, context)
    return app


# ---- the chat page at / (static files in foundry/serve/static; it talks to /v1/chat/completions) -------
def add_chat_page(app, settings: ServerSettings, index, context: int) -> None:
    from foundry.serve.web import mount_static, page

    mount_static(app)

    @app.get("/")
    async def chat_page():
        return page("chat.html")

    @app.get("/ui/info")
    async def ui_info():  # what the page shows and offers; no secrets (the model name is public at /health)
        return {"model": settings.model_name, "retrieval": index is not None, "passages": settings.passages,
                "max_tokens_limit": settings.max_tokens_limit, "context": context,
                "needs_key": settings.api_key is not None}

    @app.post("/ui/passages")
    async def ui_passages(request: Request):  # the passages the server grounds a question in, to cite them
        check_key(request, settings.api_key)
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "request body is not JSON", code="invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise APIError(400, "expected {\"query\": TEXT}", param="query", code="invalid_value")
        if index is None:
            return {"passages": []}
        return {"passages": index.search(body["query"][:4000], settings.passages)}
