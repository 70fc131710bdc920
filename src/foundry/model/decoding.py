"""The one batched decoder: every caller that samples from a model samples through `BatchDecoder` (nanochat's
one `Engine` for chat, evaluation and RL). The serving engine (`foundry.serve.engine`: a queue, a thread,
streaming, cancel), `generate` / `generate_many` (the terminal, evaluation, the bake-off) and GRPO's
completions (`foundry.train.grpo.sample_completions`) are callers of this module; it lives in the model
layer because training may not import serving.

Design choices:
- Continuous batching (Yu et al. 2022, "Orca", iteration-level scheduling): sequences join (`add_many`) and
  leave between steps; `step` is one batched forward pass that gives every live row its next token.
- A ragged KV cache (`foundry.model.kv_cache.RaggedKVCache`): one row per sequence, each at its own length,
  positions and key mask, so a sequence decoded in a batch sees exactly the keys, positions and logits it
  would see alone (greedy decoding gives the same tokens). Live rows stay first: a freed row is refilled by
  the last one.
- Prefill: the prompts joining in one call are prefilled together, right-padded to the longest (causal
  attention keeps every real token from the pads after it), each distinct prompt once however many
  sequences share it (GRPO's G completions of a prompt, `n` replies), and each row's real tokens are copied
  into its cache rows. Longrope models (Phi-3) prefill the prompts within the original context apart from
  those past it, because a padded batch has one length to the model: each row gets the factors it would
  get alone.
- Sampling per row (`foundry.model.sampling`): temperature, top-k, top-p, seed (its own `torch.Generator`),
  stop ids and max_tokens per sequence; greedy rows take one batched argmax. Or a `SharedDraw`: sequences
  drawn together from one generator in one batched draw per step (GRPO: one seeded generator per batch).
  A batched draw consumes its generator by shape, so a shared draw's finished rows keep their rows and step
  on (their tokens ignored) until every member has finished: the draws, and so the tokens, for a seed are
  the same whichever rows finish first.
- Limits per row: a sequence ends at a stop id (not emitted), at `max_tokens`, at its cache row's room and
  at the model's context (a prompt longer than the context keeps its end: `fit_prompt`).
- A fault boundary per sequence: a row whose setup, sampling or callback raises ends alone with its own
  error (finish_reason "error") and the batch goes on; only a failing forward pass fails every row.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from foundry.errors import ConfigError
from foundry.model.sampling import MIN_TEMPERATURE, sample_next, sample_rows


@dataclass
class Sampling:
    """How one sequence is decoded. `stop_ids` None: the tokenizer's stop ids (`<|endoftext|>`, `<|end|>`)."""

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


class SharedDraw:
    """Sequences sampled together from one generator: one batched draw (`sample_rows`) over their rows per
    step, in row order, their rows held until every member has finished (see the module docstring). Its
    members take one temperature and top_k, no top_p, no seed of their own, and share the shortest budget
    (their rows step together); add them in one `add_many` call."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator
        self.live = 0  # members added and not finished
        self.settings: tuple | None = None  # (temperature, top_k) of the first member

    def sample(self, logits: torch.Tensor) -> list[int]:
        temperature, top_k = self.settings
        return sample_rows(logits, temperature, top_k, self.generator).tolist()


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
    draw: SharedDraw | None = None  # sampled with others from one generator (GRPO)
    last: int = 0  # the token its row feeds to the next step (a held row's last draw)

    @property
    def queue_seconds(self) -> float:
        return (self.started_at or time.monotonic()) - self.queued_at

    def cancel(self) -> None:
        self.cancelled = True


class BatchDecoder:
    """Steps up to `max_batch` sequences together over one ragged KV cache. Not thread-safe: one caller.

    `tokenizer` gives the default stop ids and the eos an empty prompt starts from; without one a sequence
    stops only at its own `stop_ids`. `pad_id` pads the prefill's shorter prompts (never seen by a real token).
    """

    def __init__(self, model, tokenizer=None, max_batch: int = 1, max_len: int | None = None, pad_id: int = 0):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch, self.pad_id = model, tokenizer, max_batch, pad_id
        self.context = model.config.max_seq_len
        self.max_len = min(max_len or self.context, self.context)  # cache rows: prompt + reply tokens at most
        self.device = next(model.parameters()).device
        self.cache = None  # allocated on first use: (max_batch, max_len) keys and values per layer
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
        """Prefill the prompts of `seqs` together and emit each one's first token (some may finish at once)."""
        assert len(self.active) + len(seqs) <= self.max_batch, "no free row"
        for seq in seqs:
            if seq.draw is not None:
                seq.draw.live += 1
        ready = [seq for seq in seqs if self._guarded(seq, self._start, seq)]
        shortest: dict[SharedDraw, int] = {}
        for seq in ready:  # a shared draw's rows step together: they share its shortest budget
            if seq.draw is not None:
                shortest[seq.draw] = min(shortest.get(seq.draw, seq.budget), seq.budget)
        for seq in ready:
            if seq.draw is not None:
                seq.budget = shortest[seq.draw]
        if not ready:
            return
        if self.cache is None:
            self.cache = self.model.new_ragged_kv_cache(self.max_batch, self.max_len)
        logits, sources = self._prefill(ready)  # (m, V), and where each one's keys and values are
        self._draw(ready, logits)
        for seq, (prefill, source_row, length) in zip(ready, sources):
            if seq.cancelled:
                self._finish(seq, "cancelled")  # no-op unless it was cancelled while emitting its first token
            if seq.finish_reason is None or self._held(seq):  # it goes on: its prompt takes the next free row
                self.cache.load_row(len(self.active), prefill, source_row, length)
                self.active.append(seq)

    def _start(self, seq: Sequence) -> bool:
        """Set up `seq`'s budget, stop ids and generator; False if it cannot produce a token."""
        s = seq.sampling
        s.check()
        if seq.draw is not None:
            seq.draw.settings = seq.draw.settings or (s.temperature, s.top_k)
            if s.seed is not None or s.top_p is not None or seq.draw.settings != (s.temperature, s.top_k):
                raise ConfigError("the sequences of a shared draw take one temperature and top_k, and no top_p "
                                  "or seed of their own")
        seq.started_at = time.monotonic()
        eos = self.tokenizer.eos_id if self.tokenizer is not None else None
        if not seq.prompt_ids and eos is None:
            raise ConfigError("an empty prompt needs a tokenizer (it starts from its end-of-text token)")
        seq.prompt_ids = fit_prompt(seq.prompt_ids, self.context, eos)
        seq.budget = min(s.max_tokens, self.max_len - len(seq.prompt_ids) + 1, self.context - len(seq.prompt_ids))
        default_stop = self.tokenizer.stop_ids if self.tokenizer is not None else ()
        seq.stop = frozenset(default_stop if s.stop_ids is None else s.stop_ids)
        if s.seed is not None:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(s.seed)
        if seq.cancelled or seq.budget < 1:
            self._finish(seq, "length")
            return False
        return True

    def _prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, list[tuple]]:
        """The first logits (m, V) of `seqs` and, per sequence, (prefill cache, its row, prompt length)."""
        order: dict[tuple, int] = {}  # each distinct prompt once, in order of first appearance
        for seq in seqs:
            order.setdefault(tuple(seq.prompt_ids), len(order))
        prompts = list(order)
        split = getattr(self.model, "longrope_from", 0)  # longrope: each side of the original context apart
        groups = ([[i for i, p in enumerate(prompts) if (len(p) > split) == side] for side in (False, True)]
                  if split else [list(range(len(prompts)))])
        lasts, where, offset = [], [None] * len(prompts), 0
        for group in (g for g in groups if g):
            lengths = [len(prompts[i]) for i in group]
            longest = max(lengths)
            ids = torch.tensor([list(prompts[i]) + [self.pad_id] * (longest - n) for i, n in zip(group, lengths)],
                               device=self.device)  # (m, T)
            prefill = self.model.new_kv_cache(len(group), longest)
            hidden = self.model(ids, kv_cache=prefill, return_hidden=True)  # (m, T, d)
            last = torch.tensor(lengths, device=self.device) - 1
            lasts.append(self.model.lm_head(hidden[torch.arange(len(group), device=self.device), last]))  # (m, V)
            for j, (i, n) in enumerate(zip(group, lengths)):
                where[i] = (offset + j, prefill, j, n)
            offset += len(group)
        logits = lasts[0] if len(lasts) == 1 else torch.cat(lasts)
        picks = [where[order[tuple(seq.prompt_ids)]] for seq in seqs]
        return logits[[p[0] for p in picks]], [p[1:] for p in picks]

    @torch.inference_mode()
    def step(self) -> None:
        """One batched forward pass: every active sequence gets its next token (or finishes)."""
        self._release()  # a cancelled sequence frees its row before the step
        if not self.active:
            return
        inputs = torch.tensor([[seq.last] for seq in self.active], device=self.device)  # (B, 1)
        logits = self.model(inputs, kv_cache=self.cache)[:, -1]  # (B, V)
        self._draw(self.active, logits)
        self._release()

    def _draw(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Each live sequence's next token from its row of `logits` (m, V), accepted inside its fault boundary."""
        shared: dict[SharedDraw, list[int]] = {}
        greedy = None
        for i, seq in enumerate(seqs):
            if seq.draw is not None:
                shared.setdefault(seq.draw, []).append(i)
            elif seq.finish_reason is None:
                if greedy is None:
                    greedy = logits.argmax(-1).tolist()  # one sync for every greedy row
                self._guarded(seq, self._sample_and_accept, seq, logits[i], greedy[i])
        for draw, rows in shared.items():
            members = [seqs[i] for i in rows]
            try:
                # finished members are drawn too, so the draw keeps its shape (all rows: no copy)
                tokens = draw.sample(logits if len(rows) == len(seqs) else logits[rows])
            except Exception as exc:  # noqa: BLE001 - the draw's fault ends its own members only
                for seq in members:
                    self._finish(seq, "error", exc)
                continue
            for seq, token in zip(members, tokens):
                seq.last = token
                if seq.finish_reason is None:
                    self._guarded(seq, self._accept, seq, token)

    def _guarded(self, seq: Sequence, fn, *args) -> bool:
        """`fn(*args)` inside `seq`'s fault boundary: if it raises, `seq` alone ends with that error (False)."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one request's fault must not end the others
            self._finish(seq, "error", exc)
            return False

    def _sample_and_accept(self, seq: Sequence, logits: torch.Tensor, greedy: int) -> bool:
        s = seq.sampling
        if s.temperature < MIN_TEMPERATURE:
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
        seq.last = token
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
        if seq.draw is not None:
            seq.draw.live -= 1
        if seq.on_finish is not None:
            seq.on_finish(seq)

    def _held(self, seq: Sequence) -> bool:
        """A finished member of a shared draw keeps its row while another member decodes."""
        return seq.draw is not None and seq.draw.live > 0

    def _release(self) -> None:
        """End the cancelled rows and free every finished row that is not held."""
        for row in reversed(range(len(self.active))):
            seq = self.active[row]
            if seq.cancelled:
                self._finish(seq, "cancelled")
            if seq.finish_reason is not None and not self._held(seq):
                self._remove(row)

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


def decode(model, tokenizer, sequences: list[Sequence], max_batch: int | None = None, max_len: int | None = None,
           pad_id: int = 0) -> list[Sequence]:
    """Decode `sequences` to their ends, up to `max_batch` rows at a time (default all), in eval mode; each
    joins as a row frees, in order (a shared draw's members should fit at once). Returns `sequences`; a
    sequence that failed alone carries its error (finish_reason "error"); a failing forward pass raises."""
    was_training = model.training
    model.eval()
    try:
        decoder = BatchDecoder(model, tokenizer, max(1, min(max_batch or len(sequences), len(sequences))), max_len,
                               pad_id)
        waiting = deque(sequences)
        while waiting or decoder.active:
            joining = [waiting.popleft() for _ in range(min(len(waiting), decoder.max_batch - len(decoder.active)))]
            if joining:
                decoder.add_many(joining)
            decoder.step()
    finally:
        model.train(was_training)
    return sequences
