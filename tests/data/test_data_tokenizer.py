"""Tokenizer: exact round trip (non-ASCII too), fixed special ids, transformers loads it with the chat template."""

import json
import random

import pytest

from foundry.cli import main as cli
from foundry.data.chat import CHAT_TEMPLATE
from foundry.data.tokenizer import SPECIAL_TOKENS, Tokenizer

WORDS = "the quick brown fox jumps over a lazy dog café naïve Straße über garçon 日本語 ünïcödé".split()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    rng = random.Random(0)
    (root / "manifest.json").write_text("{}")
    for split, n in (("train", 200), ("val", 20)):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                text = " ".join(rng.choice(WORDS) for _ in range(40))
                f.write(json.dumps({"id": f"{split}{i}", "source": "gen", "text": text}, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="module")
def tokdir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    assert cli(["tokenizer", "train", str(dataset), "--out", str(out), "--vocab-size", "320"]) == 0
    return out


ROUND_TRIP = [
    "plain ascii text.",
    "  leading and trailing spaces  \n\n\ttabs\tand\nnewlines\r\n",
    "Ça va? Grüße aus Köln — 日本語のテキスト, emoji 🙂👍🏽, zero-width\u200bjoiner",
    "words never seen in training: zyxwvut qqqq 0123456789",
    "a literal <|endoftext|> and <|user|> inside text",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tokdir, text):
    tok = Tokenizer.load(tokdir)
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_have_fixed_ids(tokdir):
    tok = Tokenizer.load(tokdir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.eot_id) == (0, 1, 2, 6)
    assert [tok.role_id(r) for r in ("system", "user", "assistant")] == [3, 4, 5]
    assert tok.vocab_size == 320
    assert tok.encode("hello") == tok.encode_batch(["hello", "x"])[0]
    assert tok.decode([0, 1], skip_special=True) == ""


def test_sha256_survives_save_and_load(tokdir, tmp_path):
    tok = Tokenizer.load(tokdir)
    tok.save(tmp_path / "copy")
    again = Tokenizer.load(tmp_path / "copy" / "tokenizer.json")
    assert again.sha256 == tok.sha256
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == (tokdir / "tokenizer.json").read_bytes()


def test_transformers_loads_it_and_renders_chat(tokdir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokdir))
    tok = Tokenizer.load(tokdir)
    text = ROUND_TRIP[2]
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (0, 2, 1)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>Be brief.<|end|><|user|>hi<|end|><|assistant|>"
    assert json.loads((tokdir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_run_record_reports_fertility(tokdir):
    run = json.loads((tokdir / "run.json").read_text())
    fert = run["results"]["fertility"]
    assert fert["split"] == "val" and fert["words"] == 20 * 40
    assert 1.0 <= fert["tokens_per_word"] < 10


def test_refuses_vocab_below_bytes_and_missing_dataset(dataset, tmp_path, capsys):
    assert cli(["tokenizer", "train", str(dataset), "--out", str(tmp_path / "t"), "--vocab-size", "100"]) == 1
    assert "below 263" in capsys.readouterr().err
    assert cli(["tokenizer", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error: ") and "nope" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_round_trip_holds_for_arbitrary_unicode(tokdir):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tok = Tokenizer.load(tokdir)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
    def check(text):
        assert tok.decode(tok.encode(text)) == text

    check()
