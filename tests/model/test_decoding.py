"""The one batched decoder (`foundry.model.decoding`) that the serving engine and GRPO's sampler both run:
GRPO's completions are the engine's tokens (greedy, and seeded for one row), a shared draw gives each row
the same tokens whichever rows stop first, rows of different lengths decode together, a failing row ends
alone, and longrope prompts on either side of the original context prefill as they would alone."""

from __future__ import annotations

import pytest
import torch

from foundry.model.decoding import BatchDecoder, Sampling, Sequence, SharedDraw, decode
from foundry.serve import engine
from foundry.serve.generate import generate, generate_many
from foundry.train.grpo import sample_completions

from tests.helpers.serve_fixtures import tiny_model, tiny_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, max_seq_len=96)


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_serving_and_grpo_decode_through_the_one_decoder(model, tok, monkeypatch):
    assert engine.BatchDecoder is BatchDecoder and engine.Sequence is Sequence and engine.Sampling is Sampling
    steps = []
    original = BatchDecoder.step

    def counted(self):
        steps.append(len(self.active))
        return original(self)

    monkeypatch.setattr(BatchDecoder, "step", counted)
    ps = prompts(3)
    sample_completions(model, ps, 2, 4, set(), 1.0, None, torch.Generator().manual_seed(0), tok.pad_id)
    grpo_steps, steps[:] = list(steps), []
    generate_many(model, tok, ps, max_new_tokens=4, temperature=0, stop_ids=[])
    assert grpo_steps[0] == 6 and steps[0] == 3  # G=2 rows per prompt; one row per prompt


def test_grpo_completions_are_the_engines_tokens(model, tok):
    ps = prompts(4)
    stop = {tok.eos_id, tok.eot_id} | set(range(100, 130))  # rows stop at different steps
    ours = sample_completions(model, ps, 3, 12, stop, temperature=0.0, pad_id=tok.pad_id)
    theirs = generate_many(model, tok, ps, max_new_tokens=12, temperature=0, stop_ids=sorted(stop), max_batch=2)
    assert [t for t, _ in ours] == [e for e in theirs for _ in range(3)]
    assert [s for _, s in ours] == [len(e) < 12 for e in theirs for _ in range(3)]
    assert len({len(e) for e in theirs}) > 1  # ragged: the rows ended at different lengths
    # one seeded row: GRPO's batched draw is the engine's per-row draw from a generator of that seed
    for seed in (0, 1, 2):
        one = sample_completions(model, [ps[1]], 1, 15, set(), 0.9, 20, torch.Generator().manual_seed(seed))
        assert one[0][0] == list(generate(model, tok, ps[1], max_new_tokens=15, temperature=0.9, top_k=20,
                                          seed=seed, stop_ids=[]))


def test_a_shared_draw_gives_the_same_tokens_whichever_rows_stop_first(model, tok):
    """Finished rows keep their rows and are drawn with the rest: with a stop set, every completion is the
    stop-free completion of the same seed cut before its first stop token."""
    ps = prompts(5, seed=2)
    free = sample_completions(model, ps, 4, 15, set(), 1.5, None, torch.Generator().manual_seed(11), tok.pad_id)
    stop = set(range(100, 140))
    cut = sample_completions(model, ps, 4, 15, stop, 1.5, None, torch.Generator().manual_seed(11), tok.pad_id)
    lengths = set()
    for (f, _), (c, stopped) in zip(free, cut):
        first = next((i for i, t in enumerate(f) if t in stop), None)
        assert c == (f if first is None else f[:first]) and stopped == (first is not None)
        lengths.add(len(c))
    assert len(lengths) > 3 and any(not s for _, s in cut)  # stopped at many steps, and some ran to the cap


def test_a_failing_row_ends_alone(model, tok):
    ps = prompts(4, seed=3)
    clean = generate_many(model, tok, ps, max_new_tokens=10, temperature=0, stop_ids=[], max_batch=4)

    def explode(seq, _token):
        if len(seq.tokens) == 3:
            raise RuntimeError("callback exploded")

    seqs = [Sequence(list(p), Sampling(10, 0.0, stop_ids=())) for p in ps]
    seqs[1].on_token = explode
    seqs[2].sampling = Sampling(10, 1.0, None, float("nan"))  # refused at its setup
    decode(model, tok, seqs)
    assert seqs[1].finish_reason == "error" and "exploded" in str(seqs[1].error) and seqs[1].tokens == clean[1][:3]
    assert seqs[2].finish_reason == "error" and "top_p" in str(seqs[2].error) and seqs[2].tokens == []
    assert [seqs[0].tokens, seqs[3].tokens] == [clean[0], clean[3]]
    assert seqs[0].finish_reason == seqs[3].finish_reason == "length"

    # in a shared draw too: the member ends, its row is held, the others draw what they would have
    def group():  # 2 prompts x 2 completions, drawn together from one seeded generator
        draw = SharedDraw(torch.Generator().manual_seed(4))
        return [Sequence(list(ps[i // 2]), Sampling(8, 1.0, stop_ids=()), draw=draw) for i in range(4)]

    reference, members = group(), group()
    decode(model, tok, reference)
    members[2].on_token = explode
    decode(model, tok, members)
    assert members[2].finish_reason == "error" and members[2].tokens == reference[2].tokens[:3]
    assert [m.tokens for i, m in enumerate(members) if i != 2] == [r.tokens for i, r in enumerate(reference) if i != 2]


def test_rows_join_and_leave_at_their_own_limits(model, tok):
    """max_tokens and the context end each row on its own; rows freed mid-flight are refilled."""
    ps = prompts(6, seed=4) + [list(range(5, 92))]  # the last one leaves room for 96 - 87 = 9 tokens
    budgets = [3, 20, 1, 12, 20, 7, 50]
    alone = [list(generate(model, tok, p, max_new_tokens=b, temperature=0, stop_ids=[])) for p, b in zip(ps, budgets)]
    decoder = BatchDecoder(model, tok, max_batch=3)
    seqs = [Sequence(p, Sampling(max_tokens=b, temperature=0, stop_ids=())) for p, b in zip(ps, budgets)]
    pending, widest = list(seqs), 0
    while pending or decoder.active:
        while pending and decoder.has_room:
            decoder.add(pending.pop(0))
        widest = max(widest, len(decoder.active))
        decoder.step()
    assert [s.tokens for s in seqs] == alone and widest == 3
    assert [len(s.tokens) for s in seqs] == [3, 20, 1, 12, 20, 7, 9]


def test_longrope_prompts_either_side_of_the_original_context_prefill_as_alone(tok, monkeypatch):
    scaling = {"rope_type": "longrope", "original_max_position_embeddings": 32, "factor": 4.0,
               "short_factor": [1.0, 1.1, 1.3, 1.7], "long_factor": [1.0, 2.0, 3.5, 6.0]}
    model = tiny_model(tok, max_seq_len=128, rope_scaling=scaling, partial_rotary=0.5)
    ps = [prompts(1, seed=5)[0][:5], torch.arange(3, 43).tolist(), torch.arange(50, 82).tolist()]  # 5, 40, 32
    alone = [list(generate(model, tok, p, max_new_tokens=6, temperature=0, stop_ids=[])) for p in ps]
    together = generate_many(model, tok, ps, max_new_tokens=6, temperature=0, stop_ids=[])
    assert together == alone
    # exact because the prefill splits at the original context: one padded prefill of all three would put the
    # short rows on the long factors (the 40-token row's length)
    prefills = []
    original = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda b, n=None: prefills.append(b) or original(b, n))
    generate_many(model, tok, ps, max_new_tokens=1, temperature=0, stop_ids=[])
    assert sorted(prefills) == [1, 2]  # 40 tokens alone; 5 and 32 (not past the original context) together
