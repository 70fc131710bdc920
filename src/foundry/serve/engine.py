"""The generation engine: the server's queue and thread on the one batched decoder.

The decoding itself (continuous batching over a ragged KV cache, the prefill, per-sequence sampling and
stops, the per-sequence fault boundary, the length and context limits) is `foundry.model.decoding`, the
decoder that GRPO's sampler runs too; its names are re-exported here as serving's. This module adds:
- `generate_many`: many prompts to their ends, `max_batch` rows at a time (evaluation, the bake-off).
- `Engine`: a `BatchDecoder` in one thread behind a bounded FIFO queue (the server): requests join free rows
  between steps, stream their tokens through callbacks, and can be cancelled while queued or decoding.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from foundry.errors import ConfigError
from foundry.model.decoding import BatchDecoder, Sampling, Sequence, decode


def generate_many(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 128, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | list[int] | None = None,
                  stop_ids: list[int] | None = None, max_batch: int = 16) -> list[list[int]]:
    """The new token ids for each prompt, decoded `max_batch` at a time in batched forward passes.

    Equal to calling `generate` on each prompt in turn (greedy: the same tokens; seeded sampling: the same
    draws, one generator per prompt). `seed` may be one seed for all or one per prompt.
    """
    seeds = seed if isinstance(seed, list) else [seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ConfigError(f"generate_many: {len(seeds)} seeds for {len(prompts)} prompts")
    sequences = [Sequence(list(p), Sampling(max_new_tokens, temperature, top_k, top_p, s,
                                            None if stop_ids is None else tuple(stop_ids)))
                 for p, s in zip(prompts, seeds)]
    decode(model, tokenizer, sequences, max_batch)
    failed = next((seq.error for seq in sequences if seq.error is not None), None)
    if failed is not None:  # each row failed alone, the others were decoded; a synchronous caller hears of it
        raise failed
    return [seq.tokens for seq in sequences]


class QueueFull(Exception):
    """The engine's queue is at its bound: the request is refused (HTTP 429)."""


class Engine:
    """A `BatchDecoder` in its own thread behind a bounded FIFO queue: the server's generation engine.

    `submit` queues a sequence (or raises `QueueFull`); the loop admits queued sequences into free rows
    between steps, steps all active sequences together, and calls each sequence's callbacks from its
    thread. `Sequence.cancel()` plus `wake()` frees a queued place at once and an active row before the
    next step.
    """

    def __init__(self, model, tokenizer, max_batch: int, max_queue: int):
        if max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {max_queue}")
        self.decoder = BatchDecoder(model, tokenizer, max_batch)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.queue: deque[Sequence] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._in_decoder = 0  # rows taken, as of the loop's last look (under the lock)
        self._thread = threading.Thread(target=self._loop, name="foundry-engine", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        return len(self.decoder.active)

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def tokens_generated(self) -> int:
        return self.decoder.tokens_generated

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("server is shutting down")
            # A request is refused only when every row is taken and the queue is at its bound.
            if self._in_decoder + len(self.queue) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{self.max_batch} requests generating and {len(self.queue)} queued")
            seq.queued_at = time.monotonic()
            self.queue.append(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq`: out of the queue at once, out of its row before the next step."""
        seq.cancel()
        with self._cond:
            try:
                self.queue.remove(seq)
            except ValueError:
                pass
            else:
                self.decoder._finish(seq, "cancelled")
            self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        decoder = self.decoder
        while True:
            with self._cond:
                while not self._stopping and not self.queue and not decoder.active:
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = []
                while self.queue and len(decoder.active) + len(admitted) < self.max_batch:
                    admitted.append(self.queue.popleft())
                self._in_decoder = len(decoder.active) + len(admitted)
            try:
                decoder.add_many(admitted)
            except Exception as exc:  # the prefill failed (out of memory?): these and the active requests get it
                for seq in admitted:
                    decoder._finish(seq, "error", exc)
                decoder.fail_all(exc)
            try:
                decoder.step()
            except Exception as exc:  # the model failed: every active request gets the error, the loop goes on
                decoder.fail_all(exc)
            with self._cond:
                self._in_decoder = len(decoder.active)
        with self._cond:
            pending = list(self.queue) + decoder.active
            self.queue.clear()
        for seq in pending:
            decoder._finish(seq, "cancelled")

    def stream(self, seq: Sequence):
        """Queue `seq` (or raise `QueueFull`) and return an async iterator of its tokens, for the event loop.
        Closing the iterator early (the client went away) cancels the sequence: out of the queue at once, out
        of its row before the next step. A model error is raised from the iterator."""
        import asyncio

        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue = asyncio.Queue()

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(arrived.put_nowait, item)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                pass

        seq.on_token = lambda _seq, token: post(token)
        seq.on_finish = lambda _seq: post(None)
        self.submit(seq)

        async def tokens():
            try:
                while (token := await arrived.get()) is not None:
                    yield token
                if seq.error is not None:
                    raise seq.error
            finally:
                if seq.finish_reason is None:
                    self.cancel(seq)

        return tokens()
