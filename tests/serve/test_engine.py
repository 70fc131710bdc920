"""The batched engine: batched greedy decoding gives exactly the tokens of one-at-a-time decoding (prompts of
different lengths joining and leaving), per-sequence sampling and stops, and the bounded queue."""

from __future__ import annotations

import threading

import pytest
import torch

from foundry.model.llama import Llama, config_from_preset
from foundry.model.decoding import BatchDecoder, Sampling, Sequence
from foundry.serve.engine import Engine, QueueFull
from foundry.serve.generate import generate, generate_many
from tests.helpers.serve_fixtures import wait_until

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    # float32 "test" preset with peaky logits, so greedy choices are not near-ties
    return Llama(config_from_preset("test", vocab_size=tok.vocab_size, max_seq_len=96, init_std=0.2)).eval()


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 300, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_ragged_batch_logits_match_each_sequence_alone(model):
    """The cache rows hold 3 sequences of different lengths; one step's logits equal each one's own."""
    seqs = prompts(3)
    cache = model.new_ragged_kv_cache(3, 64)
    alone = []
    for row, ids in enumerate(seqs):
        single = model.new_kv_cache(1, 64)
        model(torch.tensor([ids]), kv_cache=single)
        cache.load_row(row, single)
        alone.append(model(torch.tensor([[7]]), kv_cache=single)[0, -1])
    batched = model(torch.tensor([[7], [7], [7]]), kv_cache=cache)[:, -1]
    assert cache.lengths == [len(s) + 1 for s in seqs]
    for row in range(3):
        torch.testing.assert_close(batched[row], alone[row], rtol=1e-5, atol=1e-5)
    # an uncached forward of the whole text agrees too (positions restart at 0 in every row)
    torch.testing.assert_close(batched[1], model(torch.tensor([seqs[1] + [7]]))[0, -1], rtol=1e-4, atol=1e-4)


def test_batched_greedy_equals_one_at_a_time(model, tok):
    ps = prompts(7)
    alone = [list(generate(model, tok, p, max_new_tokens=25, temperature=0, stop_ids=[], use_cache=False))
             for p in ps]
    # 3 rows for 7 prompts: sequences join as others leave, at different lengths
    together = generate_many(model, tok, ps, max_new_tokens=25, temperature=0, stop_ids=[], max_batch=3)
    assert together == alone and all(len(t) == 25 for t in together)
    # different budgets: rows are freed (and refilled by the last row) mid-flight
    budgets = [3, 25, 9, 1, 17, 25, 5]
    decoder = BatchDecoder(model, tok, max_batch=4)
    seqs = [Sequence(p, Sampling(max_tokens=b, temperature=0, stop_ids=())) for p, b in zip(ps, budgets)]
    pending = list(seqs)
    while pending or decoder.active:
        while pending and decoder.has_room:
            decoder.add(pending.pop(0))
        decoder.step()
    assert [s.tokens for s in seqs] == [a[:b] for a, b in zip(alone, budgets)]
    assert [s.finish_reason for s in seqs] == ["length"] * 7


def test_per_sequence_sampling_and_stops(model, tok):
    ps = prompts(4)
    kw = dict(temperature=0.9, top_k=30, top_p=0.9, stop_ids=[])
    seeded = generate_many(model, tok, ps, max_new_tokens=20, seed=[5, 6, 7, 8], **kw)
    for p, s, got in zip(ps, [5, 6, 7, 8], seeded):
        assert got == list(generate(model, tok, p, max_new_tokens=20, seed=s, **kw))
    assert len({tuple(x) for x in seeded}) == 4
    # a stop id ends only its own sequence, before the stop token is emitted
    free = generate_many(model, tok, ps, max_new_tokens=12, temperature=0, stop_ids=[])
    stop = free[0][4]
    got = generate_many(model, tok, ps, max_new_tokens=12, temperature=0, stop_ids=[stop])
    for f, g in zip(free, got):
        assert g == (f[:f.index(stop)] if stop in f else f)
    # a prompt near the context limit is cut at the context (96 tokens here)
    long = generate_many(model, tok, [list(range(5, 95)), ps[0]], max_new_tokens=50, temperature=0, stop_ids=[])
    assert [len(x) for x in long] == [6, 50]


def test_engine_queue_bound_and_cancel(model, tok):
    gate, holding = threading.Event(), threading.Event()
    finished = []

    def hold(seq, token):  # the engine thread waits here: the rows stay taken while we fill the queue
        holding.set()
        gate.wait(10)

    engine = Engine(model, tok, max_batch=2, max_queue=2)
    try:
        seqs = [Sequence(p, Sampling(max_tokens=3, temperature=0), on_token=hold,
                         on_finish=finished.append) for p in prompts(5)]
        engine.submit(seqs[0])
        holding.wait(10)  # seqs[0] holds a row; 2 rows + 2 queue places: 3 more fit, then the queue is full
        for seq in seqs[1:4]:
            engine.submit(seq)
        assert engine.queued == 3
        with pytest.raises(QueueFull):
            engine.submit(seqs[4])
        engine.cancel(seqs[3])  # a queued request leaves: its place is free at once
        assert seqs[3].finish_reason == "cancelled"
        engine.submit(seqs[4])
        gate.set()
        for seq in seqs:
            while seq.finish_reason is None:
                gate.wait(0.01)
        assert [s.finish_reason for s in seqs] == ["length", "length", "length", "cancelled", "length"]
        assert seqs[3].tokens == [] and all(len(s.tokens) == 3 for s in seqs if s is not seqs[3])
        # a row is freed just after its sequence finishes (the decoder's release), on the engine's thread
        wait_until(lambda: engine.active == 0 and engine.queued == 0, 10)
    finally:
        gate.set()
        engine.shutdown()


def test_engine_survives_a_failing_forward(model, tok):
    """A forward pass that raises ends the requests it touched with the error; the next request is served."""
    original = model.forward
    failing = [True]

    def forward(*args, **kwargs):
        if failing[0]:
            raise RuntimeError("device fell over")
        return original(*args, **kwargs)

    engine = Engine(model, tok, max_batch=2, max_queue=4)
    done = threading.Event()
    try:
        model.forward = forward
        bad = Sequence(prompts(1)[0], Sampling(max_tokens=4, temperature=0), on_finish=lambda s: done.set())
        engine.submit(bad)
        assert done.wait(20)
        assert bad.finish_reason == "error" and "fell over" in str(bad.error)
        failing[0] = False
        done.clear()
        good = Sequence(prompts(1)[0], Sampling(max_tokens=4, temperature=0, stop_ids=()),
                        on_finish=lambda s: done.set())
        engine.submit(good)
        assert done.wait(20)
        assert good.finish_reason == "length" and len(good.tokens) == 4
    finally:
        del model.forward
        engine.shutdown()
