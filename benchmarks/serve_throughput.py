"""Streaming throughput of `foundry serve` at 1, 4, 16 and 64 concurrent clients, against the server it replaces.

Saves a randomly initialised model of a preset (default 4m, with a BPE tokenizer of the preset's vocabulary
trained on the bundled Shakespeare) with its stop tokens' embeddings zeroed, so every reply runs to
`--max-tokens`. Then serves it, in turn, with
  - ours:         this tree's server (continuous batching, default --max-concurrency 16, --max-queue 256);
  - old:          the one-sequence-per-thread server of git commit `--peer` (4f89939), extracted with
                  `git archive` to a temporary directory, at its default --max-concurrency 4;
  - old-c64:      the same old server with --max-concurrency 64 (a thread per client: no 429 at any level).
For each server and each client count, `--seconds` of closed-loop streamed completions (each client sends
its next request when the last one ends; a refused client waits 0.1 s), taken as `--rounds` slices in turn
with the other servers so that load from elsewhere on a shared machine falls on all of them alike:
requests/s, generated tokens/s,
time to first token and time per output token (p50/p99), refused requests. Then issue 20's burst: 60
streamed chats at once, a third hanging up after two chunks: how many were served and refused.

Every server runs as its own process on 127.0.0.1 with the same checkpoint, all three up at once and measured in
turn at each client count, so a busy shared machine weighs on them alike; clients are asyncio tasks here.
Raw figures go to benchmarks/results/serve_throughput.json.

    python benchmarks/serve_throughput.py --preset 4m --seconds 12 --rounds 4 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def make_checkpoint(root: Path, preset: str) -> Path:
    import torch

    from foundry.data.tokenizer import Tokenizer
    from foundry.model.llama import PRESETS, Llama, config_from_preset
    from foundry.checkpoints import save_checkpoint

    texts = [p.read_text(errors="ignore") for p in sorted((ROOT / "data/general/shakespeare").glob("*.txt"))]
    tokenizer = Tokenizer.train(texts, vocab_size=PRESETS[preset]["vocab_size"])
    torch.manual_seed(0)
    model = Llama(config_from_preset(preset, vocab_size=tokenizer.vocab_size))
    with torch.no_grad():  # zero the stop tokens' (tied) embeddings: their logit is 0, below the best other
        for i in (tokenizer.eos_id, tokenizer.eot_id):
            model.model.embed_tokens.weight[i].zero_()
    return save_checkpoint(root / "model", model, tokenizer, meta={"stage": "bench", "step": 0})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`foundry serve` of a source tree in a child process on a free 127.0.0.1 port."""

    def __init__(self, src: Path, ckpt: Path, max_tokens: int, extra: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "foundry.cli", "serve", str(ckpt), "--port", str(self.port),
                                      "--model-name", "bench", "--max-tokens-limit", str(max_tokens), "--device",
                                      "cpu", *extra], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self):
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.log.name}")
            time.sleep(0.3)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


PROMPT_WORDS = "the river town was founded by a cartographer who drew maps of copper salt and wool".split()


def prompt_for(client: int, k: int) -> str:
    rng = random.Random(client * 1000 + k)
    return " ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(4, 40)))  # prompts of mixed lengths


async def one_stream(http, path: str, body: dict, hang_up_after: int | None = None) -> dict:
    """One streamed request: status, time to first token, time per output token, tokens generated."""
    t0 = time.perf_counter()
    out = {"status": None, "ttft": None, "tpot": None, "tokens": 0, "complete": False}
    first = last = None
    chunks = 0
    async with http.stream("POST", path, json=body) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            await r.aread()
            return out
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["complete"] = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]
            if any((c.get("text") or (c.get("delta") or {}).get("content")) for c in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return out
    if first is not None:
        out["ttft"] = first - t0
        if out["tokens"] > 1:
            out["tpot"] = (last - first) / (out["tokens"] - 1)
    return out


async def closed_loop(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    results: list[dict] = []
    refused = 0
    stop_at = time.monotonic() + seconds

    async def client(i: int, http) -> None:
        nonlocal refused
        k = 0
        while time.monotonic() < stop_at:
            body = {"model": "bench", "prompt": prompt_for(i, k), "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}
            r = await one_stream(http, "/v1/completions", body)
            k += 1
            if r["status"] == 429:
                refused += 1
                await asyncio.sleep(0.1)
            else:
                results.append(r)

    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.monotonic() - t0
    return {"results": results, "refused": refused, "elapsed": elapsed}


def summarise(clients: int, parts: list[dict]) -> dict:
    """The figures of one server at one client count, over its interleaved slices."""
    results = [r for part in parts for r in part["results"]]
    elapsed = sum(part["elapsed"] for part in parts)
    refused = sum(part["refused"] for part in parts)
    ok = [r for r in results if r["status"] == 200 and r["complete"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "seconds": round(elapsed, 3), "slices": len(parts), "requests": len(ok),
            "failed": len(results) - len(ok), "refused_429": refused,
            "requests_per_s": len(ok) / elapsed, "tokens_per_s": tokens / elapsed, "tokens": tokens,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
            "tpot_p50_s": percentile(tpot, 0.5), "tpot_p99_s": percentile(tpot, 0.99)}


async def burst(url: str, n: int = 60, max_tokens: int = 32) -> dict:
    """Issue 20's burst: n streamed chats at once, every third hanging up after two chunks."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n + 8)) as http:
        t0 = time.monotonic()
        results = await asyncio.gather(*(one_stream(
            http, "/v1/chat/completions",
            {"model": "bench", "messages": [{"role": "user", "content": prompt_for(i, 0)}], "max_tokens": max_tokens,
             "stream": True, "stream_options": {"include_usage": True}}, 2 if i % 3 == 0 else None) for i in range(n)))
        elapsed = time.monotonic() - t0
    staying = [r for i, r in enumerate(results) if i % 3]
    return {"sent": n, "hung_up": n - len(staying), "refused_429": sum(r["status"] == 429 for r in results),
            "served_complete": sum(r["status"] == 200 and r["complete"] for r in staying),
            "staying": len(staying), "seconds": round(elapsed, 3)}


def extract_peer(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_before": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="4m")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=12, help="per server and client count, over all rounds")
    p.add_argument("--rounds", type=int, default=4, help="slices per server and client count, taken in turn")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--peer", default="4f89939", help="git commit holding the one-sequence-per-thread server")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_throughput.json"))
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    sys.path.insert(0, str(ROOT / "src"))
    record = {"machine": machine(), "preset": args.preset, "max_tokens": args.max_tokens, "seconds": args.seconds,
              "rounds": args.rounds,
              "peer_commit": args.peer, "servers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp, args.preset)
        peer_src = extract_peer(args.peer, tmp)
        servers = {"ours": (ROOT / "src", []), "old": (peer_src, []),
                   "old-c64": (peer_src, ["--max-concurrency", "64"])}
        with contextlib.ExitStack() as stack:  # all up at once, measured in turn level by level: same load
            running = {name: stack.enter_context(Server(src, ckpt, args.max_tokens, extra, tmp / f"{name}.log"))
                       for name, (src, extra) in servers.items()}
            for name, srv in running.items():
                asyncio.run(closed_loop(srv.url, 1, 1.0, args.max_tokens))  # warm-up
                record["servers"][name] = {"args": servers[name][1], "runs": []}
            for clients in levels:
                parts: dict[str, list] = {name: [] for name in running}
                for _ in range(args.rounds):  # slices in turn: load from elsewhere falls on every server alike
                    for name, srv in running.items():
                        parts[name].append(asyncio.run(closed_loop(srv.url, clients, args.seconds / args.rounds,
                                                                   args.max_tokens)))
                for name in running:
                    r = summarise(clients, parts[name])
                    record["servers"][name]["runs"].append(r)
                    print(f"{name:8s} {clients:3d} clients: {r['requests_per_s']:6.2f} req/s "
                          f"{r['tokens_per_s']:7.1f} tok/s  ttft p50 {r['ttft_p50_s'] or 0:.3f}s  "
                          f"429s {r['refused_429']}  load {os.getloadavg()[0]:.1f}", flush=True)
            for name, srv in running.items():
                record["servers"][name]["burst"] = asyncio.run(burst(srv.url))
    record["machine"]["load_average_after"] = os.getloadavg()
    ours = {r["clients"]: r for r in record["servers"]["ours"]["runs"]}
    record["ratios"] = {}
    for peer in ("old", "old-c64"):
        record["ratios"][peer] = {c: ours[c]["tokens_per_s"] / r["tokens_per_s"] if r["tokens_per_s"] else None
                                  for c, r in ((r["clients"], r) for r in record["servers"][peer]["runs"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)


def print_table(record: dict) -> None:
    ms = lambda s: f"{s * 1000:.0f}" if s is not None else "-"  # noqa: E731
    print(f"\n{record['preset']} preset, {record['max_tokens']} tokens per streamed completion, "
          f"{record['machine']['cores']} cores, torch {record['machine']['torch']}, load average "
          f"{record['machine']['load_average_before'][0]:.1f} before / {record['machine']['load_average_after'][0]:.1f} after")
    print("| server | clients | req/s | tokens/s | ours / this | TTFT p50 / p99 ms | TPOT p50 / p99 ms | 429s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data in record["servers"].items():
        for r in data["runs"]:
            ratio = 1.0 if name == "ours" else record["ratios"][name][r["clients"]]
            print(f"| {name} | {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                  f"{ratio:.2f}x | {ms(r['ttft_p50_s'])} / {ms(r['ttft_p99_s'])} | "
                  f"{ms(r['tpot_p50_s'])} / {ms(r['tpot_p99_s'])} | {r['refused_429']} |")
    print("\nburst: 60 streamed chats at once, a third hanging up after two chunks")
    for name, data in record["servers"].items():
        b = data["burst"]
        print(f"  {name}: {b['served_complete']} of {b['staying']} staying clients served completely, "
              f"{b['refused_429']} refused with 429, in {b['seconds']:.1f}s")


if __name__ == "__main__":
    main()
