"""Requests per second of `foundry serve` for short completions, measured with concurrent openai clients.

Serves a randomly initialised model of a preset (default 4m) on a free 127.0.0.1 port, then `--clients`
threads each send completions (`--max-tokens` tokens, greedy, stop tokens disabled so every reply has
exactly that many tokens) for `--seconds`. Prints requests/s, generated tokens/s and latency percentiles.

    python benchmarks/serve_throughput.py --preset 4m --clients 4 --max-tokens 8 --seconds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    import openai

    from _serve_fixtures import RunningServer, never_stopping, tiny_tokenizer  # tests' helpers
    from foundry.model.llama import Llama, config_from_preset
    from foundry.serve.server import ServerSettings, create_app

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="4m")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = never_stopping(Llama(config_from_preset(args.preset, vocab_size=tok.vocab_size)), tok).eval()
    n_params = sum(q.numel() for q in model.parameters())
    app = create_app(model, tok, ServerSettings("bench", max_tokens_limit=args.max_tokens,
                                                max_concurrency=args.clients))
    latencies: list[float] = []
    lock = threading.Lock()
    with RunningServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        client.completions.create(model="bench", prompt="warm up", max_tokens=args.max_tokens, temperature=0)
        stop_at = time.monotonic() + args.seconds

        def worker(i: int) -> None:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
            k = 0
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = c.completions.create(model="bench", prompt=f"the river town number {i} {k} was",
                                         max_tokens=args.max_tokens, temperature=0)
                assert r.usage.completion_tokens == args.max_tokens
                with lock:
                    latencies.append(time.perf_counter() - t0)
                k += 1

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    n = len(latencies)
    q = statistics.quantiles(latencies, n=20)
    print(f"model: {args.preset} preset, {n_params / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}")
    print(f"{n} requests of {args.max_tokens} tokens from {args.clients} clients in {elapsed:.1f}s: "
          f"{n / elapsed:.1f} requests/s, {n * args.max_tokens / elapsed:.0f} generated tokens/s")
    print(f"latency: median {statistics.median(latencies) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
