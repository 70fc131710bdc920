"""The OpenAI protocol layer alone (no model, no network): body parsing, request checks, text streaming."""

from __future__ import annotations

import json

import pytest

from foundry.serve.protocol import (APIError, ChatRequest, CompletionRequest, Limits, TextStream, parse_body,
                                    request_sampling)

from tests.helpers.serve_fixtures import tiny_tokenizer

LIMITS = Limits(context=64, vocab_size=320, max_prompt_tokens=40, max_tokens_limit=32)


def _req(**fields):
    return CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})


def test_parse_body_errors():
    assert parse_body(b'{"model": "m", "messages": [], "frobnicate": 1}', ChatRequest).messages == []
    for raw, status, code in ((b'{"model": ', 400, "invalid_json"), (b"[1]", 400, "invalid_json"),
                              (b'{"model": "m", "prompt": "x", "max_tokens": "lots"}', 422, "invalid_type"),
                              (json.dumps({"model": "m", "prompt": "a" * (5 << 20)}).encode(), 413,
                               "request_too_large")):
        with pytest.raises(APIError) as err:
            parse_body(raw, CompletionRequest)
        assert (err.value.status, err.value.code) == (status, code)


def test_request_sampling_checks_and_caps():
    s = request_sampling(_req(max_tokens=30, temperature=0.5, top_p=1.0, seed=3), [1] * 40, 16, LIMITS)
    assert (s.max_tokens, s.temperature, s.top_p, s.seed) == (24, 0.5, None, 3)  # cut at the 64-token context
    assert request_sampling(_req(), [1, 2], 16, LIMITS).max_tokens == 16  # the default
    bad = [({"max_tokens": 0}, [1], "max_tokens"), ({"max_tokens": 33}, [1], "max_tokens"),
           ({"temperature": 3}, [1], "temperature"), ({"top_p": 0}, [1], "top_p"), ({"n": 2}, [1], "n"),
           ({"top_k": 0}, [1], "top_k"), ({}, [1] * 41, "prompt"), ({}, [320], "prompt")]
    for fields, ids, param in bad:
        with pytest.raises(APIError) as err:
            request_sampling(_req(**fields), ids, 16, LIMITS)
        assert err.value.status == 400 and err.value.param == param, fields
    # a prompt that alone fills the context is refused even under a generous prompt limit
    with pytest.raises(APIError) as err:
        request_sampling(_req(), [1] * 64, 16, Limits(64, 320, 10_000, 32))
    assert err.value.code == "context_length_exceeded"


def test_text_stream_holds_back_stop_prefixes():
    tok = tiny_tokenizer()
    ids = tok.encode("the river town was founded")
    whole = tok.decode(ids)
    plain = TextStream(tok, [])
    assert "".join(plain.push(i) for i in ids) + plain.finish() == whole
    stream = TextStream(tok, ["town"])
    sent = ""
    for i in ids:
        sent += stream.push(i)
        if stream.stopped:
            break
    sent += stream.finish()
    assert stream.stopped and sent == whole[:whole.index("town")]
