"""`foundry serve` under a burst: requests queue instead of being refused, a full queue answers 429 with
Retry-After and disturbs nothing else, clients that hang up free their place, a prompt that fills the context
is refused before it queues, a stop string never met ends at the length cap, and a soak of 200 mixed
requests (127.0.0.1 only, bounded in count and time) all get complete answers."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from foundry.serve.server import ServerSettings, create_app

from tests.helpers.serve_fixtures import RunningServer, SlowLlama, never_stopping, tiny_model, wait_until

NAME = "tiny"


class GatedLlama(SlowLlama):
    """A Llama whose forward passes wait while `gate` is clear: the test decides when the engine may step."""

    gate: threading.Event

    def forward(self, *args, **kwargs):
        assert self.gate.wait(30), "test gate never opened"
        return super().forward(*args, **kwargs)


def gated_model(tok):
    base = tiny_model(tok)
    model = GatedLlama(base.config)
    model.load_state_dict(base.state_dict())
    model.gate = threading.Event()
    return never_stopping(model, tok).eval()


def _wait(predicate, seconds=20.0):
    wait_until(predicate, seconds, poll=0.01)


def _completion(url, results, key, **body):
    r = httpx.post(url + "/v1/completions", timeout=60,
                   json={"model": NAME, "prompt": "the river", "max_tokens": 6, "temperature": 0, **body})
    results[key] = r


def test_full_queue_answers_429_with_retry_after_and_disturbs_nothing(tok):
    model = gated_model(tok)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=64, max_concurrency=2, max_queue=3))
    engine = app.state.engine
    results: dict = {}
    with RunningServer(app) as srv:
        accepted = [threading.Thread(target=_completion, args=(srv.url, results, i)) for i in range(5)]
        for t in accepted:
            t.start()
        _wait(lambda: engine.queued + engine._in_decoder == 5)  # 2 rows taken, 3 queued, nothing stepped yet
        for i in range(5, 8):  # over the bound: refused at once, while the gate is still shut
            _completion(srv.url, results, i)
            assert results[i].status_code == 429, results[i].text
            assert int(results[i].headers["Retry-After"]) >= 1
            assert results[i].json()["error"]["type"] == "rate_limit_error"
        # a prompt that alone fills the context is refused with 400 before it queues (not 429)
        _completion(srv.url, results, "long", prompt=[5] * model.config.max_seq_len)
        assert results["long"].status_code == 400
        assert results["long"].json()["error"]["code"] == "context_length_exceeded"
        model.gate.set()
        for t in accepted:
            t.join(60)
        waits = []
        for i in range(5):  # every accepted request got its whole answer
            body = results[i].json()
            assert results[i].status_code == 200 and body["usage"]["completion_tokens"] == 6, body
            assert body["choices"][0]["finish_reason"] == "length"
            waits.append(body["usage"]["queue_seconds"])
        # the three that queued behind the shut gate say they waited; the two that got rows did not wait as long
        assert sum(w > 0 for w in waits) >= 3 and sorted(waits)[-3] > sorted(waits)[0]
        _wait(lambda: engine.active == 0 and engine.queued == 0)
        _completion(srv.url, results, "after")
        assert results["after"].status_code == 200


def test_clients_that_hang_up_free_their_place(tok, caplog):
    model = gated_model(tok)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=200, max_concurrency=1, max_queue=4))
    engine = app.state.engine
    with RunningServer(app) as srv:
        # a streamed request holds the only row; one streamed and one plain request queue behind it
        running = httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                               json={"model": NAME, "prompt": "the", "max_tokens": 200, "stream": True})
        resp = running.__enter__()
        _wait(lambda: engine._in_decoder == 1)
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                          json={"model": NAME, "prompt": "the", "max_tokens": 5, "stream": True}):
            _wait(lambda: engine.queued == 1)
        _wait(lambda: engine.queued == 0)  # the closed stream left the queue at once, nothing stepped meanwhile
        with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up while queued
            httpx.post(srv.url + "/v1/completions", timeout=httpx.Timeout(30, read=0.5),
                       json={"model": NAME, "prompt": "the", "max_tokens": 5})
        _wait(lambda: engine.queued == 0)
        assert engine.tokens_generated == 0
        # the running stream hangs up after two chunks: its row is freed within a step or so
        model.gate.set()
        lines = resp.iter_lines()
        for _ in range(2):
            while not next(lines).startswith("data: "):
                pass
        running.__exit__(None, None, None)
        _wait(lambda: engine.active == 0)
        assert engine.tokens_generated < 50, engine.tokens_generated  # 200 were asked for
        r = httpx.post(srv.url + "/v1/completions", timeout=30, json={"model": NAME, "prompt": "the", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert not [r for r in caplog.records if r.levelno >= 40], "the server logged an error for a hang-up"


def test_stop_string_never_met_ends_at_the_length_cap(tok):
    model = never_stopping(tiny_model(tok), tok)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=32))
    with RunningServer(app) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                       json={"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 9,
                             "temperature": 0, "stop": ["\u2603 never", "zzzzqq"]})
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 9
    assert "zzzzqq" not in body["choices"][0]["message"]["content"]


async def _streamed_chat(client, i: int, hang_up_after: int | None, max_tokens: int) -> dict:
    """One streamed chat; returns its status, chunk texts, finish reason and whether [DONE] arrived."""
    out = {"status": None, "text": "", "finish": None, "done": False, "usage": None}
    body = {"model": NAME, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0 if i % 2 else 0.8, "seed": i,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            return out
        chunks = 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                break
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            for c in chunk["choices"]:
                out["text"] += c["delta"].get("content") or ""
                out["finish"] = c["finish_reason"] or out["finish"]
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return out
    return out


async def _plain(client, i: int) -> dict:
    body = {"model": NAME, "prompt": f"the river town {i}", "max_tokens": 4 + i % 13, "temperature": 0}
    if i % 5 == 0:
        body["stop"] = ["the"]
    r = await client.post("/v1/completions", json=body)
    return {"status": r.status_code, "body": r.json(), "max_tokens": body["max_tokens"]}


def test_burst_of_60_streams_with_hang_ups_is_served(tok):
    """Issue 20's scenario: 60 streamed chats at once on the default settings, a third hanging up after two
    chunks: none refused, every other one complete, nothing left running."""
    model = never_stopping(tiny_model(tok), tok)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=64))  # default concurrency and queue
    engine = app.state.engine

    async def burst(url):
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(_streamed_chat(client, i, 2 if i % 3 == 0 else None, 24)
                                          for i in range(60)))

    with RunningServer(app) as srv:
        results = asyncio.run(burst(srv.url))
        assert [r["status"] for r in results] == [200] * 60
        for i, r in enumerate(results):
            if i % 3:
                assert r["done"] and r["finish"] == "length" and r["usage"]["completion_tokens"] == 24, (i, r)
        _wait(lambda: engine.active == 0 and engine.queued == 0)


@pytest.mark.slow
def test_soak_200_mixed_requests(tok):
    """200 mixed requests in one burst (plain and streamed, greedy and sampled, stop strings, hang-ups) against
    a queue bound above 200: no 429, every request that stayed got a complete answer, the server answers after."""
    model = tiny_model(tok)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=32, max_concurrency=8, max_queue=256))
    engine = app.state.engine

    async def soak(url):
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=256)) as client:
            jobs = [_plain(client, i) if i % 2 == 0 else
                    _streamed_chat(client, i, 1 if i % 7 == 0 else None, 1 + i % 32) for i in range(200)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=240)

    with RunningServer(app) as srv:
        results = asyncio.run(soak(srv.url))
        assert all(r["status"] == 200 for r in results), [r["status"] for r in results if r["status"] != 200][:5]
        for i, r in enumerate(results):
            if i % 2 == 0:
                choice, used = r["body"]["choices"][0], r["body"]["usage"]["completion_tokens"]
                assert choice["finish_reason"] in ("stop", "length") and 0 <= used <= r["max_tokens"], r
                assert choice["finish_reason"] == "stop" or used == r["max_tokens"], r
            elif i % 7:
                assert r["done"] and r["finish"] in ("stop", "length") and r["usage"] is not None, (i, r)
                assert r["finish"] == "stop" or r["usage"]["completion_tokens"] == 1 + i % 32, (i, r)
        _wait(lambda: engine.active == 0 and engine.queued == 0)
        r = httpx.post(srv.url + "/v1/completions", timeout=30, json={"model": NAME, "prompt": "the", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
