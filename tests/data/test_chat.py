"""Chat template: rendering matches transformers, the assistant mask is exact, bad chats fail clearly."""

from __future__ import annotations

import json

import pytest

from tests.helpers.files import write_jsonl
from tests.helpers.posttrain import tiny_tokenizer

from foundry.data.chat import (CHAT_TEMPLATE, TruncationStats, assistant_loss_targets, fit_conversation,
                               read_chat_jsonl, render_chat)
from foundry.errors import DataError

MULTI = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which book follows Ruth?"},
    {"role": "assistant", "content": "1 Samuel."},
    {"role": "user", "content": "Quote Genesis 1:3"},
    {"role": "assistant", "content": "And God said, Let there be light: and there was light."},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_ids_match_transformers_apply_chat_template(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.chat_template == CHAT_TEMPLATE
    for gen in (False, True):
        msgs = MULTI if not gen else MULTI[:4]
        ours, _ = render_chat(tok, msgs, add_generation_prompt=gen)
        theirs = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False)
        assert ours == list(theirs)
    # and the text is the documented template
    text = hf.apply_chat_template(MULTI[:2], tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>Answer briefly.<|end|><|user|>Which book follows Ruth?<|end|><|assistant|>"


def test_assistant_mask_exact_token_by_token(tok):
    ids, mask = render_chat(tok, MULTI)
    assert len(ids) == len(mask)
    # Expected mask built independently: walk the turns, encoding each piece on its own (the template has a
    # special token at every boundary, so pieces tokenise the same alone as in context).
    expected_ids, expected_mask = [], []
    for m in MULTI:
        expected_ids.append(tok.role_id(m["role"]))
        expected_mask.append(False)
        body = tok.encode(m["content"]) + [tok.eot_id]
        expected_ids += body
        expected_mask += [m["role"] == "assistant"] * len(body)
    assert ids == expected_ids
    assert mask == expected_mask
    # the supervised tokens decode to exactly the assistant answers, each followed by <|end|>
    supervised = tok.decode([i for i, m in zip(ids, mask) if m])
    assert supervised == "1 Samuel.<|end|>And God said, Let there be light: and there was light.<|end|>"
    # role tokens are never supervised; every assistant turn's <|end|> is
    ends = [k for k, i in enumerate(ids) if i == tok.eot_id]
    assert [mask[k] for k in ends] == [False, False, True, False, True]
    assert not any(mask[k] for k, i in enumerate(ids) if i in (3, 4, 5))


def test_mask_survives_marker_like_text_in_content(tok):
    # a user turn that *mentions* the assistant marker must not become supervised (trl #1820)
    msgs = [{"role": "user", "content": "write <|assistant|> literally"}, {"role": "assistant", "content": "ok"}]
    ids, mask = render_chat(tok, msgs)
    sup = tok.decode([i for i, m in zip(ids, mask) if m])
    assert sup == "ok<|end|>"


def test_targets_shift_and_ignore(tok):
    ids, mask = render_chat(tok, MULTI[1:3])
    targets = assistant_loss_targets(ids, mask)
    assert len(targets) == len(ids) and targets[-1] == -100
    for t in range(len(ids) - 1):
        assert targets[t] == (ids[t + 1] if mask[t + 1] else -100)
    assert targets[-2] == tok.eot_id  # the model is taught to emit <|end|>


def test_truncation_rule_drops_early_turns_then_cuts_tail(tok):
    long_conv = [MULTI[0]] + [{"role": "user", "content": "Quote Genesis 1:3 " * 3},
                              {"role": "assistant", "content": "And God said, Let there be light. " * 3}] * 4
    full, _ = render_chat(tok, long_conv)
    last, _ = render_chat(tok, [long_conv[0]] + long_conv[-2:])
    stats = TruncationStats()
    fitted = fit_conversation(tok, long_conv, len(last) + 3, stats)
    assert fitted.ids == last  # system prompt kept, earliest exchanges dropped whole
    assert stats.dropped_turns == 1 and stats.cut_tail == 0
    fitted = fit_conversation(tok, long_conv, len(last) - 5, stats)
    assert fitted.ids == last[:len(last) - 5] and stats.cut_tail == 1
    assert fit_conversation(tok, long_conv, 4, stats) is None and stats.skipped == 1
    assert len(full) > len(last)


@pytest.mark.parametrize("record,needle", [
    ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": []}, "non-empty list"),
    ({"text": "hi"}, "'messages'"),
    ({"messages": [{"role": "user"}]}, "'role' and 'content'"),
])
def test_bad_chats_name_file_and_line(tmp_path, record, needle):
    good = {"messages": MULTI}
    path = write_jsonl(tmp_path / "chats.jsonl", [good, record])
    with pytest.raises(DataError) as e:
        read_chat_jsonl(path)
    assert str(e.value).startswith(f"{path}:2: ") and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_read_chat_jsonl_and_bad_json(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": MULTI}])
    assert read_chat_jsonl(path) == [MULTI]
    path.write_text(json.dumps({"messages": MULTI}) + "\n\n{oops\n")
    with pytest.raises(DataError, match=r"c.jsonl:3: not valid JSON"):
        read_chat_jsonl(path)
