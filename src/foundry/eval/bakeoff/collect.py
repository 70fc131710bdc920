"""Asking every contender (and the judge) for its answers, each written to disk the moment it arrives.

- The log: `OUT/answers.jsonl` (and `OUT/judgements.jsonl` for the judge), one JSON object a line, appended,
  flushed and fsynced per answer, so a killed run loses at most the answer in flight. A torn last line (a
  kill mid-write) is cut off when the log is reopened.
- Resume: each record carries `fp`, a hash of everything that made it (the contender's identity and
  sampling settings, the prompt, its seed); a re-run reuses every record whose `fp` still matches and asks
  only for the rest.
- Contender kinds: `path` (a foundry checkpoint, run or Hugging Face directory, decoded here in batches of
  `batch_size`: the compute seconds are each batch's, shared equally by its answers; no per-answer latency),
  `endpoint`
  (`endpoint.ChatClient`, `concurrency` requests at a time, latency and time to first token per answer) and `serve`
  (`endpoint.ServedModel`: `foundry serve` in a subprocess, then asked as an endpoint).
- A contender that fails (its endpoint keeps failing, its server does not start) stops with its error; the
  answers it gave stay in the log and the other contenders go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from foundry.errors import FoundryError


class AnswerLog:
    """An append-only JSONL file whose every record is on disk (fsync) before `append` returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            data = self.path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):  # the process was killed mid-line: drop the torn tail
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
                    f.flush()
                    os.fsync(f.fileno())
            for line in data[:cut].decode("utf-8").splitlines():
                if line.strip():
                    self.records.append(json.loads(line))
        self._file = None

    def latest(self, key_fields: tuple[str, ...]) -> dict:
        """{key: the last record} where key is the tuple of `key_fields`."""
        return {tuple(r[k] for k in key_fields): r for r in self.records}

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(entry) -> dict:
    """What names a contender's model (not its prices: a new price needs no new answers)."""
    if entry.endpoint:
        return {"endpoint": entry.endpoint.base_url.rstrip("/"), "model": entry.endpoint.model}
    if entry.serve:
        return {"serve": str(Path(entry.serve.model).resolve())}
    return {"path": str(Path(entry.path).resolve())}


def sampling(entry, cfg, max_new_tokens: int | None = None, temperature: float | None = None) -> dict:
    """The contender's own sampling settings, else the bake-off's."""
    pick = lambda own, default: default if own is None else own  # noqa: E731
    return {"max_new_tokens": pick(entry.max_new_tokens, max_new_tokens or cfg.max_new_tokens),
            "temperature": pick(entry.temperature, cfg.temperature if temperature is None else temperature),
            "top_p": pick(entry.top_p, cfg.top_p), "top_k": cfg.top_k}


def prompt_messages(prompt: dict) -> list[dict]:
    messages = [{"role": "system", "content": prompt["system"]}] if prompt.get("system") else []
    return messages + [{"role": "user", "content": prompt["prompt"]}]


# ---- one asker per contender kind: ask(items) yields (item, reply) as each reply arrives ---------------------
@contextlib.contextmanager
def asker(entry, device: str, chat: bool, log_dir: Path, max_tokens: int, server=None, batch_size: int = 64):
    """A function `ask(items, sampling)` for `entry`; an item is {"messages", "seed", ...}. `server`: a
    `ServedModel` already started for a `serve:` entry (it loads while others answer)."""
    if entry.kind == "local":
        yield _local_asker(entry, device, chat, batch_size)
        return
    from foundry.eval.bakeoff.endpoint import ChatClient, ServedModel

    with contextlib.ExitStack() as stack:
        spec = entry.endpoint
        if entry.kind == "serve":
            spec = stack.enter_context(server or ServedModel(entry, device, log_dir, max_tokens)).endpoint
        client = ChatClient(spec, entry.name)
        stack.callback(client.close)

        def one(item, s):
            return client.ask(item["messages"], s["max_new_tokens"], s["temperature"], s["top_p"], item.get("seed"))

        def ask(items, s):
            if spec.concurrency == 1:
                for item in items:
                    yield item, one(item, s)
                return
            yield from _concurrently(one, items, s, spec.concurrency)

        ask.client = client
        yield ask


def _concurrently(one, items, s, workers: int):
    """(item, reply) as each of `workers` parallel requests returns; the first failure cancels the requests
    not yet sent, lets those in flight finish (their answers are kept) and is raised."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(one, item, s): item for item in items}
        failure = None
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                if future.exception() is not None:
                    if failure is None:
                        failure = future.exception()
                        for f in pending:
                            f.cancel()
                    continue
                yield item, future.result()
            pending = {f: it for f, it in pending.items() if not f.cancelled()}
        if failure is not None:
            raise failure


def _local_asker(entry, device: str, chat: bool, batch_size: int):
    import torch

    from foundry.checkpoints import load_start
    from foundry.eval.bakeoff.scoring import prompt_ids
    from foundry.model.decoding import fit_prompt
    from foundry.serve.generate import generate_many

    start = load_start(entry.path, device=device)
    model, tokenizer = start.model.eval(), start.tokenizer

    def ask(items, s):
        for start in range(0, len(items), batch_size):
            yield from batch(items[start:start + batch_size], s)

    def batch(items, s):
        ids = [fit_prompt(prompt_ids(tokenizer, it["messages"], chat), model.config.max_seq_len, tokenizer.eos_id,
                          s["max_new_tokens"]) for it in items]
        t0 = time.perf_counter()
        answers = generate_many(model, tokenizer, ids, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                                top_k=s["top_k"], top_p=s["top_p"], seed=[it["seed"] for it in items])
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        share = (time.perf_counter() - t0) / len(items)
        for it, prompt, new in zip(items, ids, answers):
            yield it, {"output": tokenizer.decode(new, skip_special=True), "input_tokens": len(prompt),
                       "output_tokens": len(new), "usage_source": "local", "compute_s": share,
                       "latency_s": None, "ttft_s": None, "batched": len(items)}

    return ask


def collect(entry, items: list[dict], s: dict, log: AnswerLog, make_record, device: str, chat: bool,
            log_dir: Path, server=None, batch_size: int = 64) -> str | None:
    """Ask `entry` for every item, appending `make_record(item, reply)` to `log` as each arrives; returns
    the contender's error line, or None."""
    if not items:
        return None
    done = 0
    t0 = time.perf_counter()
    try:
        with asker(entry, device, chat, log_dir, s["max_new_tokens"], server, batch_size) as ask:
            for item, reply in ask(items, s):
                log.append(make_record(item, reply))
                done += 1
    except FoundryError as exc:
        message = str(exc)
        print(f"[bakeoff] {entry.name}: FAILED after {done}/{len(items)} answers: {message}", flush=True)
        return message
    print(f"[bakeoff] {entry.name}: {done} answers in {time.perf_counter() - t0:.1f}s", flush=True)
    return None


ANSWERS, JUDGEMENTS = "answers.jsonl", "judgements.jsonl"
REPLY_FIELDS = ("input_tokens", "output_tokens", "usage_source", "latency_s", "ttft_s", "compute_s", "batched",
                "finish_reason")


def ask_contenders(cfg, models, prompts: list[dict], log: AnswerLog, device: str, out: Path) -> tuple[list, dict]:
    """Every contender's answer to every prompt (seed: cfg.seed + prompt index), those on disk reused;
    returns (answers in contender then prompt order, {contender: error line})."""
    from foundry.eval.bakeoff.endpoint import ServedModel

    have = log.latest(("model", "prompt_id"))
    expected, errors, todo = {}, {}, {}
    for m in models:
        s = sampling(m, cfg)
        ident = identity(m)
        items = []
        for k, p in enumerate(prompts):
            messages = prompt_messages(p)
            fp = fingerprint({"contender": ident, "sampling": s, "chat": cfg.chat if m.kind == "local" else True,
                              "messages": messages, "seed": cfg.seed + k})
            expected[(m.name, p["id"])] = fp
            if have.get((m.name, p["id"]), {}).get("fp") != fp:
                items.append({"prompt_id": p["id"], "messages": messages, "seed": cfg.seed + k, "fp": fp})
        if len(items) < len(prompts):
            print(f"[bakeoff] {m.name}: {len(prompts) - len(items)} answers already on disk; asking for {len(items)}",
                  flush=True)
        todo[m.name] = (s, items)
    # served contenders load in their own processes while the others answer
    servers = {m.name: ServedModel(m, device, out, todo[m.name][0]["max_new_tokens"]) for m in models
               if m.kind == "serve" and todo[m.name][1]}
    try:
        for server in servers.values():
            server.start()
        for m in models:
            s, items = todo[m.name]

            def record(item, reply, m=m):
                return {"model": m.name, "prompt_id": item["prompt_id"], "fp": item["fp"], "kind": m.kind,
                        "output": reply["output"], "tokens": reply["output_tokens"],
                        **{k: reply.get(k) for k in REPLY_FIELDS}}

            error = collect(m, items, s, log, record, device, cfg.chat, out, servers.get(m.name), cfg.batch_size)
            if error:
                errors[m.name] = error
    finally:
        for server in servers.values():
            server.__exit__()
    have = log.latest(("model", "prompt_id"))
    answers = [have[k] for k, fp in expected.items() if k in have and have[k]["fp"] == fp]
    return answers, errors


def ask_judge(cfg, judge, criteria: list[dict], prompts: list[dict], answers: list[dict], log: AnswerLog,
              device: str, out: Path) -> tuple[dict, dict | None, str | None]:
    """The judge's score of every answer on every judge criterion, those on disk reused; returns
    ({(model, prompt_id): {criterion: score or None}}, the judge's summary block, its error line or None)."""
    from foundry.eval.bakeoff.judge import JUDGE_TEMPLATE, judge_order, judge_prompt, parse_score
    from foundry.eval.bakeoff.decision import cost_of, usage_of

    judged_criteria = [c for c in criteria if c["type"] == "judge"]
    if judge is None or not judged_criteria:
        return {}, None, None
    by = {(a["model"], a["prompt_id"]): a for a in answers}
    names = list(dict.fromkeys(a["model"] for a in answers))
    have = log.latest(("criterion", "model", "prompt_id"))
    expected, groups, examples = {}, {}, {}
    for c in judged_criteria:
        s = sampling(judge, cfg, max_new_tokens=c["max_new_tokens"], temperature=0.0)
        for p in prompts:
            order = judge_order(cfg.seed, p["id"], [n for n in names if (n, p["id"]) in by])
            for position, name in enumerate(order):
                a = by[(name, p["id"])]
                text = judge_prompt(c, p, a["output"])
                examples.setdefault(c["name"], text)
                fp = fingerprint({"judge": identity(judge), "sampling": s, "prompt": text, "answer": a["fp"]})
                key = (c["name"], name, p["id"])
                expected[key] = fp
                if have.get(key, {}).get("fp") != fp:
                    groups.setdefault(json.dumps(s, sort_keys=True), (s, []))[1].append(
                        {"key": key, "messages": [{"role": "user", "content": text}], "seed": cfg.seed, "fp": fp,
                         "position": position, "scale": c["scale"]})
    error = None
    for s, items in groups.values():
        def record(item, reply):
            score, why = parse_score(reply["output"], item["scale"])
            crit, name, pid = item["key"]
            return {"criterion": crit, "model": name, "prompt_id": pid, "fp": item["fp"], "position": item["position"],
                    "reply": reply["output"], "score": score, "unparseable": why, "output": reply["output"],
                    **{k: reply.get(k) for k in REPLY_FIELDS}}

        print(f"[bakeoff] judge {judge.name}: judging {len(items)} answers", flush=True)
        error = collect(judge, items, s, log, record, device, cfg.chat, out, batch_size=cfg.batch_size) or error
    have = log.latest(("criterion", "model", "prompt_id"))
    records = [have[k] for k, fp in expected.items() if k in have and have[k]["fp"] == fp]
    judged: dict = {}
    for r in records:
        judged.setdefault((r["model"], r["prompt_id"]), {})[r["criterion"]] = r["score"]
    usage = usage_of([{**r, "model": judge.name} for r in records]).get(judge.name, {})
    info = {"name": judge.name, "kind": judge.kind, "calls": len(records), "expected": len(expected),
            "unparseable": sum(r["score"] is None for r in records), "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("tokens", 0), "cost": cost_of(judge, usage) if usage else 0.0,
            "template": JUDGE_TEMPLATE, "prompts": examples, "error": error,
            "method": "single-answer grading, blind to the contender, answers to a prompt in an order drawn per prompt"}
    return judged, info, error
