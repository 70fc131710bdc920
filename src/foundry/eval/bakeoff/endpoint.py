"""Contenders reached over HTTP: any OpenAI-compatible chat completions endpoint, and `foundry serve` started here.

Design choices:
- Plain httpx, no SDK: `POST {base_url}/chat/completions`, streamed (server-sent events) where the contender
  says `stream: true`, so the time to the first token is measured; the total time is to the last byte.
- Tokens come from the reply's `usage` (asked for with `stream_options.include_usage`). A reply without one
  is counted locally (the endpoint's `tokenizer:` directory, else a word-and-punctuation estimate) and
  marked so (`usage_source`).
- 429, 5xx, timeouts and refused connections are retried `max_retries` times with exponential backoff
  (`backoff_s`, doubled each time, capped at `max_backoff_s`), honouring `Retry-After`. Anything else (401,
  404, a body that is not a chat completion) fails at once: an `EndpointError` whose one line names the
  endpoint and the model.
- The key is read only from the environment variable the config names, sent only to the contender's own
  `base_url` (redirects are not followed) and never put in a message: every message is scrubbed of it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from foundry.errors import FoundryError

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(FoundryError):
    """A contender's endpoint failed for good (after its retries); the message names the endpoint."""


def _scrub(text: str, secret: str | None) -> str:
    text = " ".join(str(text).split())[:300]
    return text.replace(secret, "***") if secret else text


def estimate_tokens(text: str) -> int:
    """A tokenizer-free count (words and punctuation marks), for replies with no usage and no tokenizer."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class ChatClient:
    """One contender's endpoint: `ask(messages, sampling)` -> {output, input_tokens, output_tokens, ...}."""

    def __init__(self, spec, name: str):
        import httpx

        self.spec, self.name = spec, name
        self.base_url = spec.base_url.rstrip("/")
        self.where = f"contender '{name}' (endpoint {self.base_url}, model {spec.model})"
        self._key = None
        if spec.api_key_env:
            self._key = os.environ.get(spec.api_key_env)
            if not self._key:
                raise EndpointError(f"{self.where}: environment variable {spec.api_key_env} is not set "
                                    "(it holds the API key)")
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = httpx.Timeout(spec.timeout_s, connect=min(spec.timeout_s, 10.0))
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, follow_redirects=False,
                                 trust_env=False)  # no proxy from the environment sees the key
        self._tokenizer = None
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def count(self, text: str) -> tuple[int, str]:
        if self.spec.tokenizer:
            if self._tokenizer is None:
                from foundry.data.tokenizer import Tokenizer

                self._tokenizer = Tokenizer.load(self.spec.tokenizer)
            return len(self._tokenizer.encode(text)), "local tokenizer"
        return estimate_tokens(text), "estimate"

    # ---- one request, retried --------------------------------------------------------------------------
    def ask(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float | None,
            seed: int | None) -> dict:
        body = {"model": self.spec.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if top_p is not None:
            body["top_p"] = top_p
        if seed is not None:
            body["seed"] = seed
        if self.spec.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        wait = self.spec.backoff_s
        for attempt in range(self.spec.max_retries + 1):
            retry_after = None
            try:
                return self._once(body, messages)
            except _Retryable as exc:
                problem, retry_after = exc.args[0], exc.retry_after
            if attempt == self.spec.max_retries:
                break
            pause = min(self.spec.max_backoff_s, retry_after if retry_after is not None else wait)
            print(f"[bakeoff] {self.name}: {problem}; retry {attempt + 1}/{self.spec.max_retries} in {pause:.1f}s",
                  flush=True)
            time.sleep(pause)
            wait *= 2
        raise EndpointError(f"{self.where}: {problem} (after {self.spec.max_retries + 1} attempts)")

    def _once(self, body: dict, messages: list[dict]) -> dict:
        import httpx

        self.requests += 1
        t0 = time.perf_counter()
        try:
            with self.http.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    self._fail(resp)
                kind = resp.headers.get("content-type", "")
                if body.get("stream") and "text/event-stream" in kind:
                    reply = self._read_stream(resp, t0)
                else:
                    raw = b"".join(self._bounded(resp.iter_bytes(), t0))
                    reply = self._read_whole(raw)
                    reply["ttft_s"] = None
        except httpx.TimeoutException:
            raise _Retryable(f"timed out (no reply within {self.spec.timeout_s:g}s)") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _Retryable(f"connection failed ({_scrub(type(exc).__name__ + ': ' + str(exc), self._key)})") from None
        reply["latency_s"] = time.perf_counter() - t0
        if reply["input_tokens"] is None or reply["output_tokens"] is None:
            prompt_text = "\n".join(str(m.get("content", "")) for m in messages)
            (n_in, source), (n_out, _) = self.count(prompt_text), self.count(reply["output"])
            reply.update(input_tokens=n_in, output_tokens=n_out, usage_source=source)
        else:
            reply["usage_source"] = "endpoint"
        return reply

    def _fail(self, resp) -> None:
        try:
            detail = resp.json().get("error", {})
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (ValueError, AttributeError):
            detail = resp.text
        problem = f"HTTP {resp.status_code}: {_scrub(detail, self._key) or resp.reason_phrase}"
        if resp.status_code in RETRYABLE:
            raise _Retryable(problem, _retry_after(resp.headers.get("retry-after")))
        hint = " (check the key in $" + self.spec.api_key_env + ")" if resp.status_code in (401, 403) and \
            self.spec.api_key_env else ""
        raise EndpointError(f"{self.where}: {problem}{hint}")

    def _bad(self, what: str) -> EndpointError:
        return EndpointError(f"{self.where}: the reply is not a chat completion ({_scrub(what, self._key)})")

    def _bounded(self, chunks, t0: float):
        """`chunks`, but a reply still arriving after `total_timeout_s` is a timeout (a server that trickles
        bytes never trips the per-read timeout)."""
        for chunk in chunks:
            if time.perf_counter() - t0 > self.spec.total_timeout_s:
                raise _Retryable(f"timed out (the reply took over {self.spec.total_timeout_s:g}s)")
            yield chunk

    def _read_whole(self, raw: bytes) -> dict:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._bad(f"malformed JSON: {exc}") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise self._bad("no 'choices'")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content", ""), (str, type(None))):
            raise self._bad("choices[0] has no message")
        usage = data.get("usage") or {}
        return {"output": message.get("content") or "", "finish_reason": choices[0].get("finish_reason"),
                "input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")}

    def _read_stream(self, resp, t0: float) -> dict:
        parts, ttft, usage, finish, seen = [], None, {}, None, False
        for line in self._bounded(resp.iter_lines(), t0):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                event = json.loads(payload)
            except ValueError as exc:
                raise self._bad(f"malformed JSON in the stream: {exc}") from None
            if not isinstance(event, dict):
                raise self._bad("a stream event is not an object")
            if "error" in event:
                err = event["error"]
                raise _Retryable(f"error mid-stream: {_scrub(err.get('message', err) if isinstance(err, dict) else err, self._key)}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                seen = True
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(delta)
                finish = choice.get("finish_reason") or finish
        if not seen:
            raise self._bad("no 'choices' in the stream")
        return {"output": "".join(parts), "finish_reason": finish, "ttft_s": ttft,
                "input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")}


class _Retryable(Exception):
    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# ---- foundry serve in a subprocess -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the bake-off dies, even by SIGKILL, so no server outlives it (Linux prctl)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class ServedModel:
    """`foundry serve MODEL` on a free 127.0.0.1 port for the length of a `with` block, behind a fresh random
    key (passed in the environment, never on the command line); `.endpoint` is its EndpointSpec and
    `.key_env` the variable that holds its key in this process."""

    key_env = "FOUNDRY_BAKEOFF_SERVE_KEY"

    def __init__(self, entry, device: str, log_dir: Path, max_tokens: int):
        self.entry, self.device, self.log_dir, self.max_tokens = entry, device, Path(log_dir), max_tokens
        self.proc = None

    def start(self) -> "ServedModel":
        """Launch the server and return at once (loading runs meanwhile); `with` waits for /health."""
        import secrets

        spec = self.entry.serve
        self.port = free_port()
        self._key = secrets.token_urlsafe(24)
        env = {**os.environ, "FOUNDRY_API_KEY": self._key}
        src = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"serve_{self.entry.name}.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-c", "import sys; from foundry.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", spec.model, "--port", str(self.port), "--model-name", self.entry.name, "--device",
               str(self.device), "--max-tokens-limit", str(max(self.max_tokens, 1)),
               "--max-concurrency", str(spec.max_concurrency)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.t0 = time.perf_counter()
        return self

    def __enter__(self):
        import httpx

        from foundry.eval.bakeoff.rubric import EndpointSpec

        if self.proc is None:
            self.start()
        spec, key = self.entry.serve, self._key
        os.environ[self.key_env] = key
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + spec.start_timeout_s
        t0 = self.t0
        while True:
            if self.proc.poll() is not None:
                self._log.flush()
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise EndpointError(f"contender '{self.entry.name}' (foundry serve {spec.model}): the server exited "
                                    f"with code {self.proc.returncode} before it was ready: {_scrub(tail[0], key)}")
            try:
                if httpx.get(url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise EndpointError(f"contender '{self.entry.name}' (foundry serve {spec.model} at {url}): /health "
                                    f"not ready within {spec.start_timeout_s:g}s")
            time.sleep(0.1)
        print(f"[bakeoff] {self.entry.name}: foundry serve {spec.model} ready at {url} "
              f"{time.perf_counter() - t0:.1f}s after its start", flush=True)
        self.endpoint = EndpointSpec(base_url=url + "/v1", model=self.entry.name, api_key_env=self.key_env,
                                     max_retries=2, backoff_s=0.5)
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()
        os.environ.pop(self.key_env, None)
