"""SFT batches: packing gives the same loss as unpacked rows, no cross-talk, deterministic resumable order."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.posttrain import book_chats, tiny_tokenizer

from foundry.model.llama import Llama, config_from_preset
from foundry.train.objectives import NextTokenObjective
from foundry.train.sft import ChatBatches, encode_conversations, pack_rows


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    convs = [c["messages"] for c in book_chats(system=True)]
    convs.append(convs[0] + [{"role": "user", "content": "And after that?"}, {"role": "assistant", "content": "Leviticus"}])
    examples, stats = encode_conversations(tok, convs, 64)
    torch.manual_seed(0)
    model = Llama(config_from_preset("test", max_seq_len=128)).eval()
    return tok, examples, stats, model


def _loss(model, batches):
    obj, total, units = NextTokenObjective(), 0.0, 0
    with torch.no_grad():
        for b in batches:
            loss_sum, _ = obj.loss(model, b)
            total += float(loss_sum)
            units += obj.units(b)
    return total, units


def test_packed_loss_equals_unpacked(setup):
    tok, examples, stats, model = setup
    packed = ChatBatches(examples, 64, 0, tok.pad_id, pack=True)
    unpacked = ChatBatches(examples, 64, 0, tok.pad_id, pack=False)
    p_batches, u_batches = list(packed.eval_batches(4)), list(unpacked.eval_batches(4))
    assert sum(b["input_ids"].shape[0] for b in p_batches) < len(examples)  # really packed
    p_sum, p_units = _loss(model, p_batches)
    u_sum, u_units = _loss(model, u_batches)
    assert p_units == u_units == stats.supervised
    assert p_sum == pytest.approx(u_sum, rel=1e-5)


def test_no_cross_contamination(setup):
    tok, examples, _, model = setup
    batch = next(ChatBatches(examples, 64, 0, tok.pad_id, pack=True).eval_batches(1))
    seg = batch["segment_ids"][0]
    second = (seg == 2).nonzero().flatten()
    assert len(second) > 0 and int(batch["position_ids"][0, second[0]]) == 0
    with torch.no_grad():
        packed_logits = model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])
        alone = model(batch["input_ids"][:, second])
        # without segment ids the second example would see the first: different logits
        leaky = model(batch["input_ids"])
    torch.testing.assert_close(packed_logits[:, second], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(leaky[:, second], alone, atol=1e-3)
    # the last token of each example predicts nothing (no target into the next example)
    last_of_first = int((seg == 1).nonzero().flatten()[-1])
    assert int(batch["targets"][0, last_of_first]) == -100


def test_order_deterministic_and_resumes_exactly(setup):
    tok, examples, _, _ = setup
    a = ChatBatches(examples, 64, 7, tok.pad_id)
    b = ChatBatches(examples, 64, 7, tok.pad_id)
    first = [a.next_batch(2) for _ in range(3)]
    state = a.state_dict()
    rest = [a.next_batch(2) for _ in range(4)]  # crosses an epoch boundary
    assert a.state_dict()["epoch"] >= 1
    for x, y in zip(first, [b.next_batch(2) for _ in range(3)]):
        assert torch.equal(x["input_ids"], y["input_ids"])
    c = ChatBatches(examples, 64, 7, tok.pad_id)
    c.load_state_dict(state)
    for x, y in zip(rest, [c.next_batch(2) for _ in range(4)]):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["targets"], y["targets"])
    other = ChatBatches(examples, 64, 8, tok.pad_id).next_batch(2)
    assert not torch.equal(other["input_ids"], first[0]["input_ids"])


def test_pack_rows_keeps_examples_whole():
    rows = pack_rows([30, 30, 10, 64, 5], [0, 1, 2, 3, 4], 64)
    assert rows == [[0, 1], [2], [3], [4]]


def test_rows_padded_to_the_batch_longest_and_tokens_counted_without_padding(setup):
    from foundry.train.throughput import batch_tokens

    tok, examples, _, _ = setup
    for pack in (False, True):
        batch = ChatBatches(examples, 64, 0, tok.pad_id, pack=pack).next_batch(3)
        real = (batch["input_ids"] != tok.pad_id).sum(1)
        assert batch["input_ids"].shape[1] == int(real.max()) <= 64  # no column of padding only
        tokens, supervised = batch_tokens(batch, tok.pad_id)
        assert tokens == int(real.sum()) and supervised == int((batch["targets"] != -100).sum())
