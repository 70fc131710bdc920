"""The files of one tokens folder (the layout in `foundry.data.shards`' docstring), as both writers make them,
the single-process `tokenize_dataset` and the engine's shard stage: the folder's name, the shard files cut
from a split's token stream, and `index.json` + `run.json` beside them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from foundry.utils.io import atomic_write_json, write_run_record

KEY_CHARS = 16  # hex characters of the tokenizer's sha256 that name its shard folder


def tokenizer_key(sha256: str) -> str:
    """The folder name of a tokenizer's shards inside DATASET/tokens/."""
    return sha256[:KEY_CHARS]


class ShardWriter:
    """Cuts one split's token stream into `{split}_NNNN.bin` files of `shard_tokens` tokens (the last shorter),
    listing each in `shards` ({"file", "tokens"}) as the index records them."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, shards: list[dict]):
        self.out_dir, self.split, self.shard_tokens, self.shards = out_dir, split, shard_tokens, shards
        self.file, self.count = None, 0

    def _close_file(self):
        self.file.flush()
        os.fsync(self.file.fileno())  # on disk before the tokens/ directory is renamed into place
        self.file.close()
        self.file = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.file is None or self.count == self.shard_tokens:
                if self.file is not None:
                    self._close_file()
                name = f"{self.split}_{len(self.shards):04d}.bin"
                self.shards.append({"file": name, "tokens": 0})
                self.file, self.count = open(self.out_dir / name, "wb"), 0
            take = min(len(tokens), self.shard_tokens - self.count)
            tokens[:take].tofile(self.file)
            self.count += take
            self.shards[-1]["tokens"] += take
            tokens = tokens[take:]

    def close(self) -> None:
        if self.file is not None:
            self._close_file()


def write_token_index(tmp: Path, index: dict, dataset: Path, tok_file: str, seconds: float,
                      record_config: dict) -> None:  # tok_file: the tokenizer as the user named it
    """index.json and run.json beside the shards (the splits' entries already in `index`)."""
    total = sum(s["tokens"] for s in index["splits"].values())
    index["seconds"] = round(seconds, 3)
    atomic_write_json(tmp / "index.json", index)
    write_run_record(tmp, "tokenize", record_config,
                     parents={"dataset": str(dataset.resolve()), "tokenizer": str(Path(tok_file).resolve()),
                              "tokenizer_sha256": index["tokenizer_sha256"]},
                     data_manifests={dataset.name: index["manifest_sha256"]},
                     results={"tokens": total, "seconds": round(seconds, 3),
                              "tokens_per_second": round(total / max(seconds, 1e-9))})
