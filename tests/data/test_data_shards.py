"""Packed shards and TokenBlocks: layout, exact resume, disjoint ranks, fixed eval blocks, bad inputs."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.cli import main as cli
from foundry.data.shards import (TokenBlocks, TokenStream, check_tokenizer_matches, load_token_index,
                                 tokenizer_key)
from foundry.data.tokenizer import Tokenizer
from foundry.errors import DataError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu Grüße 日本".split()


def make_dataset(root, n_train=150, n_val=12, seed=0):
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"seed": seed}))
    texts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        texts[split] = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(n)]
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, t in enumerate(texts[split]):
                f.write(json.dumps({"id": str(i), "source": "gen", "text": t}, ensure_ascii=False) + "\n")
    return texts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    texts = make_dataset(root / "ds")
    assert cli(["tokenizer", "train", str(root / "ds"), "--out", str(root / "tok"), "--vocab-size", "300"]) == 0
    # small shards so documents and windows straddle shard boundaries; 2 workers to exercise the pool
    assert cli(["data", "tokenize", str(root / "ds"), "--tokenizer", str(root / "tok"),
                "--shard-tokens", "997", "--workers", "2", "--no-progress"]) == 0
    return root, texts


def test_shards_hold_documents_joined_by_eos(built):
    root, texts = built
    tok = Tokenizer.load(root / "tok")
    index = load_token_index(root / "ds")
    assert index["dtype"] == "uint16" and index["eos_id"] == 0 and index["vocab_size"] == 300
    assert index["tokenizer_sha256"] == tok.sha256
    train = index["splits"]["train"]
    assert train["documents"] == 150 and len(train["shards"]) > 1
    assert train["bytes"] == sum(len(t.encode()) for t in texts["train"])
    stream = TokenStream(root / "ds", "train")
    ids = stream.read(0, stream.num_tokens)
    expected = [t for doc in texts["train"] for t in tok.encode(doc) + [tok.eos_id]]
    assert ids.tolist() == expected
    assert train["tokens"] == len(expected) == sum(s["tokens"] for s in train["shards"])


def test_batches_are_shifted_windows_of_the_stream(built):
    root, _ = built
    blocks = TokenBlocks(root / "ds", "train", block_size=32, seed=3)
    stream = TokenStream(root / "ds", "train")
    full = stream.read(0, stream.num_tokens)
    batch = blocks.next_batch(5)
    x, y = batch["input_ids"], batch["targets"]
    assert x.shape == y.shape == (5, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in x.numpy():  # each row is a contiguous piece of the token stream
        hits = [i for i in range(len(full) - 32) if np.array_equal(full[i:i + 32], row)]
        assert hits


def test_resume_gives_exactly_the_same_batches(built):
    root, _ = built
    a = TokenBlocks(root / "ds", "train", block_size=16, seed=7)
    for _ in range(37):  # past an epoch boundary
        a.next_batch(8)
    state = json.loads(json.dumps(a.state_dict()))  # survives serialisation
    after = [a.next_batch(8) for _ in range(30)]
    b = TokenBlocks(root / "ds", "train", block_size=16, seed=7)
    b.load_state_dict(state)
    for want in after:
        got = b.next_batch(8)
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["targets"], want["targets"])
    c = TokenBlocks(root / "ds", "train", block_size=16, seed=8)
    first_of_seed_7 = TokenBlocks(root / "ds", "train", 16, seed=7).next_batch(8)["input_ids"]
    assert not torch.equal(c.next_batch(8)["input_ids"], first_of_seed_7)
    with pytest.raises(DataError, match="seed"):
        c.load_state_dict(state)


def test_ranks_draw_disjoint_slices_of_the_global_batch(built):
    root, _ = built
    single = TokenBlocks(root / "ds", "train", block_size=16, seed=1)
    ranks = [TokenBlocks(root / "ds", "train", block_size=16, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole = single.next_batch(8)["input_ids"]
        parts = [r.next_batch(4)["input_ids"] for r in ranks]
        assert torch.equal(torch.cat(parts), whole)
        rows0 = {tuple(r) for r in parts[0].tolist()}
        assert not rows0 & {tuple(r) for r in parts[1].tolist()}


def test_an_epoch_visits_every_window_once(built):
    root, _ = built
    blocks = TokenBlocks(root / "ds", "train", block_size=16, seed=5)
    starts = blocks._window_starts(blocks.num_windows)
    assert len(set(starts)) == blocks.num_windows and blocks.state_dict()["epoch"] == 1
    assert all(s + 17 <= blocks.stream.num_tokens for s in starts)


def test_eval_batches_are_fixed_and_sequential(built):
    root, _ = built
    blocks = TokenBlocks(root / "ds", "val", block_size=16, seed=0)
    first = [b["input_ids"] for b in blocks.eval_batches(4, max_batches=3)]
    blocks.next_batch(4)
    second = [b["input_ids"] for b in blocks.eval_batches(4, max_batches=3)]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))
    stream = TokenStream(root / "ds", "val")
    assert first[0][0].tolist() == stream.read(0, 16).tolist()
    assert first[0][1].tolist() == stream.read(17, 16).tolist()


def test_split_shorter_than_a_block_is_a_data_error(built):
    root, _ = built
    with pytest.raises(DataError, match=r"ds.*'val'.*fewer than one block"):
        TokenBlocks(root / "ds", "val", block_size=100_000, seed=0)


def test_tokenizer_mismatch_and_stale_shards_are_refused(built, tmp_path, capsys):
    root, _ = built
    make_dataset(tmp_path / "other", n_train=40, seed=1)
    assert cli(["tokenizer", "train", str(tmp_path / "other"), "--out", str(tmp_path / "tok2"),
                "--vocab-size", "280"]) == 0
    other = Tokenizer.load(tmp_path / "tok2")
    mine = Tokenizer.load(root / "tok")
    assert check_tokenizer_matches(root / "ds", mine) == root / "ds" / "tokens" / tokenizer_key(mine.sha256)
    with pytest.raises(DataError, match=rf"ds: tokenised with tokenizer {mine.sha256[:12]} only.*"
                                        rf"foundry data tokenize .*ds --tokenizer"):
        check_tokenizer_matches(root / "ds", other)
    # the same dataset tokenised with this tokenizer again is a no-op, and the shards are not rewritten
    before = {f: f.read_bytes() for f in (root / "ds" / "tokens").rglob("*") if f.is_file()}
    assert cli(["data", "tokenize", str(root / "ds"), "--tokenizer", str(root / "tok"), "--no-progress"]) == 0
    assert "already tokenised" in capsys.readouterr().out
    assert {f: f.read_bytes() for f in (root / "ds" / "tokens").rglob("*") if f.is_file()} == before


def test_two_tokenizers_keep_their_shards_side_by_side(built, tmp_path):
    import shutil

    root, texts = built
    shutil.copytree(root / "ds", tmp_path / "ds")
    assert cli(["tokenizer", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "tok2"),
                "--vocab-size", "280"]) == 0
    mine, other = Tokenizer.load(root / "tok"), Tokenizer.load(tmp_path / "tok2")
    before = {f: f.read_bytes() for f in (tmp_path / "ds" / "tokens").rglob("*") if f.is_file()}
    assert cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(tmp_path / "tok2"),
                "--workers", "1", "--no-progress"]) == 0
    folders = sorted(p.name for p in (tmp_path / "ds" / "tokens").iterdir())
    assert folders == sorted([tokenizer_key(mine.sha256), tokenizer_key(other.sha256)])  # no temp left behind
    for f, data in before.items():  # the first tokenizer's shards are untouched
        assert f.read_bytes() == data
    # each reader picks its own tokenizer's shards; naming none is ambiguous now
    for tok in (mine, other):
        stream = TokenStream(tmp_path / "ds", "train", tok)
        assert stream.index["tokenizer_sha256"] == tok.sha256
        assert stream.read(0, stream.num_tokens).tolist() == [t for d in texts["train"] for t in tok.encode(d) + [tok.eos_id]]
    with pytest.raises(DataError, match="holds token shards for 2 tokenizers"):
        load_token_index(tmp_path / "ds")


def test_the_earlier_single_layout_still_loads(built, tmp_path, capsys):
    """Datasets tokenised before keyed folders (DATASET/tokens/index.json) are read, and a second tokenizer's
    shards go beside them."""
    import shutil

    root, texts = built
    tok = Tokenizer.load(root / "tok")
    shutil.copytree(root / "ds", tmp_path / "ds")
    keyed = tmp_path / "ds" / "tokens" / tokenizer_key(tok.sha256)
    for f in keyed.iterdir():
        f.rename(tmp_path / "ds" / "tokens" / f.name)
    keyed.rmdir()
    assert load_token_index(tmp_path / "ds", tok)["dir"] == str(tmp_path / "ds" / "tokens")
    blocks = TokenBlocks(tmp_path / "ds", "train", block_size=16, seed=0, tokenizer=tok)
    assert blocks.next_batch(2)["input_ids"].shape == (2, 16)
    assert cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(root / "tok"), "--no-progress"]) == 0
    assert "already tokenised" in capsys.readouterr().out and not keyed.exists()
    assert cli(["tokenizer", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "tok2"), "--vocab-size", "280"]) == 0
    other = Tokenizer.load(tmp_path / "tok2")
    assert cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(tmp_path / "tok2"), "--workers", "1",
                "--no-progress"]) == 0
    assert load_token_index(tmp_path / "ds", other)["dir"] == str(tmp_path / "ds" / "tokens" / tokenizer_key(other.sha256))
    assert load_token_index(tmp_path / "ds", tok)["dir"] == str(tmp_path / "ds" / "tokens")


def test_absent_shards_name_the_command(tmp_path):
    make_dataset(tmp_path / "ds", n_train=5)
    with pytest.raises(DataError, match=r"ds: no token shards .*run 'foundry data tokenize .*ds --tokenizer TOK'"):
        TokenBlocks(tmp_path / "ds", "train", block_size=8, seed=0)


def test_truncated_shard_is_detected(tmp_path):
    make_dataset(tmp_path / "ds", n_train=30)
    assert cli(["tokenizer", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "tok"), "--vocab-size", "280"]) == 0
    assert cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(tmp_path / "tok"), "--workers", "1",
                "--no-progress"]) == 0
    shard = Path(load_token_index(tmp_path / "ds")["dir"]) / "train_0000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="train_0000.bin: holds"):
        TokenBlocks(tmp_path / "ds", "train", block_size=8, seed=0)


def test_worker_count_does_not_change_the_shards_and_bad_records_are_named(built, tmp_path, capsys):
    root, _ = built
    make_dataset(tmp_path / "ds", n_train=120)  # the same texts as `built` (same seed)
    assert cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(root / "tok"), "--workers", "1",
                "--shard-tokens", "997", "--no-progress"]) == 0
    mine, theirs = (Path(load_token_index(d)["dir"]) for d in (root / "ds", tmp_path / "ds"))
    assert mine.name == theirs.name  # the same tokenizer's folder
    for shard in mine.glob("train_0000.bin"):  # the first 120 documents are the same
        assert (theirs / shard.name).read_bytes() == shard.read_bytes()
    with open(tmp_path / "ds" / "val.jsonl", "a") as f:
        f.write('{"id": "x", "source": "y"}\n')
    code = cli(["data", "tokenize", str(tmp_path / "ds"), "--tokenizer", str(root / "tok"), "--overwrite",
                "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "val.jsonl:13: not a dataset record" in err and err.count("\n") == 1
    assert (theirs / "index.json").is_file()  # the old shards survive the failed rewrite
