"""`foundry data tokenize` on the engine: encode (tasks over byte ranges of each split) and shard (one task),
the same shards as the single-process path (`foundry.data.shards.tokenize_dataset`), byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundry.data.engine.steps import FinalStep, Step, make_executor, run_logged, task_dir
from foundry.data.shard_files import ShardWriter, tokenizer_key, write_token_index

# 1 encode (task = a byte range of train.jsonl or val.jsonl, cut at line starts): tokens, <|endoftext|>
#   after each document, into one part file
# 2 shard  (one task): the parts of each split, in order, cut into {split}_NNNN.bin of --shard-tokens:
#   one token stream per split, so the shards are the single-process path's, byte for byte, at any
#   number of tasks; index.json and run.json as `foundry.data.shards.tokenize_dataset` writes them
PART_BYTES = 64 << 20  # an encode task's share of a split file
MIN_PART_BYTES = 64 << 10  # smaller splits are not worth another task


@dataclass
class TokenizeJob:
    dataset: str
    tokenizer: str  # tokenizer.json
    work: str
    index: dict  # dtype, tokenizer and manifest hashes; the splits are filled in by the shard stage
    parts: list[tuple[str, int, int]]  # (split, first byte, end byte)
    shard_tokens: int
    overwrite: bool = False
    record_config: dict = field(default_factory=dict)
    started: float = 0.0
    out: str = ""  # the keyed tokens folder, DATASET/tokens/<sha256[:16]>
    tokenizer_source: str = ""  # the tokenizer as the user named it (for run.json)


def _line_number(path: Path, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (only to name a bad line in an error)."""
    count = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


class EncodeStep(Step):
    stage = "encode"

    def where(self, rank):
        split, start, _ = self.job.parts[rank]
        return f"{Path(self.job.dataset) / f'{split}.jsonl'} (bytes from {start})"

    def run_task(self, rank, world_size):
        from foundry.data.tokenizer import Tokenizer, record_text

        job = self.job
        split, start, end = job.parts[rank]
        src = Path(job.dataset) / f"{split}.jsonl"
        if world_size > 1:  # one process per task already; no nested Rust threads fighting over the cores
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tok = Tokenizer.load(job.tokenizer)
        dtype = np.dtype(job.index["dtype"])
        counts = Counter()
        with task_dir(Path(job.work) / "encode" / f"{rank:05d}") as tmp, open(tmp / "tokens.bin", "wb") as out, \
                open(src, "rb") as f:
            f.seek(max(0, start - 1))
            if start > 0 and f.read(1) != b"\n":
                f.readline()  # a line belongs to the task holding its first byte
            texts: list[str] = []

            def flush():
                ids = tok.encode_batch(texts)
                if ids:
                    np.concatenate([np.array(doc + [tok.eos_id], dtype=dtype) for doc in ids]).tofile(out)
                counts["tokens"] += sum(len(doc) + 1 for doc in ids)
                counts["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
                counts["documents"] += len(texts)
                texts.clear()

            while f.tell() < end:
                offset = f.tell()
                line = f.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                texts.append(record_text(line, lambda: f"{src}:{_line_number(src, offset)}"))
                if len(texts) == 256:
                    flush()
            flush()
            out.flush()
            os.fsync(out.fileno())
            (tmp / "counts.json").write_text(json.dumps(counts))


class ShardStep(FinalStep):
    stage = "shard"

    def run_task(self, rank, world_size):
        from foundry.utils.io import atomic_directory

        job = self.job
        index = json.loads(json.dumps(job.index))
        work = Path(job.work)
        dtype = np.dtype(index["dtype"])
        with atomic_directory(Path(job.out), overwrite=job.overwrite) as tmp:
            for split in ("train", "val"):
                info = {"tokens": 0, "documents": 0, "bytes": 0, "shards": []}
                writer = ShardWriter(tmp, split, job.shard_tokens, info["shards"])
                for rank_, (s, _, _) in enumerate(job.parts):
                    if s != split:
                        continue
                    part = work / "encode" / f"{rank_:05d}"
                    counts = json.loads((part / "counts.json").read_text())
                    for key in ("tokens", "documents", "bytes"):
                        info[key] += counts.get(key, 0)
                    tokens = np.memmap(part / "tokens.bin", dtype=dtype, mode="r") if counts.get("tokens") else []
                    for first in range(0, len(tokens), 1 << 24):  # bounded memory: 16M tokens at a time
                        writer.write(np.asarray(tokens[first:first + (1 << 24)]))
                writer.close()
                index["splits"][split] = info
            write_token_index(tmp, index, Path(job.dataset), job.tokenizer_source or job.tokenizer,
                              time.time() - job.started, job.record_config)
        (work / "index.json").write_text(json.dumps(index))


def tokenize_on_engine(dataset: Path, tok_file: str, index: dict, *, shard_tokens: int, workers: int,
                       executor: str = "local", options: dict | None = None, overwrite: bool = False,
                       record_config: dict | None = None, out: Path | None = None,
                       tokenizer_source: str = "") -> dict | None:
    """Run the two tokenize stages into `out` (default the keyed folder DATASET/tokens/<sha256[:16]>);
    returns the index (None when Slurm was only submitted)."""
    out = Path(out) if out is not None else dataset / "tokens" / tokenizer_key(index["tokenizer_sha256"])
    parts = []
    for split in ("train", "val"):
        size = (dataset / f"{split}.jsonl").stat().st_size
        n = max(1, min(max(workers, -(-size // PART_BYTES)), size // MIN_PART_BYTES))
        parts += [(split, size * k // n, size * (k + 1) // n) for k in range(n)]
    work = out.with_name(f".{out.name}.work")  # one per tokenizer, so two can tokenise the dataset at once
    work.parent.mkdir(parents=True, exist_ok=True)
    key = {"index": index, "parts": parts, "shard_tokens": shard_tokens}
    stamp = work / "job.json"
    if work.exists():
        try:
            same = json.loads(stamp.read_text()) == json.loads(json.dumps(key))
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(json.dumps(key))
    job = TokenizeJob(str(dataset), tok_file, str(work), index, parts, shard_tokens, overwrite,
                      record_config or {}, started=time.time(), out=str(out), tokenizer_source=tokenizer_source)
    options = dict(options or {})
    encode = make_executor(executor, [EncodeStep(job)], len(parts), workers, work / "logs" / "encode", None, options)
    shard = make_executor(executor, [ShardStep(job)], 1, workers, work / "logs" / "shard", encode, options)
    run_logged([encode, shard], work)
    if executor == "slurm":
        return None
    result = json.loads((work / "index.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return result
