"""Tiny generated corpora, tokenizers and token shards for the training and generation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the lord said unto moses and aaron , go forth into the land which i give thee ; and they went "
         "up out of egypt with all their flocks and herds . in the beginning god created the heaven and "
         "the earth").split()


def make_texts(n_docs: int, seed: int = 0, words_per_doc: int = 60) -> list[str]:
    """Documents made of corpus phrases: predictable enough that a tiny model's loss falls fast."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        start = rng.randrange(len(WORDS))
        words = [WORDS[(start + i) % len(WORDS)] if rng.random() > 0.1 else rng.choice(WORDS)
                 for i in range(words_per_doc)]
        docs.append(" ".join(words))
    return docs


def make_dataset(root: Path, n_train: int = 60, n_val: int = 8, vocab_size: int = 300, seed: int = 0,
                 texts: tuple[list[str], list[str]] | None = None) -> dict:
    """A dataset dir with tokens/ and a tokenizer dir (generated texts, or `texts` = (train, val))."""
    from foundry.commands.data import tokenize_main
    from foundry.data.tokenizer import Tokenizer

    root = Path(root)
    dataset, tok_dir = root / "dataset", root / "tokenizer"
    dataset.mkdir(parents=True)
    train, val = texts if texts is not None else (make_texts(n_train, seed), make_texts(n_val, seed + 1))
    for split, texts in (("train", train), ("val", val)):
        with open(dataset / f"{split}.jsonl", "w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": f"{split}-{i}", "source": "generated", "text": text}) + "\n")
    (dataset / "manifest.json").write_text(json.dumps({"sources": ["generated"], "seed": seed}))
    tokenizer = Tokenizer.train(train, vocab_size=vocab_size, min_frequency=1)
    tokenizer.save(tok_dir)
    tokenize_main([str(dataset), "--tokenizer", str(tok_dir), "--workers", "1", "--no-progress"])
    return {"dataset": dataset, "tokenizer": tok_dir}


def write_recipe(path: Path, data: dict, out_dir: Path, **train) -> Path:
    """A tiny pretraining recipe over `data` (from make_dataset)."""
    import yaml

    train_cfg = dict(max_steps=12, micro_batch_size=4, block_size=32, lr=3e-3, warmup_steps=2, eval_every=6,
                     eval_batches=2, log_every=1, checkpoint_every=3, keep_last=2, threads=1, progress=False)
    train_cfg.update(train)
    recipe = {"out_dir": str(out_dir), "data": str(data["dataset"]), "tokenizer": str(data["tokenizer"]),
              "model": {"preset": "test"}, "train": train_cfg}
    path.write_text(yaml.safe_dump(recipe))
    return path
