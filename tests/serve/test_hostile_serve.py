"""Hostile requests on `foundry serve` (issue 30), through the real server on 127.0.0.1: one poisoned request
never ends the others, a multi-megabyte prompt or a large image never blocks other clients (or /health),
an image is bounded by its header before it is decoded, and every client error is an OpenAI JSON body."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch

from foundry.model.decoding import Sampling, Sequence
from foundry.model.sampling import sample_next
from foundry.serve.server import ServerSettings, create_app

from tests.helpers.serve_fixtures import WORDS, RunningServer, slow_model, tiny_model, wait_until

NAME = "tiny"


def test_sampling_is_numerically_safe_at_the_extremes():
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 5
    best = int(logits.argmax())
    g = torch.Generator().manual_seed(1)
    assert sample_next(logits, 1e-45, None, None, g) == best  # was: inf/nan -> multinomial raised
    assert sample_next(logits, 1.0, None, 1e-300, g) == best  # was: every token dropped -> nan
    assert sample_next(logits, 1e-3, 5, 1e-9, g) == best
    assert sample_next(torch.full((300,), 1e30), 2.0, None, None, g) in range(300)  # huge logits: no overflow


def _stream(url: str, results: dict, key, **body) -> None:
    payload = {"model": NAME, "prompt": "the river", "max_tokens": 60, "temperature": 0.8, "top_k": 5, "seed": key,
               "stream": True, **body}
    chunks, error = [], None
    with httpx.stream("POST", url + "/v1/completions", json=payload, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
            else:
                chunks.append(event["choices"][0])
    results[key] = {"status": r.status_code, "chunks": chunks, "error": error}


def _wait(predicate, seconds=30.0):
    wait_until(predicate, seconds, poll=0.005)


def test_four_streams_survive_poisoned_requests(tok):
    model = slow_model(tok, delay=0.04)  # never stops before max_tokens: every stream runs to 60 tokens
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=64, max_concurrency=8))
    engine = app.state.engine
    results: dict = {}
    with RunningServer(app) as srv:
        streams = [threading.Thread(target=_stream, args=(srv.url, results, i)) for i in range(4)]
        for t in streams:
            t.start()
        _wait(lambda: engine.active == 4)
        # over HTTP: a temperature that overflows float32 is refused; a vanishing top_p keeps the top token
        r = httpx.post(srv.url + "/v1/completions", timeout=30,
                       json={"model": NAME, "prompt": "the river", "max_tokens": 4, "temperature": 1e-45})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text
        tiny_p = httpx.post(srv.url + "/v1/completions", timeout=30, json={
            "model": NAME, "prompt": "the river", "max_tokens": 4, "temperature": 1.0, "top_p": 1e-300})
        greedy = httpx.post(srv.url + "/v1/completions", timeout=30,
                            json={"model": NAME, "prompt": "the river", "max_tokens": 4, "temperature": 0})
        assert tiny_p.status_code == 200, tiny_p.text
        assert tiny_p.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
        # in the engine: a row failing at its setup, and one failing mid-decode, end alone with their error
        bad_setup = Sequence([5, 6, 7], Sampling(8, 1.0, None, float("nan")))
        failing = Sequence([5, 6, 7], Sampling(8, 0.0))

        def explode(seq, _token):
            if len(seq.tokens) == 2:
                raise RuntimeError("callback exploded")

        failing.on_token = explode
        for seq in (bad_setup, failing):
            engine.submit(seq)
        _wait(lambda: bad_setup.finish_reason is not None and failing.finish_reason is not None)
        assert bad_setup.finish_reason == "error" and "top_p" in str(bad_setup.error)
        assert failing.finish_reason == "error" and "exploded" in str(failing.error)
        assert len(failing.tokens) == 2
        assert engine.active == 4, results  # the streams are still decoding
        for t in streams:
            t.join(60)
    for i in range(4):
        got = results[i]
        assert got["status"] == 200 and got["error"] is None, got
        assert got["chunks"][-1]["finish_reason"] == "length"
        assert sum(1 for c in got["chunks"] if c["text"]) >= 1


def _health_latencies(url: str, busy: threading.Thread) -> list[float]:
    """Seconds each /health took while `busy` ran (at least one probe)."""
    took = []
    with httpx.Client(timeout=30) as client:
        while busy.is_alive() or not took:
            start = time.monotonic()
            assert client.get(url + "/health").status_code == 200
            took.append(time.monotonic() - start)
            time.sleep(0.02)
    return took


def test_health_answers_while_multi_megabyte_prompts_arrive(tok):
    app = create_app(tiny_model(tok), tok, ServerSettings(NAME, max_tokens_limit=16))
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(WORDS, 450_000))  # about 3 MB; tokenising it took 1.8 s holding the GIL
    assert 1 << 20 < len(text) < 4 << 20
    results = {}
    with RunningServer(app) as srv:
        for route, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}),
                            ("/v1/completions", {"prompt": text}), ("/v1/completions", {"prompt": [text]})):
            def post():
                results[route] = httpx.post(srv.url + route, json={"model": NAME, "max_tokens": 4, **body},
                                            timeout=60)

            busy = threading.Thread(target=post)
            busy.start()
            took = _health_latencies(srv.url, busy)
            busy.join()
            assert max(took) < 0.5, (route, took)
            r = results[route]
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


@pytest.mark.parametrize("body, status, param", [
    ({"max_tokens": True}, 422, "max_tokens"),
    ({"max_tokens": 2.0}, 422, "max_tokens"),
    ({"logprobs": 2}, 400, "logprobs"),
    ({"temperature": float("nan")}, 400, "temperature"),
    ({"seed": "7"}, 422, "seed"),
])
def test_nonsense_values_are_refused(tok, body, status, param):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(tiny_model(tok), tok, ServerSettings(NAME, max_tokens_limit=16)))
    r = client.post("/v1/completions", content=json.dumps({"model": NAME, "prompt": "the", **body}),
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    chat = client.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                                                      "logprobs": True})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "logprobs"


# ---- /v1/embeddings on a CLIP model ------------------------------------------------------------------
def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG of `width` x `height` zeros: about 12 KB on disk, 300 MB once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    raw = zlib.compress(row * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def big_png(side: int, seed: int) -> str:
    from PIL import Image

    img = Image.new("RGB", (side, side), tuple(int(x) for x in np.random.default_rng(seed).integers(0, 256, 3)))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def clip_app():
    from foundry.data.clip_tokenizer import ClipTokenizer
    from foundry.model.clip import Clip, config_from_preset

    tokenizer = ClipTokenizer.train(["a red circle", "two blue squares"] * 3, vocab_size=540, min_frequency=1)
    torch.manual_seed(0)
    model = Clip(config_from_preset("test", vocab_size=tokenizer.vocab_size)).eval()
    return create_app(model, tokenizer, ServerSettings(model_name="tiny-clip"))


def test_an_image_over_the_pixel_cap_is_413_before_it_is_decoded(clip_app):
    from fastapi.testclient import TestClient

    client = TestClient(clip_app)
    bomb = base64.b64encode(bomb_png()).decode()
    start = time.monotonic()
    r = client.post("/v1/embeddings", json={"model": "tiny-clip", "input": [{"image": bomb}] * 4})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "image_too_large" and "pixels" in r.json()["error"]["message"]
    assert time.monotonic() - start < 2  # header only: decoding the four would take seconds and 1.2 GB
    for garbage in ("data:garbage", "data:image/png;base64,", "data:text/plain,hello"):
        r = client.post("/v1/embeddings", json={"model": "tiny-clip", "input": [{"image": garbage}]})
        assert r.status_code == 400, r.text  # was a plain-text 500 for "data:garbage"
        assert r.json()["error"]["code"] == "invalid_image"


def test_health_answers_while_large_images_are_embedded(clip_app):
    images = [{"image": big_png(3000, seed)} for seed in range(4)]  # 9 megapixels each, under the cap
    results = {}
    with RunningServer(clip_app) as srv:
        def post():
            results["r"] = httpx.post(srv.url + "/v1/embeddings", json={"model": "tiny-clip", "input": images},
                                      timeout=120)

        busy = threading.Thread(target=post)
        busy.start()
        took = _health_latencies(srv.url, busy)
        busy.join()
    assert results["r"].status_code == 200, results["r"].text
    assert len(results["r"].json()["data"]) == 4
    assert len(took) >= 3, took  # the request took long enough to probe it a few times
    assert max(took) < 0.5, took


def test_a_client_hanging_up_mid_body_is_one_log_line(tok, caplog):
    import logging
    import socket

    app = create_app(tiny_model(tok), tok, ServerSettings(NAME, max_tokens_limit=16))
    with caplog.at_level(logging.INFO), RunningServer(app) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        for route in (b"/v1/completions", b"/v1/chat/completions"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST " + route + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{\"model\":")
                time.sleep(0.2)
        _wait(lambda: sum("client disconnected before its request body" in r.getMessage()
                          for r in caplog.records) == 2, 10)
        assert httpx.get(srv.url + "/health").status_code == 200
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_offline_generation_still_raises_a_bad_setting(tok):
    from foundry.errors import ConfigError
    from foundry.serve.generate import generate, generate_many

    model = tiny_model(tok)
    with pytest.raises(ConfigError, match="top_p"):
        generate_many(model, tok, [[5, 6], [7, 8]], max_new_tokens=3, temperature=1.0, top_p=float("nan"))
    with pytest.raises(ConfigError, match="temperature"):
        list(generate(model, tok, [5, 6], max_new_tokens=3, temperature=float("nan")))
    greedy = generate_many(model, tok, [[5, 6]], max_new_tokens=3, temperature=0)
    assert generate_many(model, tok, [[5, 6]], max_new_tokens=3, temperature=1e-45) == greedy
    assert generate_many(model, tok, [[5, 6]], max_new_tokens=3, temperature=1.0, top_p=1e-300) == greedy
