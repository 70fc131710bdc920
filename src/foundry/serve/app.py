"""What every app of `foundry serve` shares (the generation server, CLIP embeddings, classifiers): the
FastAPI app with OpenAI-style error bodies, the API-key check, the request-body size limit and the small
thread pool that keeps CPU work off the event loop."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import Request

from foundry.serve.protocol import MAX_BODY_BYTES, APIError

log = logging.getLogger("foundry.serve")
CPU_WORKERS = 2  # threads for tokenising prompts and decoding images, off the event loop


_cpu_pool = None


async def off_loop(fn, *args):
    """`fn(*args)` in a small bounded thread pool, so a large prompt or image never blocks other clients
    (or /health) on the event loop; at most `CPU_WORKERS` such jobs run at once, the rest wait their turn."""
    global _cpu_pool
    if _cpu_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _cpu_pool = ThreadPoolExecutor(CPU_WORKERS, thread_name_prefix="foundry-cpu")
    return await asyncio.get_running_loop().run_in_executor(_cpu_pool, fn, *args)


def check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")


def check_body_size(request: Request) -> None:
    """413 when the declared body is over `MAX_BODY_BYTES`, before it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")


def add_model_routes(app, settings, **details) -> None:
    """`GET /v1/models` and `GET /v1/models/{name}` for the one model an app serves (OpenAI's shape; `details`,
    such as a classifier's labels, are added to the model object), both behind the API key."""
    import time

    card = {"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "foundry",
            **details}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, settings.api_key)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request):
        check_key(request, settings.api_key)
        if name != settings.model_name:
            raise APIError(404, f"model '{name}' does not exist", param="model", code="model_not_found")
        return card


def api_app(title: str, lifespan=None):
    """A FastAPI app whose errors, ours (APIError) and the framework's (404, 405), are OpenAI-style JSON bodies."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request, _exc):  # the client hung up while sending its body: one line, no traceback
        log.info("%s %s: client disconnected before its request body arrived", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _server_error(_request, exc):  # a bug, not the client's: an OpenAI body (the log keeps the traceback)
        return JSONResponse(APIError(500, f"internal error ({type(exc).__name__})", "server_error").body(),
                            status_code=500)

    return app
