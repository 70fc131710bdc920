"""foundry bakeoff with contenders over HTTP: a real `foundry serve` subprocess (as an endpoint and as a
`serve:` contender), faults from small real HTTP servers on 127.0.0.1, a killed run resumed, the key kept
out of every written file, the judge, and the recommendation on planted score tables."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.serve_fixtures import free_socket, tiny_checkpoint
from foundry.cli import main as cli
from foundry.eval.bakeoff.rubric import ModelEntry, load_rubric
from foundry.eval.bakeoff.summary import summarise

KEY = "sk-test-FOUNDRY-bakeoff-7f3a9c1e5d"  # distinctive: grepped for in every file the bake-off writes
SRC = str(Path(__file__).resolve().parents[3] / "src")
RUBRIC = """\
criteria:
  - {name: brief, type: length, max_words: 12}
  - {name: river, type: must_include, patterns: [river], weight: 2}
"""
PROMPTS = [{"id": f"p{i}", "prompt": f"hello world question {i} about the river"} for i in range(3)]


def _write(root: Path, models: str, extra: str = "", prompts=PROMPTS, rubric=RUBRIC) -> Path:
    (root / "rubric.yaml").write_text(rubric)
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    cfg = root / "bakeoff.yaml"
    cfg.write_text("prompts: prompts.jsonl\nrubric: rubric.yaml\nmax_new_tokens: 6\ntemperature: 0\ndevice: cpu\n"
                   + extra + "models:\n" + models)
    return cfg


def _answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def _no_key_anywhere(out: Path) -> None:
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert KEY.encode() not in p.read_bytes(), f"the key leaked into {p}"


# ---- a small real HTTP server that answers as told by the first path segment ----------------------------
class FakeAPI:
    """127.0.0.1 HTTP server; base_url http://127.0.0.1:PORT/MODE/v1. Records every request."""

    def __init__(self, delay: float = 0.0):
        self.requests: list[dict] = []
        self.delay = delay
        self.inflight = self.most_inflight = 0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                mode = self.path.strip("/").split("/")[0]
                api.requests.append({"mode": mode, "time": time.monotonic(), "body": body,
                                     "auth": self.headers.get("authorization")})
                with api.lock:
                    api.inflight += 1
                    api.most_inflight = max(api.most_inflight, api.inflight)
                try:
                    api.answer(self, mode, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with api.lock:
                        api.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def count(self, mode: str) -> int:
        return sum(r["mode"] == mode for r in self.requests)

    def answer(self, h, mode: str, body: dict) -> None:
        def send(status, payload, headers=()):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

        def completion(text, usage=True):
            reply = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
            if usage:
                reply["usage"] = {"prompt_tokens": 11, "completion_tokens": 3}
            return reply

        question = body["messages"][-1]["content"]
        if self.delay:
            time.sleep(self.delay)
        if mode == "unauthorized":
            send(401, {"error": {"message": f"invalid api key {h.headers.get('authorization')}"}})
        elif mode == "flaky":  # every question: first a 429 with Retry-After, then a 200 without usage
            seen = sum(r["mode"] == "flaky" and r["body"]["messages"][-1]["content"] == question
                       for r in self.requests)
            if seen % 2 == 1:
                send(429, {"error": {"message": "slow down"}}, [("Retry-After", "0.3")])
            else:
                send(200, completion("the river is wide", usage=False))
        elif mode == "broken":
            send(500, {"error": {"message": "internal error"}})
        elif mode == "slow":
            time.sleep(1.5)
            send(200, completion("too late"))
        elif mode == "trickle":  # a stream that sends a byte now and then, for longer than the total timeout
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.end_headers()
            for _ in range(15):
                h.wfile.write(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
                h.wfile.flush()
                time.sleep(0.1)
        elif mode == "malformed":
            send(200, b"{not json")
        elif mode == "empty":
            send(200, {"choices": []})
        elif mode.startswith("words"):  # an answer of N words 'river' (N from the mode name)
            send(200, completion(" ".join(["river"] * int(mode[5:]))))
        elif mode == "judge":  # Score = the number of 'river' in the answer; answers of 3 get no score
            answer = question.split("Answer to grade:\n")[1].split("\n\nReply with")[0]
            n = answer.count("river")
            send(200, completion("I am not sure." if n == 3 else f"Score: {min(5, max(1, n))}"))
        else:
            send(404, {"error": {"message": "no such route"}})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _endpoint(name: str, url: str, mode: str, **settings) -> str:
    spec = {"base_url": f"{url}/{mode}/v1", "model": f"m-{name}", "max_retries": 2, "backoff_s": 0.05,
            "timeout_s": 0.5, **settings}
    return (f"  - name: {name}\n    price_per_1m_input_tokens: 1.0\n    price_per_1m_output_tokens: 4.0\n"
            f"    endpoint: {json.dumps(spec)}\n")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    tiny_checkpoint(root / "tiny", seed=0)
    return root / "tiny"


# ---- the success path, against real servers ----------------------------------------------------------------
@pytest.mark.slow
def test_real_foundry_serve_as_endpoint_and_as_a_served_contender(ckpt, tmp_path, monkeypatch):
    """Three contenders: the checkpoint decoded here, the same checkpoint behind foundry's server app (in a
    thread, with an API key) as an `endpoint:`, and as a `serve:` contender (`foundry serve` in a subprocess
    the bake-off starts and stops)."""
    from foundry.checkpoints import load_model
    from foundry.serve.server import ServerSettings, create_app

    from tests.helpers.serve_fixtures import RunningServer

    model, tok = load_model(ckpt)
    monkeypatch.setenv("BAKEOFF_TEST_KEY", KEY)
    with RunningServer(create_app(model, tok, ServerSettings("tiny", api_key=KEY))) as srv:
        cfg = _write(tmp_path, f"  - {{name: local, path: '{ckpt}', price_per_compute_second: 0.01}}\n"
                     f"  - name: http\n    price_per_1m_input_tokens: 0.5\n    price_per_1m_output_tokens: 1.5\n"
                     f"    endpoint: {{base_url: '{srv.url}/v1', model: tiny, api_key_env: BAKEOFF_TEST_KEY, "
                     "timeout_s: 30}\n"
                     f"  - {{name: served, serve: {{model: '{ckpt}'}}, price_per_1m_output_tokens: 2.0}}\n")
        out = tmp_path / "out"
        assert cli(["bakeoff", "--config", str(cfg), "--out", str(out)]) == 0
    answers = _answers(out)
    by = {(a["model"], a["prompt_id"]): a for a in answers}
    assert len(answers) == 9
    from foundry.data.chat import render_chat

    for p in PROMPTS:
        ids, _ = render_chat(tok, [{"role": "user", "content": p["prompt"]}], add_generation_prompt=True)
        for name in ("http", "served"):
            a = by[(name, p["id"])]
            # greedy: the same text as the local model's, over HTTP
            assert a["output"] == by[("local", p["id"])]["output"]
            assert a["usage_source"] == "endpoint" and a["input_tokens"] == len(ids) and a["output_tokens"] >= 1
            assert 0 < a["ttft_s"] <= a["latency_s"] < 30
    summary = json.loads((out / "bakeoff.json").read_text())
    rows = {r["name"]: r for r in summary["models"]}
    assert rows["http"]["cost"] == pytest.approx(rows["http"]["input_tokens"] * 0.5e-6 + rows["http"]["tokens"] * 1.5e-6)
    assert rows["served"]["latency_median_s"] > 0 and rows["served"]["latency_p95_s"] >= rows["served"]["latency_median_s"]
    assert rows["local"]["batched"] and rows["local"]["cost"] == pytest.approx(rows["local"]["seconds"] * 0.01, rel=1e-3)
    assert summary["recommendation"]["choose"] in rows and (out / "bakeoff.png").is_file()
    assert not (out / "serve_served.log").read_text().count("Traceback")
    _no_key_anywhere(out)


# ---- faults: each contender fails on its own, the others' answers stay ---------------------------------------
def test_faults_are_per_contender_and_cost_nothing_collected(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BAKEOFF_TEST_KEY", KEY)
    closed = free_socket()
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens here: connection refused
    with FakeAPI() as api:
        cfg = _write(tmp_path, f"  - {{name: local, path: '{ckpt}'}}\n"
                     + _endpoint("flaky", api.url, "flaky", backoff_s=0.01, api_key_env="BAKEOFF_TEST_KEY")
                     + _endpoint("unauthorized", api.url, "unauthorized", api_key_env="BAKEOFF_TEST_KEY")
                     + _endpoint("broken", api.url, "broken") + _endpoint("slow", api.url, "slow", max_retries=0)
                     + _endpoint("trickle", api.url, "trickle", max_retries=0, total_timeout_s=0.5)
                     + _endpoint("malformed", api.url, "malformed") + _endpoint("empty", api.url, "empty")
                     + _endpoint("refused", f"http://127.0.0.1:{closed_port}", "x"))
        out = tmp_path / "out"
        t0 = time.monotonic()
        assert cli(["bakeoff", "--config", str(cfg), "--out", str(out)]) == 1
        assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "7 failed" in err and "0 answers missing" not in err and "re-run the same command" in err
    summary = json.loads((out / "bakeoff.json").read_text())
    rows = {r["name"]: r for r in summary["models"]}
    expect = {"unauthorized": "HTTP 401", "broken": "HTTP 500", "slow": "timed out (no reply within 0.5s)",
              "trickle": "timed out (the reply took over 0.5s)", "malformed": "malformed JSON",
              "empty": "no 'choices'", "refused": "connection failed"}
    for name, problem in expect.items():
        line = rows[name]["error"]
        assert problem in line and f"contender '{name}' (endpoint http://127.0.0.1:" in line and "\n" not in line
        assert rows[name]["answers"] == 0
    assert "after 3 attempts" in rows["broken"]["error"] and api.count("broken") == 3  # 1 + max_retries
    assert api.count("unauthorized") == 1  # a 401 is not retried
    assert "***" in rows["unauthorized"]["error"]  # the server echoed the key: scrubbed
    # The others finished: the local model and the endpoint that first said 429.
    assert rows["local"]["answers"] == 3 and rows["flaky"]["answers"] == 3 and not rows["flaky"]["error"]
    assert summary["recommendation"]["left_out"] == sorted(expect, key=list(rows).index)
    flaky = [r for r in api.requests if r["mode"] == "flaky"]
    assert len(flaky) == 6 and all(b["time"] - a["time"] >= 0.29 for a, b in zip(flaky[::2], flaky[1::2]))
    assert all(a["usage_source"] == "estimate" for a in _answers(out) if a["model"] == "flaky")
    assert "(tokens estimated)" in (out / "bakeoff.md").read_text()
    # The key went only to the contenders that name it, and into no file.
    assert {r["mode"] for r in api.requests if r["auth"]} == {"flaky", "unauthorized"}
    assert all(r["auth"] == f"Bearer {KEY}" for r in api.requests if r["auth"])
    _no_key_anywhere(out)


# ---- a killed bake-off, resumed, asks only for the missing answers ---------------------------------------------
@pytest.mark.slow
def test_killed_bakeoff_resumes_asking_only_for_missing_answers(tmp_path):
    prompts = [{"id": f"q{i}", "prompt": f"question number {i}"} for i in range(8)]
    with FakeAPI(delay=0.4) as api:
        cfg = _write(tmp_path, _endpoint("a", api.url, "words2", timeout_s=10), prompts=prompts)
        out = tmp_path / "out"
        argv = ["bakeoff", "--config", str(cfg), "--out", str(out)]
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from foundry.cli import main; sys.exit(main(sys.argv[1:]))",
                                 *argv], env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not ((out / "answers.jsonl").is_file() and len(_answers(out)) >= 3):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=10)
        done = len(_answers(out))
        assert 3 <= done < 8
        before = len(api.requests)
        assert cli(argv) == 0
        assert len(api.requests) - before == 8 - done  # only the missing ones
        asked = {r["body"]["messages"][-1]["content"] for r in api.requests[before:]}
        assert asked == {p["prompt"] for p in prompts[done:]}
    assert sorted(a["prompt_id"] for a in _answers(out)) == sorted(p["id"] for p in prompts)
    summary = json.loads((out / "bakeoff.json").read_text())
    assert summary["models"][0]["answers"] == 8


# ---- the judge -------------------------------------------------------------------------------------------------
def test_judge_scores_blind_records_unparseable_and_agrees_with_people(tmp_path, capsys):
    rubric = RUBRIC + ("  - name: helpful\n    type: judge\n    scale: [1, 5]\n    compare_with: accuracy\n"
                       "    anchors: {1: off-topic, 5: fully answers}\n    description: The answer answers the question.\n"
                       "  - {name: accuracy, type: human, scale: [1, 5]}\n")
    with FakeAPI() as api:
        models = "".join(_endpoint(f"c{n}", api.url, f"words{n}") for n in (1, 2, 3, 4))
        judge = (f"judge:\n  name: grader\n  price_per_1m_input_tokens: 10.0\n  endpoint: {{base_url: '{api.url}/judge/v1', "
                 "model: grader-1}\n")
        cfg = _write(tmp_path, models, extra=judge, rubric=rubric)
        out = tmp_path / "out"
        assert cli(["bakeoff", "--config", str(cfg), "--out", str(out)]) == 0
        judged = [r for r in api.requests if r["mode"] == "judge"]
    assert len(judged) == 12
    for r in judged:  # blind: no contender's name or model id in what the judge reads
        text = json.dumps(r["body"])
        assert not any(f"c{n}" in text or f"m-c{n}" in text for n in (1, 2, 3, 4))
        assert r["body"]["temperature"] == 0.0
    records = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    orders = {}
    for rec in records:
        orders.setdefault(rec["prompt_id"], {})[rec["position"]] = rec["model"]
    assert len({tuple(o[i] for i in range(4)) for o in orders.values()}) > 1  # the order is drawn per prompt
    three = [rec for rec in records if rec["model"] == "c3"]
    assert all(rec["score"] is None and rec["reply"] == "I am not sure." and "no 'Score: N'" in rec["unparseable"]
               for rec in three)
    summary = json.loads((out / "bakeoff.json").read_text())
    rows = {r["name"]: r for r in summary["models"]}
    assert rows["c4"]["criteria"]["helpful"]["mean"] == 4 and rows["c1"]["criteria"]["helpful"]["mean"] == 1
    assert rows["c3"]["criteria"]["helpful"]["n"] == 0
    assert summary["judge"]["calls"] == 12 and summary["judge"]["unparseable"] == 3
    assert summary["judge"]["cost"] == pytest.approx(12 * 11 * 10.0 / 1e6)  # 11 prompt tokens a call
    md = (out / "bakeoff.md").read_text()
    assert "## The judge" in md and "Reply with one line, exactly: Score: N" in md and "1 = off-topic" in md
    # People rate the same answers (as on the rating page): the judge's agreement with them.
    from foundry.eval.bakeoff.summary import rating_store

    key = json.loads((out / "blind_key.json").read_text())["key"]
    store = rating_store(out)
    for bid, owner in key.items():
        n = int(owner["model"][1:])
        store.rate("alice", bid, {"accuracy": n})
        store.rate("bob", bid, {"accuracy": min(5, n + 1)})
    capsys.readouterr()
    assert cli(["bakeoff", "summary", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recommendation:" in printed and "| contender |" in printed
    agreement = json.loads((out / "bakeoff.json").read_text())["judge"]["agreement"]["helpful"]
    assert agreement["n"] == 9 and agreement["spearman"] == pytest.approx(1.0) and agreement["alpha"] > 0.8
    # The report card shows the judge, its prompt and its agreement with people.
    assert cli(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    card = (tmp_path / "report" / "report.md").read_text()
    assert "#### The judge" in card and "Reply with one line, exactly: Score: N" in card
    assert "| helpful | accuracy | 9 |" in card and "**Recommendation.**" in card


def test_judge_replies_parsed_strictly():
    from foundry.eval.bakeoff.judge import parse_score

    assert parse_score("Score: 4", [1, 5]) == (4, None)
    assert parse_score(" 3 ", [1, 5]) == (3, None)
    assert parse_score("score=2. Fine.", [1, 5]) == (2, None)
    for reply in ("Score: 7", "Score: 3.5", "Score: 2, no, Score: 4", "four", "I would say 4 or 5", ""):
        assert parse_score(reply, [1, 5])[0] is None


# ---- the recommendation on planted score tables ---------------------------------------------------------------
def _planted(tmp_path, scores: dict[str, list[float]], prices: dict[str, float]) -> dict:
    (tmp_path / "r.yaml").write_text("criteria:\n  - {name: q, type: reference_similarity}\n")
    criteria = load_rubric(tmp_path / "r.yaml")
    prompts = [{"id": f"p{i}"} for i in range(len(next(iter(scores.values()))))]
    auto = {(m, p["id"]): {"q": v} for m, vs in scores.items() for p, v in zip(prompts, vs)}
    models = [ModelEntry(name=m, path=m, price_per_1m_output_tokens=prices[m]) for m in scores]
    usage = {m: {"answers": len(prompts), "tokens": 1_000_000} for m in scores}
    return summarise(criteria, models, usage, auto, None, prompts)["recommendation"]


def test_recommendation_clear_winner(tmp_path):
    rec = _planted(tmp_path, {"big": [0.9, 0.92, 0.88, 0.91, 0.9], "small": [0.3, 0.35, 0.32, 0.28, 0.3]},
                   {"big": 20.0, "small": 1.0})
    assert rec["best"] == rec["choose"] == "big" and rec["tied"] == []
    assert rec["pairs"]["small"]["distinguishable"] and rec["pairs"]["small"]["ci_high"] < 0
    assert rec["text"].startswith("Best: big") and "Choose big" in rec["text"]
    assert "not distinguishable" not in rec["text"].lower()


def test_recommendation_cheaper_tie(tmp_path):
    rec = _planted(tmp_path, {"api": [0.8, 0.6, 0.9, 0.7, 0.75], "ours": [0.78, 0.65, 0.85, 0.72, 0.7]},
                   {"api": 15.0, "ours": 0.5})
    assert rec["best"] == "api" and rec["choose"] == "ours" and rec["tied"] == ["ours"]
    p = rec["pairs"]["ours"]
    assert p["ci_low"] < 0 < p["ci_high"] and p["n"] == 5
    assert rec["text"].startswith("Not distinguishable at n = 5") and "choose ours" in rec["text"]


def test_recommendation_overlapping_intervals_crown_nobody(tmp_path):
    rec = _planted(tmp_path, {"a": [0.7, 0.4, 0.9, 0.5, 0.6, 0.8], "b": [0.5, 0.6, 0.7, 0.6, 0.4, 0.9],
                              "c": [0.1, 0.1, 0.2, 0.1, 0.15, 0.1]}, {"a": 1.0, "b": 2.0, "c": 0.1})
    assert rec["best"] == "a" and rec["tied"] == ["b"] and rec["choose"] == "a"  # c is cheaper but worse
    assert rec["pairs"]["c"]["distinguishable"]
    assert "Not distinguishable at n = 6" in rec["text"] and "Best:" not in rec["text"]


def test_resume_keeps_answers_whose_inputs_did_not_change(tmp_path):
    with FakeAPI() as api:
        cfg = _write(tmp_path, _endpoint("a", api.url, "words2"))
        out = tmp_path / "out"
        argv = ["bakeoff", "--config", str(cfg), "--out", str(out)]
        assert cli(argv) == 0 and api.count("words2") == 3
        # a torn last line (a kill mid-write) is cut off, and only that answer is asked again
        lines = (out / "answers.jsonl").read_text().splitlines()
        (out / "answers.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
        assert cli(argv) == 0 and api.count("words2") == 4
        assert [a["prompt_id"] for a in _answers(out)] == ["p0", "p1", "p2"]
        cfg.write_text(cfg.read_text().replace("price_per_1m_output_tokens: 4.0", "price_per_1m_output_tokens: 9.0"))
        assert cli(argv) == 0 and api.count("words2") == 4  # a new price needs no new answers
        assert cli([*argv, "temperature=0.5", "--resume"]) == 0 and api.count("words2") == 7  # new sampling: asked again


@pytest.mark.parametrize("models, extra, message", [
    ("  - {name: a, path: x, endpoint: {base_url: 'http://127.0.0.1:9/v1', model: m}}\n", "",
     "contender 'a' has path and endpoint; give exactly one"),
    ("  - {name: a, endpoint: {base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: FOUNDRY_NO_SUCH_KEY}}\n", "",
     "contender 'a' (endpoint http://127.0.0.1:9/v1, model m): environment variable FOUNDRY_NO_SUCH_KEY is not set"),
    ("  - {name: a, serve: {}}\n", "", "contender 'a' (serve) has no model; pass --model a=PATH"),
    ("  - {name: a, endpoint: {base_url: 'http://127.0.0.1:9/v1', model: m}}\n", "judge: {name: nobody}\n",
     "the judge 'nobody' has no path, endpoint or serve"),
])
def test_config_errors_name_the_contender(tmp_path, capsys, models, extra, message):
    cfg = _write(tmp_path, models, extra=extra)
    assert cli(["bakeoff", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_concurrent_requests_to_one_endpoint(tmp_path):
    prompts = [{"id": f"q{i}", "prompt": f"question number {i}"} for i in range(6)]
    with FakeAPI(delay=0.3) as api:
        cfg = _write(tmp_path, _endpoint("a", api.url, "words2", timeout_s=10, concurrency=3), prompts=prompts)
        assert cli(["bakeoff", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    assert api.most_inflight == 3 and len(api.requests) == 6
    assert sorted(a["prompt_id"] for a in _answers(tmp_path / "out")) == [p["id"] for p in prompts]


def test_local_answers_reach_the_disk_batch_by_batch(ckpt, tmp_path):
    prompts = [{"id": f"q{i}", "prompt": f"the river question {i}"} for i in range(5)]
    cfg = _write(tmp_path, f"  - {{name: local, path: '{ckpt}'}}\n", prompts=prompts)
    whole, batched = tmp_path / "whole", tmp_path / "batched"
    assert cli(["bakeoff", "--config", str(cfg), "--out", str(whole)]) == 0
    assert cli(["bakeoff", "--config", str(cfg), "--out", str(batched), "batch_size=2"]) == 0
    answers = _answers(batched)
    assert [a["batched"] for a in answers] == [2, 2, 2, 2, 1]  # three batches, each appended as it finished
    assert [a["output"] for a in answers] == [a["output"] for a in _answers(whole)]  # same tokens either way
