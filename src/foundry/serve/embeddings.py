"""`foundry serve` for an image-text (CLIP) model: OpenAI's `/v1/embeddings`, for texts and images.

    POST /v1/embeddings {"model": NAME, "input": "a red circle"}
    POST /v1/embeddings {"model": NAME, "input": ["a red circle", {"image": "<base64 PNG/JPEG or data: URL>"}]}

Texts are embedded by the text tower, images (`{"image": ...}` items) by the image tower, into the one
shared space, unit length, so a text's and an image's dot product is their cosine similarity. The reply
is OpenAI's: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage"}`; `encoding_format: "base64"` returns little-endian float32 bytes, as OpenAI does. Errors have
OpenAI's body, as the rest of the server: 400 (an image that does not decode, an empty input), 401,
404 (model), 413 (a body over 4 MiB, or an image over `MAX_IMAGE_PIXELS`, judged from its header before it
is decoded), 422.

Images are decoded and preprocessed one by one in the server's small thread pool (`app.off_loop`), so
the event loop (and `/health`) stays responsive and only the preprocessed pixels are held, never all the
decoded images of a request at once.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import numpy as np
import torch
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from foundry.serve.app import add_model_routes, api_app, check_body_size, check_key, off_loop
from foundry.serve.protocol import APIError, parse_body

MAX_INPUTS = 256


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 image bytes, or a data: URL")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    input: str | ImageInput | list[str | ImageInput]
    encoding_format: Literal["float", "base64"] = "float"


def decode_image_input(item: ImageInput, index: int):
    """An `{"image": ...}` item -> an RGB PIL image, or an APIError (400 not an image, 413 too many pixels)."""
    from foundry.data.images import BadImage, decode_image

    param = f"input.{index}.image"
    data = item.image
    if data.startswith("data:"):
        header, comma, data = data.partition(",")
        if not comma or not header.endswith(";base64"):
            raise APIError(400, f"input[{index}].image: a data: URL must be 'data:image/...;base64,<DATA>'",
                           param=param, code="invalid_image")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"input[{index}].image: not base64", param=param, code="invalid_image") from None
    try:
        return decode_image(raw, min_side=1)
    except BadImage as bad:
        status, code = (413, "image_too_large") if bad.reason == "huge_image" else (400, "invalid_image")
        raise APIError(status, f"input[{index}].image: {bad}", param=param, code=code) from None


def create_embeddings_app(model, tokenizer, settings):
    """The FastAPI app answering /health, /v1/models and /v1/embeddings for a CLIP `model`."""

    from foundry.data.images import preprocess

    def image_pixels(item: ImageInput, index: int) -> np.ndarray:  # runs in the thread pool
        return preprocess(decode_image_input(item, index), model.config.image_size)

    model.eval()
    device = next(model.parameters()).device
    app = api_app("foundry")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "kind": "embeddings"}

    add_model_routes(app, settings)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        check_key(request, settings.api_key)
        check_body_size(request)
        req = await off_loop(parse_body, await request.body(), EmbeddingRequest)
        if req.model != settings.model_name:
            raise APIError(404, f"model '{req.model}' does not exist; this server serves '{settings.model_name}'",
                           param="model", code="model_not_found")
        items = req.input if isinstance(req.input, list) else [req.input]
        if not items or len(items) > MAX_INPUTS:
            raise APIError(400, f"input: give 1 to {MAX_INPUTS} texts or images", param="input", code="invalid_input")
        texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
        images = [(i, await off_loop(image_pixels, x, i)) for i, x in enumerate(items) if not isinstance(x, str)]
        out: list = [None] * len(items)
        tokens = 0

        def embed() -> int:  # the towers' forward passes, also off the event loop
            with torch.no_grad():
                counted = 0
                if texts:
                    ids = tokenizer.encode_batch([t for _, t in texts], model.config.text_len)
                    counted += int((ids != tokenizer.pad_id).sum()) + len(texts)  # the end-of-text of each row
                    for (i, _), z in zip(texts, model.encode_text(ids.to(device)).float().cpu()):
                        out[i] = z
                if images:
                    pixels = torch.from_numpy(np.stack([p for _, p in images]))
                    for (i, _), z in zip(images, model.encode_image(pixels.to(device)).float().cpu()):
                        out[i] = z
                return counted

        tokens += await off_loop(embed)

        def encode(z: torch.Tensor):
            if req.encoding_format == "base64":
                return base64.b64encode(z.numpy().astype("<f4").tobytes()).decode()
            return z.tolist()

        return {"object": "list", "model": settings.model_name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(z)} for i, z in enumerate(out)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app
