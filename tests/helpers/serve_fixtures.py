"""A tiny foundry model + tokenizer + checkpoint shared by the hf, serve and chat tests."""

from __future__ import annotations

import random

import torch

from foundry.data.tokenizer import Tokenizer
from foundry.model.llama import Llama, config_from_preset

WORDS = ("the river town was founded by a cartographer who drew maps of copper salt and wool "
         "barges carry cheese downstream to the market hello world question answer source").split()


def tiny_tokenizer(vocab_size: int = 320) -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(200)]
    return Tokenizer.train(texts, vocab_size=vocab_size, min_frequency=2)


def tiny_model(tokenizer: Tokenizer, seed: int = 0, **overrides) -> Llama:
    torch.manual_seed(seed)
    config = config_from_preset("test", vocab_size=tokenizer.vocab_size, **overrides)
    model = Llama(config)
    # Larger-than-init weights so greedy decoding is not a flat tie between near-equal logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


def tiny_checkpoint(path, seed: int = 0, **overrides):
    from foundry.checkpoints import save_checkpoint

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed, **overrides)
    save_checkpoint(path, model, tokenizer, meta={"stage": "test", "step": 0})
    return model, tokenizer


class SlowLlama(Llama):
    """A Llama that sleeps `delay` seconds per forward pass: a stand-in for a bigger model in timing tests."""

    delay = 0.0

    def forward(self, *args, **kwargs):
        if self.delay:
            import time

            time.sleep(self.delay)
        return super().forward(*args, **kwargs)


def never_stopping(model: Llama, tokenizer: Tokenizer) -> Llama:
    """Zero the (tied) embedding rows of the stop tokens: their logit is exactly 0 while the best of the
    other ~300 random logits is positive, so greedy replies always run to max_tokens."""
    assert model.config.tie_embeddings
    with torch.no_grad():
        for i in (tokenizer.eos_id, tokenizer.eot_id):
            model.model.embed_tokens.weight[i].zero_()
    return model


def slow_model(tokenizer: Tokenizer, delay: float) -> SlowLlama:
    base = tiny_model(tokenizer)
    model = SlowLlama(base.config)
    model.load_state_dict(base.state_dict())
    model.delay = delay
    return never_stopping(model, tokenizer).eval()


def free_socket():
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer:
    """uvicorn serving `app` in a thread on a free 127.0.0.1 port; use as a context manager."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    def __enter__(self):
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def wait_until(predicate, seconds: float, poll: float = 0.01) -> None:
    """Poll `predicate` until it holds; fail the test after `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll)
