"""Packed token shards: `foundry data tokenize` writes them, `TokenBlocks` serves training blocks from them.

Layout (docs/ARCHITECTURE.md): `DIR/tokens/{split}_{k:04d}.bin` are raw little-endian uint16 (uint32 when
the vocabulary does not fit) token ids, every document followed by `<|endoftext|>`, so a split is one
long token stream cut into shards; `DIR/tokens/index.json` says which files hold how many tokens.

Sampling: each epoch the stream is cut into non-overlapping windows of block_size + 1 tokens (start
phase drawn per epoch from the seed, so block boundaries move between epochs) and the windows are
visited in a seeded permutation. The position is just (epoch, cursor), so a resume is exact and costs
nothing; each step consumes world_size * batch_size windows and rank r takes its own contiguous slice,
so ranks never share a window and the global batch is the same whatever the world size.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from foundry.data.tokenizer import record_text
from foundry.errors import DataError

DEFAULT_SHARD_TOKENS = 1 << 27  # 128M tokens: 256 MB per uint16 shard


def _tokens_dir(path: str | Path) -> Path:
    """Accept the dataset directory or its `tokens/` subdirectory."""
    path = Path(path)
    if (path / "index.json").is_file():
        return path
    if (path / "tokens" / "index.json").is_file():
        return path / "tokens"
    raise DataError(f"{path}: no token shards (tokens/index.json); run 'foundry data tokenize {path} --tokenizer TOK'")


def load_token_index(path: str | Path) -> dict:
    """Read and check `index.json`: every shard exists and holds exactly the tokens the index says."""
    tdir = _tokens_dir(path)
    file = tdir / "index.json"
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not valid JSON ({exc})") from None
    for key in ("dtype", "tokenizer_sha256", "eos_id", "vocab_size", "splits"):
        if key not in index:
            raise DataError(f"{file}: missing key '{key}'; re-run 'foundry data tokenize'")
    itemsize = np.dtype(index["dtype"]).itemsize
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            f = tdir / shard["file"]
            if not f.is_file():
                raise DataError(f"{f}: shard listed in {file} is missing")
            if f.stat().st_size != shard["tokens"] * itemsize:
                raise DataError(f"{f}: holds {f.stat().st_size // itemsize} tokens but {file} says "
                                f"{shard['tokens']}; the shard is truncated or stale, re-run 'foundry data tokenize'")
    index["dir"] = str(tdir)
    return index


def check_tokenizer_matches(shard_dir: str | Path, tokenizer) -> None:
    """Refuse shards made with a different tokenizer: their ids would mean other tokens to the model."""
    index = load_token_index(shard_dir)
    if index["tokenizer_sha256"] != tokenizer.sha256:
        raise DataError(f"{_tokens_dir(shard_dir)}: tokenised with tokenizer {index['tokenizer_sha256'][:12]}, "
                        f"but the model's tokenizer is {tokenizer.sha256[:12]}; re-run "
                        f"'foundry data tokenize {Path(shard_dir)} --tokenizer <the checkpoint> --overwrite'")


class TokenStream:
    """One split's shards as a single read-only token array (memory-mapped, never loaded whole)."""

    def __init__(self, shard_dir: str | Path, split: str):
        index = load_token_index(shard_dir)
        if split not in index["splits"]:
            raise DataError(f"{index['dir']}: no split '{split}' (have {', '.join(index['splits'])})")
        self.index = index
        self.info = index["splits"][split]
        tdir = Path(index["dir"])
        dtype = np.dtype(index["dtype"])
        self.shards = [np.memmap(tdir / s["file"], dtype=dtype, mode="r") for s in self.info["shards"] if s["tokens"]]
        # starts[k] is the stream position of shard k's first token.
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.num_tokens = int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, stitched across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.starts[k])
            take = min(length - filled, len(self.shards[k]) - offset)
            out[filled:filled + take] = self.shards[k][offset:offset + take]
            filled += take
            k += 1
        return out


class TokenBlocks:
    """Training and validation blocks from packed shards: (input_ids, targets) of block_size tokens."""

    def __init__(self, shard_dir: str | Path, split: str, block_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise DataError(f"TokenBlocks: rank {rank} is not in [0, world_size={world_size})")
        self.stream = TokenStream(shard_dir, split)
        self.shard_dir, self.split, self.block_size, self.seed = str(shard_dir), split, block_size, seed
        self.rank, self.world_size = rank, world_size
        self.window = block_size + 1  # inputs are window[:-1], targets window[1:]
        self.num_windows = self.stream.num_tokens // self.window
        if self.num_windows < 1:
            raise DataError(f"{shard_dir}: split '{split}' has {self.stream.num_tokens} tokens, fewer than one "
                            f"block of {block_size}+1; use a smaller block_size or add data to this dataset")
        self.slack = self.stream.num_tokens - self.num_windows * self.window
        self.epoch, self.cursor = 0, 0  # cursor counts windows consumed (by all ranks) in this epoch
        self._order_epoch, self._order, self._phase = -1, None, 0

    # ---- sampling -----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int):
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, epoch])  # any int seed, negative too
            self._phase = int(rng.integers(0, self.slack + 1))
            self._order = rng.permutation(self.num_windows)
            self._order_epoch = epoch
        return self._order, self._phase

    def _window_starts(self, count: int) -> list[int]:
        """Advance the shared position by `count` windows; return their stream offsets."""
        starts = []
        while len(starts) < count:
            order, phase = self._epoch_order(self.epoch)
            take = min(count - len(starts), self.num_windows - self.cursor)
            starts += (phase + order[self.cursor:self.cursor + take] * self.window).tolist()
            self.cursor += take
            if self.cursor == self.num_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
        return starts

    def _batch(self, starts: list[int]) -> dict:
        import torch

        windows = np.empty((len(starts), self.window), dtype=np.int64)  # (B, T+1)
        for row, start in enumerate(starts):
            windows[row] = self.stream.read(start, self.window)
        windows = torch.from_numpy(windows)
        return {"input_ids": windows[:, :-1].contiguous(), "targets": windows[:, 1:].contiguous()}

    def next_batch(self, batch_size: int) -> dict:
        """{"input_ids": (B,T) int64, "targets": (B,T) int64}; rank r gets slice r of the global draw."""
        starts = self._window_starts(batch_size * self.world_size)
        mine = starts[self.rank * batch_size:(self.rank + 1) * batch_size]
        return self._batch(mine)

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        """Fixed sequential blocks from the start of the split, the same every call and on every rank.

        Every rank sees the same blocks, so each computes the full validation loss and all agree on it
        (best-checkpoint choices never diverge between ranks).
        """
        n = self.num_windows if max_batches is None else min(self.num_windows, max_batches * batch_size)
        for first in range(0, n, batch_size):
            yield self._batch([i * self.window for i in range(first, min(first + batch_size, n))])

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain ints only, so it survives torch.save / torch.load(weights_only=True) and JSON."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "block_size": self.block_size,
                "num_tokens": self.stream.num_tokens, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "block_size", "num_tokens", "split"):
            mine = getattr(self, key) if key != "num_tokens" else self.stream.num_tokens
            if key in state and state[key] != mine:
                raise DataError(f"{self.shard_dir}: cannot resume: the saved data position has {key}={state[key]!r} "
                                f"but this run has {mine!r} (the dataset or recipe changed)")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    @property
    def tokens_per_epoch(self) -> int:
        return self.num_windows * self.block_size

    def __repr__(self) -> str:
        return (f"TokenBlocks({self.shard_dir!r}, {self.split!r}, block_size={self.block_size}, "
                f"tokens={self.stream.num_tokens}, rank={self.rank}/{self.world_size})")


# ---- foundry data tokenize --------------------------------------------------------------------
_worker_tokenizer = None


def _init_worker(tokenizer_path: str, in_pool: bool = True) -> None:
    global _worker_tokenizer
    from foundry.data.tokenizer import Tokenizer

    if in_pool:  # one process per core already; no nested Rust threads fighting over the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = Tokenizer.load(tokenizer_path)


def _encode_chunk(task: tuple[list[str], str, int]) -> tuple[np.ndarray, int, int, int]:
    """Encode documents, <|endoftext|> after each -> (tokens, text utf-8 bytes, documents, jsonl bytes read)."""
    texts, dtype, raw_bytes = task
    tok = _worker_tokenizer
    ids = tok.encode_batch(texts)
    eos = tok.eos_id
    flat = np.concatenate([np.array(doc + [eos], dtype=dtype) for doc in ids]) if ids else np.empty(0, dtype)
    return flat, sum(len(t.encode("utf-8")) for t in texts), len(texts), raw_bytes


def _read_chunks(path: Path, dtype: str, chunk_docs: int) -> Iterator[tuple[list[str], str, int]]:
    """Chunks of document texts from a prepared split, with the raw bytes they span (for the progress bar)."""
    chunk: list[str] = []
    raw = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            raw += len(line)
            if not line.strip():
                continue
            chunk.append(record_text(line, f"{path}:{lineno}"))
            if len(chunk) == chunk_docs:
                yield chunk, dtype, raw
                chunk, raw = [], 0
    if chunk or raw:
        yield chunk, dtype, raw


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


def tokenize_split(dataset: Path, split: str, tokenizer_path: str, out_dir: Path, dtype: str, workers: int,
                   shard_tokens: int, progress: bool = True) -> dict:
    """Tokenise DATASET/{split}.jsonl into out_dir/{split}_NNNN.bin with `workers` processes."""
    from tqdm import tqdm

    src = dataset / f"{split}.jsonl"
    total_bytes = src.stat().st_size
    info = {"tokens": 0, "documents": 0, "bytes": 0, "shards": []}
    shards = ShardWriter(out_dir, split, shard_tokens, info["shards"])
    chunks = _read_chunks(src, dtype, chunk_docs=256)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize {split}", disable=not progress,
               file=sys.stderr)
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (tokenizer_path,))
        results = pool.imap(_encode_chunk, chunks, chunksize=1)  # ordered: shards keep document order
    else:
        pool = None
        _init_worker(tokenizer_path, in_pool=False)
        results = map(_encode_chunk, chunks)
    try:
        for tokens, nbytes, ndocs, raw_bytes in results:
            shards.write(tokens)
            info["tokens"] += len(tokens)
            info["bytes"] += nbytes
            info["documents"] += ndocs
            bar.update(raw_bytes)
    finally:
        if pool is not None:
            pool.terminate()
        shards.close()
        bar.close()
    return info


def write_token_index(tmp: Path, index: dict, dataset: Path, tok_file: str, seconds: float,
                      record_config: dict) -> None:
    """index.json and run.json beside the shards (the splits' entries already in `index`)."""
    from foundry.utils.io import atomic_write_json, write_run_record

    total = sum(s["tokens"] for s in index["splits"].values())
    index["seconds"] = round(seconds, 3)
    atomic_write_json(tmp / "index.json", index)
    write_run_record(tmp, "tokenize", record_config,
                     parents={"dataset": str(dataset.resolve()), "tokenizer": str(Path(tok_file).resolve()),
                              "tokenizer_sha256": index["tokenizer_sha256"]},
                     data_manifests={dataset.name: index["manifest_sha256"]},
                     results={"tokens": total, "seconds": round(seconds, 3),
                              "tokens_per_second": round(total / max(seconds, 1e-9))})


def tokenize_dataset(dataset: str | Path, tokenizer: str | Path, workers: int = 1,
                     shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False, progress: bool = True,
                     record_config: dict | None = None, executor: str = "inline",
                     options: dict | None = None) -> dict | None:
    """Tokenise a prepared dataset's splits into `DATASET/tokens` (index.json + shards + run.json); returns
    the index, or None when the shards already hold this dataset under this tokenizer.

    `executor` "inline" is the single-machine path (a process pool of `workers`); "local", "slurm" or
    "ray" run it on the datatrove engine (foundry.data.engine), with the same shards byte for byte."""
    from foundry.data.prepare import dataset_manifest
    from foundry.data.tokenizer import Tokenizer
    from foundry.utils.io import atomic_directory, sha256_file

    dataset = Path(dataset)
    manifest = dataset_manifest(dataset)
    tok = Tokenizer.load(tokenizer)
    tok_file = str(Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer))
    manifest_sha = sha256_file(manifest)
    out = dataset / "tokens"
    if (out / "index.json").is_file() and not overwrite:
        old = json.loads((out / "index.json").read_text(encoding="utf-8"))
        if old.get("tokenizer_sha256") == tok.sha256 and old.get("manifest_sha256") == manifest_sha:
            return None
        raise DataError(f"{out}: holds shards from a different tokenizer or dataset; pass --overwrite to replace them")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be positive, got {shard_tokens}")

    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    index = {"dtype": dtype, "tokenizer_sha256": tok.sha256, "eos_id": tok.eos_id, "vocab_size": tok.vocab_size,
             "manifest_sha256": manifest_sha, "splits": {}}
    if executor != "inline":
        from foundry.data.engine import tokenize_on_engine

        return tokenize_on_engine(dataset, tok_file, index, shard_tokens=shard_tokens, workers=workers,
                                  executor=executor, options=options, overwrite=overwrite,
                                  record_config=record_config or {"dataset": str(dataset), "tokenizer": str(tokenizer)})
    t0 = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for split in ("train", "val"):
            index["splits"][split] = tokenize_split(dataset, split, tok_file, tmp, dtype, max(1, workers),
                                                    shard_tokens, progress=progress)
        write_token_index(tmp, index, dataset, tok_file, time.perf_counter() - t0,
                          record_config or {"dataset": str(dataset), "tokenizer": str(tokenizer)})
    return index
