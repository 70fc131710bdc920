"""The generation engine: many sequences decoded together, one batched forward pass per step.

Design choices:
- Continuous batching (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based
  Generative Models", iteration-level scheduling): sequences join and leave between steps, so a short
  reply never waits for a long one and a new request never waits for a whole batch to finish.
- A ragged KV cache (`foundry.model.llama.RaggedKVCache`): one row per sequence, each at its own length,
  with its own positions and key mask. No sequence is ever padded, so a sequence decoded in a batch sees
  exactly the keys, positions and logits it would see alone (greedy decoding gives the same tokens).
- A new sequence is prefilled alone (its prompt in one forward pass, batch 1) and copied into a free row;
  live sequences stay in the first rows (a finished one's row is refilled by the last), so a step runs
  over exactly the live rows.
- Per-sequence sampling: temperature, top-k, top-p, seed (its own `torch.Generator`) and stop ids; greedy
  rows take one batched argmax. Sampling is numerically safe for any accepted setting: a temperature
  below `MIN_TEMPERATURE` is greedy, logits are shifted by their maximum before scaling, and top-p always
  keeps the most likely token.
- A fault boundary per sequence: a row whose setup, sampling or callback raises ends alone with its own
  error (finish_reason "error") and the batch goes on; only a failing forward pass fails every row.
- `BatchDecoder` is the synchronous core, used directly by `generate`, `generate_many` (evaluation, the
  bake-off) and `foundry chat`; `Engine` runs it in one thread behind a bounded FIFO queue for the server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from foundry.model.sampling import MIN_TEMPERATURE, sample_next  # noqa: F401  (serve's names)

from foundry.errors import ConfigError



@dataclass
class Sampling:
    """How one sequence is decoded. `stop_ids` None: the tokenizer's `<|endoftext|>` and `<|end|>`."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None

    def check(self) -> None:
        if not self.temperature >= 0 or self.temperature == float("inf"):  # also refuses nan
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed accepts
            raise ConfigError(f"seed must fit in 64 bits, got {self.seed}")


def fit_prompt(prompt_ids: list[int], context: int, eos_id: int, reserve: int = 1) -> list[int]:
    """The end of a prompt that leaves `reserve` tokens of the context for the answer (at least half the
    context is kept for the prompt when the answer alone would fill it); an empty prompt starts a
    document (eos). The one prompt-fitting rule of generation, evaluation and the bake-off."""
    keep = context - reserve if context > reserve else context // 2
    return list(prompt_ids)[-max(1, keep):] or [eos_id]


@dataclass(eq=False)
class Sequence:
    """One request being decoded. `on_token(seq, token)` is called for each new token, `on_finish(seq)` once
    at the end (`finish_reason` "stop", "length", "cancelled" or "error")."""

    prompt_ids: list[int]
    sampling: Sampling
    on_token: Callable[["Sequence", int], None] | None = None
    on_finish: Callable[["Sequence"], None] | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when it left the queue and was prefilled
    budget: int = 0
    generator: torch.Generator | None = None
    stop: frozenset = frozenset()

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or time.monotonic()) - self.queued_at

    def cancel(self) -> None:
        self.cancelled = True


class BatchDecoder:
    """Steps up to `max_batch` sequences together over one ragged KV cache. Not thread-safe: one caller."""

    def __init__(self, model, tokenizer, max_batch: int, max_len: int | None = None):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.context = model.config.max_seq_len
        self.max_len = min(max_len or self.context, self.context)  # cache rows: prompt + reply tokens at most
        self.device = next(model.parameters()).device
        self.cache = None  # allocated on first use: (max_batch, context) keys and values per layer
        self.active: list[Sequence] = []  # active[i] lives in cache row i
        self.tokens_generated = 0

    @property
    def has_room(self) -> bool:
        return len(self.active) < self.max_batch

    def add(self, seq: Sequence) -> None:
        """Prefill `seq`'s prompt and emit its first token (it may finish at once)."""
        self.add_many([seq])

    @torch.inference_mode()
    def add_many(self, seqs: list[Sequence]) -> None:
        """Prefill the prompts of `seqs` together and emit each one's first token (some may finish at once).

        The prompts are right-padded to the longest: causal attention keeps every real token from seeing the
        pads after it, and only each row's real tokens are copied into the batch cache.
        """
        assert len(self.active) + len(seqs) <= self.max_batch, "no free row"
        ready = [seq for seq in seqs if self._guarded(seq, self._start, seq)]
        if not ready:
            return
        if self.cache is None:
            self.cache = self.model.new_ragged_kv_cache(self.max_batch, self.max_len)
        lengths = [len(seq.prompt_ids) for seq in ready]
        longest = max(lengths)
        ids = torch.tensor([seq.prompt_ids + [0] * (longest - len(seq.prompt_ids)) for seq in ready],
                           device=self.device)  # (m, T)
        prefill = self.model.new_kv_cache(len(ready), longest)
        hidden = self.model(ids, kv_cache=prefill, return_hidden=True)  # (m, T, d)
        last = torch.tensor(lengths, device=self.device) - 1
        logits = self.model.lm_head(hidden[torch.arange(len(ready), device=self.device), last])  # (m, V)
        for i, seq in enumerate(ready):
            if self._guarded(seq, self._sample_and_accept, seq, logits[i]):
                # it goes on: its prompt's keys and values take the next free row
                self.cache.load_row(len(self.active), prefill, i, lengths[i])
                self.active.append(seq)
            else:
                self._finish(seq, "cancelled")  # no-op unless it was cancelled while emitting its first token

    def _start(self, seq: Sequence) -> bool:
        """Set up `seq`'s budget, stop ids and generator; False if it cannot produce a token."""
        seq.sampling.check()
        seq.started_at = time.monotonic()
        seq.prompt_ids = fit_prompt(seq.prompt_ids, self.context, self.tokenizer.eos_id)
        seq.budget = min(seq.sampling.max_tokens, self.max_len - len(seq.prompt_ids) + 1,
                         self.context - len(seq.prompt_ids))
        stop_ids = seq.sampling.stop_ids
        seq.stop = frozenset(self.tokenizer.stop_ids if stop_ids is None else stop_ids)
        if seq.sampling.seed is not None:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(seq.sampling.seed)
        if seq.cancelled or seq.budget < 1:
            self._finish(seq, "length")
            return False
        return True

    @torch.inference_mode()
    def step(self) -> None:
        """One batched forward pass: every active sequence gets its next token (or finishes)."""
        for row in reversed(range(len(self.active))):  # a cancelled sequence frees its row before the step
            if self.active[row].cancelled:
                self._finish(self.active[row], "cancelled")
                self._remove(row)
        if not self.active:
            return
        inputs = torch.tensor([[seq.tokens[-1]] for seq in self.active], device=self.device)  # (B, 1)
        logits = self.model(inputs, kv_cache=self.cache)[:, -1]  # (B, V)
        greedy = logits.argmax(-1).tolist()  # one sync for every greedy row
        done = []
        for row, seq in enumerate(self.active):
            if not self._guarded(seq, self._sample_and_accept, seq, logits[row], greedy[row]):
                done.append(row)
        for row in reversed(done):
            self._remove(row)

    def _guarded(self, seq: Sequence, fn, *args) -> bool:
        """`fn(*args)` inside `seq`'s fault boundary: if it raises, `seq` alone ends with that error (False)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one request's fault must not end the others
            self._finish(seq, "error", exc)
            return False

    def _sample_and_accept(self, seq: Sequence, logits: torch.Tensor, greedy: int | None = None) -> bool:
        s = seq.sampling
        if greedy is not None and s.temperature < MIN_TEMPERATURE:
            token = greedy
        else:
            token = sample_next(logits, s.temperature, s.top_k, s.top_p, seq.generator)
        return self._accept(seq, token)

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Emit `token` for `seq`; False when the sequence has finished."""
        if token in seq.stop:
            self._finish(seq, "stop")
            return False
        seq.tokens.append(token)
        self.tokens_generated += 1
        if seq.on_token is not None:
            seq.on_token(seq, token)
        if len(seq.tokens) >= seq.budget:
            self._finish(seq, "length")
            return False
        return not seq.cancelled

    def _finish(self, seq: Sequence, reason: str, error: BaseException | None = None) -> None:
        if seq.finish_reason is not None:
            return
        seq.finish_reason = "cancelled" if seq.cancelled and reason != "error" else reason
        seq.error = error
        if seq.on_finish is not None:
            seq.on_finish(seq)

    def _remove(self, row: int) -> None:
        """Free `row`: the last live sequence moves into it, so live rows stay first."""
        last = len(self.active) - 1
        self._finish(self.active[row], "cancelled")  # no-op unless it ended without a reason
        self.cache.move_row(last, row)
        self.active[row] = self.active[last]
        self.active.pop()

    def fail_all(self, error: BaseException) -> None:
        """End every active sequence with `error` (the model raised): the decoder is empty afterwards."""
        for seq in self.active:
            self._finish(seq, "error", error)
        self.active.clear()
        if self.cache is not None:
            self.cache.reset()


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
    was_training = model.training
    model.eval()
    try:
        decoder = BatchDecoder(model, tokenizer, max(1, min(max_batch, len(prompts))))
        waiting = deque(sequences)
        while waiting or decoder.active:
            joining = [waiting.popleft() for _ in range(min(len(waiting), decoder.max_batch - len(decoder.active)))]
            if joining:
                decoder.add_many(joining)
            decoder.step()
    finally:
        model.train(was_training)
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
