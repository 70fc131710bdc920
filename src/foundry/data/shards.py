"""Packed token shards: `foundry data tokenize` writes them, `TokenBlocks` serves training blocks from them.

Layout (docs/ARCHITECTURE.md, docs/DATA.md): one dataset holds shards for several tokenizers side by side,
one folder each, named by the tokenizer's hash: `DIR/tokens/<sha256[:16]>/{split}_{k:04d}.bin` are raw
little-endian uint16 (uint32 when the vocabulary does not fit) token ids, every document followed by
`<|endoftext|>`, so a split is one long token stream cut into shards; `index.json` beside them says which
files hold how many tokens and the full `tokenizer_sha256`. The earlier single layout (`DIR/tokens/index.json`
and its shards directly in `tokens/`) is still read. Readers name the model's tokenizer (`token_dir`), so
each model reads the shards of its own tokenizer and an absent one is a one-line error naming the command.

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

from foundry.data.shard_files import ShardWriter, tokenizer_key, write_token_index
from foundry.data.tokenizer import record_text
from foundry.errors import DataError

DEFAULT_SHARD_TOKENS = 1 << 27  # 128M tokens: 256 MB per uint16 shard


def _sha256_of(tokenizer) -> str | None:
    """A Tokenizer's hash, or a hash given as a string (None: any tokenizer)."""
    return tokenizer if isinstance(tokenizer, str) or tokenizer is None else tokenizer.sha256


def token_sets(path: str | Path) -> list[tuple[Path, str | None]]:
    """Every tokens folder under a dataset (or under its `tokens/`), with the tokenizer sha256 its
    index.json records (None when unreadable): the keyed folders first, then the earlier single layout."""
    path = Path(path)
    root = path if (path / "index.json").is_file() or path.name == "tokens" else path / "tokens"
    found = [d for d in sorted(root.iterdir()) if not d.name.startswith(".") and (d / "index.json").is_file()] \
        if root.is_dir() else []  # dot folders are writes in progress (atomic_directory, the engine's work)
    if (root / "index.json").is_file():
        found.append(root)  # DATASET/tokens/index.json: the layout before keyed folders
    out = []
    for d in found:
        try:
            sha = json.loads((d / "index.json").read_text(encoding="utf-8")).get("tokenizer_sha256")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            sha = None
        out.append((d, sha if isinstance(sha, str) else None))
    return out


def find_token_dir(path: str | Path, tokenizer) -> Path | None:
    """The tokens folder made with `tokenizer` (a Tokenizer or its sha256), else None."""
    sha = _sha256_of(tokenizer)
    sets = token_sets(path)
    if sha is None:
        return sets[0][0] if len(sets) == 1 else None
    return next((d for d, s in sets if s == sha), None)


def token_dir(path: str | Path, tokenizer=None) -> Path:
    """The shards of `path` (a dataset, its `tokens/` or one tokens folder) for `tokenizer` (a Tokenizer or
    its sha256; None: the only set there is). Absent or other tokenizers' shards: a one-line DataError
    naming the dataset and the command to run."""
    path = Path(path)
    sha = _sha256_of(tokenizer)
    found = find_token_dir(path, sha)
    if found is not None:
        return found
    sets = token_sets(path)
    dataset = path.parent if path.name == "tokens" else path
    if not sets:
        raise DataError(f"{path}: no token shards (tokens/<tokenizer>/index.json); run 'foundry data tokenize "
                        f"{dataset} --tokenizer {'TOK' if sha is None else '<the model>'}'")
    have = ", ".join(s[:12] if s else f"{d.name} (unreadable index)" for d, s in sets)
    if sha is None:
        raise DataError(f"{path}: holds token shards for {len(sets)} tokenizers ({have}); name the model's "
                        "tokenizer to choose")
    raise DataError(f"{dataset}: tokenised with tokenizer {have} only, but the model's tokenizer is {sha[:12]}; "
                    f"run 'foundry data tokenize {dataset} --tokenizer <the model>' (its shards go beside the others)")


def load_token_index(path: str | Path, tokenizer=None) -> dict:
    """Read and check the `index.json` of `token_dir(path, tokenizer)`: every shard exists and holds exactly
    the tokens the index says. `index["dir"]` is the folder read."""
    tdir = token_dir(path, tokenizer)
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


def check_tokenizer_matches(shard_dir: str | Path, tokenizer) -> Path:
    """The shards of `shard_dir` made with the model's `tokenizer` (their ids mean the model's tokens);
    a one-line DataError when the dataset has none. Returns the tokens folder to read."""
    return token_dir(shard_dir, tokenizer)


class TokenStream:
    """One split's shards as a single read-only token array (memory-mapped, never loaded whole)."""

    def __init__(self, shard_dir: str | Path, split: str, tokenizer=None):
        index = load_token_index(shard_dir, tokenizer)
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
                 world_size: int = 1, tokenizer=None):
        if not 0 <= rank < world_size:
            raise DataError(f"TokenBlocks: rank {rank} is not in [0, world_size={world_size})")
        self.stream = TokenStream(shard_dir, split, tokenizer)
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

    def step_metrics(self, steps: int, optimise_s: float) -> dict:
        """Nothing of its own to log (the `BatchSource` hook; foundry.train.objectives)."""
        return {}

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


def tokenize_dataset(dataset: str | Path, tokenizer, workers: int = 1,
                     shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False, progress: bool = True,
                     record_config: dict | None = None, executor: str = "inline",
                     options: dict | None = None, tokenizer_source: str | None = None) -> dict | None:
    """Tokenise a prepared dataset's splits into `DATASET/tokens/<sha256[:16]>/` (index.json + shards + run.json)
    beside any other tokenizer's shards; returns the index, or None when this dataset already holds shards of
    this tokenizer (in its keyed folder, or in the earlier single `tokens/` layout).

    `tokenizer` is a path `Tokenizer.load` reads, or a `Tokenizer` (an imported model's: it is written to a
    temporary folder for the workers); `tokenizer_source` is what run.json names as its origin. `executor`
    "inline" is the single-machine path (a process pool of `workers`); "local", "slurm" or "ray" run it on the
    datatrove engine (foundry.data.engine), with the same shards byte for byte."""
    import shutil

    from foundry.data.prepare import dataset_manifest
    from foundry.data.tokenizer import Tokenizer
    from foundry.utils.io import atomic_directory, sha256_file

    dataset = Path(dataset)
    manifest = dataset_manifest(dataset)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    manifest_sha = sha256_file(manifest)
    key = tokenizer_key(tok.sha256)
    out = dataset / "tokens" / key
    for existing, sha in token_sets(dataset):
        if sha != tok.sha256 or (existing != out and overwrite):
            continue  # another tokenizer's shards are never touched; --overwrite writes the keyed folder
        old = json.loads((existing / "index.json").read_text(encoding="utf-8"))
        if old.get("manifest_sha256") == manifest_sha and not overwrite:
            return None
        if not overwrite:
            raise DataError(f"{existing}: holds this tokenizer's shards of an earlier version of the dataset; "
                            "pass --overwrite to replace them")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be positive, got {shard_tokens}")

    staged = None
    if isinstance(tokenizer, Tokenizer):  # the workers load the tokenizer from a path: give them one
        staged = dataset / "tokens" / f".{key}.tokenizer"
        shutil.rmtree(staged, ignore_errors=True)
        tok.save(staged)
        tok_file = str(staged / "tokenizer.json")
    else:
        tok_file = str(Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer))
    source = tokenizer_source or tok_file
    record_config = record_config or {"dataset": str(dataset), "tokenizer": tokenizer_source or str(tokenizer)}
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    index = {"dtype": dtype, "tokenizer_sha256": tok.sha256, "eos_id": tok.eos_id, "vocab_size": tok.vocab_size,
             "manifest_sha256": manifest_sha, "splits": {}}
    try:
        if executor != "inline":
            from foundry.data.engine.tokenize import tokenize_on_engine

            return tokenize_on_engine(dataset, tok_file, index, shard_tokens=shard_tokens, workers=workers,
                                      executor=executor, options=options, overwrite=overwrite,
                                      record_config=record_config, out=out, tokenizer_source=source)
        t0 = time.perf_counter()
        with atomic_directory(out, overwrite=overwrite) as tmp:
            for split in ("train", "val"):
                index["splits"][split] = tokenize_split(dataset, split, tok_file, tmp, dtype, max(1, workers),
                                                        shard_tokens, progress=progress)
            write_token_index(tmp, index, dataset, source, time.perf_counter() - t0, record_config)
        return index
    finally:
        if staged is not None and executor != "slurm":  # submitted Slurm tasks still read it
            shutil.rmtree(staged, ignore_errors=True)
