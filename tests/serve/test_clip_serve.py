"""`foundry serve` with a CLIP model: OpenAI's /v1/embeddings for texts and images, equal to the model's own
embeddings, with OpenAI's error bodies for bad input."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from foundry.data.clip_tokenizer import ClipTokenizer
from foundry.data.images import preprocess
from foundry.model.clip import Clip, config_from_preset
from foundry.serve.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def served():
    from fastapi.testclient import TestClient

    tokenizer = ClipTokenizer.train(["a red circle", "two blue squares"] * 3, vocab_size=540, min_frequency=1)
    torch.manual_seed(0)
    model = Clip(config_from_preset("test", vocab_size=tokenizer.vocab_size)).eval()
    client = TestClient(create_app(model, tokenizer, ServerSettings(model_name="tiny-clip")))
    return client, model, tokenizer


def png_b64(seed: int) -> tuple[str, Image.Image]:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 14, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), img


def test_texts_and_images_embed_as_the_model_does(served):
    client, model, tokenizer = served
    b64, img = png_b64(1)
    r = client.post("/v1/embeddings", json={"model": "tiny-clip", "input": [
        "a red circle", {"image": "data:image/png;base64," + b64}, "two blue squares"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    got = torch.tensor([d["embedding"] for d in body["data"]])
    with torch.no_grad():
        texts = model.encode_text(tokenizer.encode_batch(["a red circle", "two blue squares"], model.config.text_len))
        image = model.encode_image(torch.from_numpy(preprocess(img, model.config.image_size))[None])
    assert torch.allclose(got[0], texts[0], atol=1e-6) and torch.allclose(got[2], texts[1], atol=1e-6)
    assert torch.allclose(got[1], image[0], atol=1e-6)
    assert body["usage"]["prompt_tokens"] > 0

    one = client.post("/v1/embeddings", json={"model": "tiny-clip", "input": "a red circle",
                                              "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, texts[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("payload, status, code", [
    ({"model": "tiny-clip", "input": [{"image": base64.b64encode(b"not an image").decode()}]}, 400, "invalid_image"),
    ({"model": "tiny-clip", "input": [{"image": "%%%"}]}, 400, "invalid_image"),
    ({"model": "tiny-clip", "input": []}, 400, "invalid_input"),
    ({"model": "other", "input": "x"}, 404, "model_not_found"),
    ({"model": "tiny-clip", "input": 3}, 422, "invalid_type"),
])
def test_bad_requests_get_openai_errors(served, payload, status, code):
    client = served[0]
    r = client.post("/v1/embeddings", json=payload)
    assert r.status_code == status and r.json()["error"]["code"] == code
