"""`foundry serve`: the official openai client (plain and streamed, completions and chat) against a server
started here on a free 127.0.0.1 port; bad requests get the right 4xx while good requests carry on."""

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from foundry.data.chat import render_chat
from foundry.serve.generate import generate
from foundry.serve.server import ServerSettings, create_app

from tests.helpers.serve_fixtures import RunningServer, free_socket, slow_model, tiny_checkpoint, wait_until

openai = pytest.importorskip("openai")

NAME, KEY = "tiny", "sekrit"


def _client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _wait(predicate, seconds=10.0):
    wait_until(predicate, seconds, poll=0.01)


def test_openai_client_plain_and_streamed(tok):
    model = slow_model(tok, delay=0.0)
    app = create_app(model, tok, ServerSettings(NAME, api_key=KEY, max_tokens_limit=64))
    with RunningServer(app) as srv:
        client = _client(srv.url)
        assert [m.id for m in client.models.list().data] == [NAME]

        prompt = "the river town was"
        ids = tok.encode(prompt)
        expected = tok.decode(list(generate(model, tok, ids, max_new_tokens=12, temperature=0)))
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 12)
        chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
        assert chunks[-1].usage.completion_tokens == 12
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
        chat_ids, _ = render_chat(tok, messages, add_generation_prompt=True)
        expected = tok.decode(list(generate(model, tok, chat_ids, max_new_tokens=10, temperature=0)))
        r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
        assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
        assert r.usage.prompt_tokens == len(chat_ids) and r.usage.completion_tokens == 10
        chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=10,
                                                     temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "length"

        # a stop sequence cuts the text (and is not returned)
        stop = expected[3:6]
        r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0, stop=stop)
        assert r.choices[0].message.content == expected[:expected.find(stop)]
        assert r.choices[0].finish_reason == "stop"
        # raw SSE ends with [DONE]
        with httpx.stream("POST", srv.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": NAME, "prompt": prompt, "max_tokens": 3, "stream": True}) as resp:
            lines = [line for line in resp.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_bad_requests_answered_while_good_requests_run(tok):
    model = slow_model(tok, delay=0.02)
    settings = ServerSettings(NAME, api_key=KEY, max_prompt_tokens=32, max_tokens_limit=64, max_concurrency=2,
                              max_queue=0)  # no queue: a third request is refused
    app = create_app(model, tok, settings)
    engine = app.state.engine
    results = {}

    def good(key, max_tokens):
        client = _client(srv.url)
        chunks = list(client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        results[key] = (time.monotonic(), chunks)

    with RunningServer(app) as srv:
        first = threading.Thread(target=good, args=("first", 60))
        first.start()
        _wait(lambda: engine.active == 1)
        auth = {"Authorization": f"Bearer {KEY}"}
        url = srv.url + "/v1/completions"
        ok = {"model": NAME, "prompt": "the river", "max_tokens": 4}
        cases = [
            (401, {"headers": {"Authorization": "Bearer wrong"}, "json": ok}, "invalid_api_key"),
            (401, {"json": ok}, "invalid_api_key"),
            (404, {"headers": auth, "json": {**ok, "model": "gpt-9"}}, "model_not_found"),
            (400, {"headers": auth, "json": {**ok, "max_tokens": -5}}, "invalid_value"),
            (400, {"headers": auth, "json": {**ok, "max_tokens": 65}}, "invalid_value"),
            (400, {"headers": {**auth, "Content-Type": "application/json"}, "content": b'{"model": "tiny", '},
             "invalid_json"),
            (400, {"headers": auth, "json": {**ok, "prompt": "the river town " * 40}}, "context_length_exceeded"),
            (422, {"headers": auth, "json": {**ok, "max_tokens": "many"}}, "invalid_type"),
            (422, {"headers": auth, "json": {"model": NAME}}, "invalid_type"),  # no prompt
            (413, {"headers": auth, "json": {**ok, "prompt": "x" * (5 << 20)}}, "request_too_large"),
        ]
        with httpx.Client(timeout=10) as http:
            for status, kwargs, code in cases:
                resp = http.post(url, **kwargs)
                assert resp.status_code == status, (kwargs, resp.text)
                error = resp.json()["error"]
                assert error["code"] == code and error["message"] and set(error) == {"message", "type", "param", "code"}
            resp = http.get(srv.url + "/v1/nowhere", headers=auth)
            assert resp.status_code == 404 and "error" in resp.json()
            # the official client maps them to its exceptions
            client = _client(srv.url)
            with pytest.raises(openai.AuthenticationError):
                _client(srv.url, key="wrong").completions.create(model=NAME, prompt="x", max_tokens=2)
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model="nope", prompt="x", max_tokens=2)
            with pytest.raises(openai.BadRequestError):
                client.completions.create(model=NAME, prompt="x", max_tokens=-1)
            # fill the second slot, then one more is refused with 429
            second = threading.Thread(target=good, args=("second", 20))
            second.start()
            _wait(lambda: engine.active == 2)
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=NAME, prompt="x", max_tokens=2)
            resp = http.post(url, headers=auth, json=ok)
            assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"
            assert int(resp.headers["Retry-After"]) >= 1
            bad_done = time.monotonic()
            assert first.is_alive(), "the good request should still be running"
        first.join(30)
        second.join(30)
        for key, n in (("first", 60), ("second", 20)):
            end, chunks = results[key]
            assert chunks[-1].usage.completion_tokens == n
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert results["first"][0] > bad_done
        _wait(lambda: engine.active == 0)
        # and the server still serves
        r = client.completions.create(model=NAME, prompt="the river", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3


def test_closing_a_stream_stops_generation(tok):
    model = slow_model(tok, delay=0.03)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=200))
    engine = app.state.engine
    with RunningServer(app) as srv:
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=10,
                          json={"model": NAME, "prompt": "the", "max_tokens": 200, "stream": True}) as resp:
            got = 0
            for line in resp.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break
        _wait(lambda: engine.active == 0, seconds=5)
        assert engine.tokens_generated < 50  # 200 tokens would take 6 s; it stopped shortly after the close


@pytest.mark.slow
def test_serve_cli_subprocess(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(ckpt)
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "foundry.cli", "serve", str(ckpt), "--port", str(port),
                             "--model-name", "mine", "--max-tokens-limit", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert r.json()["data"][0]["id"] == "mine"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                       json={"model": "mine", "prompt": "the river", "max_tokens": 9})
        assert r.status_code == 400 and "limit of 8" in r.json()["error"]["message"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                       json={"model": "mine", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert json.loads(json.dumps(r.json()))["object"] == "chat.completion"


def test_grounded_server_puts_passages_in_the_prompt(tok, tmp_path):
    from foundry.serve.retrieval import Index, collect_passages, grounded_prompt

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "osk.md").write_text("The river Osk runs past the town of Varnholt, which exports copper and salt.\n")
    (docs / "mill.md").write_text("The Red Mill of Boter grinds flour for the whole valley in the autumn.\n")
    index = Index.build(collect_passages(docs, min_words=1))
    model = slow_model(tok, delay=0.0)
    app = create_app(model, tok, ServerSettings(NAME, max_tokens_limit=8, passages=1), index=index)
    question = "Which river runs past Varnholt?"
    with RunningServer(app) as srv:
        r = _client(srv.url).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": question}], max_tokens=2, temperature=0)
    grounded = grounded_prompt(index, question, 1)
    assert "[osk.md] The river Osk" in grounded and "mill.md" not in grounded
    ids, _ = render_chat(tok, [{"role": "user", "content": grounded}], add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(ids)
