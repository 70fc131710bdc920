"""`foundry data prepare` on the engine: the five stages (read, match, resolve, write, merge) of the package
docstring, each document judged by `foundry.data.prepare.clean_document`, the single-process path's rules."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from foundry.data.engine.steps import FinalStep, Step, make_executor, run_logged, save_npy, task_dir

ORDER_SHIFT = 40  # documents per file < 2**40; files < 2**23
EXACT_DTYPE = np.dtype([("key", "S16"), ("order", "<i8")])
BAND_DTYPE = np.dtype([("band", "<u2"), ("key", "<u8"), ("doc", "<u8"), ("order", "<i8")])
PAIR_DTYPE = np.dtype([("first", "<i8"), ("second", "<i8")])


@dataclass
class PrepareJob:
    """Everything a task needs, picklable (it travels to worker processes, Slurm jobs or Ray actors)."""
    sources: list[dict]  # {"path", "format", "provenance", "group"}
    out: str
    work: str
    text_field: str = "text"
    txt_split: str | None = None
    min_chars: int = 100
    val_fraction: float = 0.02
    near_dup_threshold: float = 0.8
    on_bad_utf8: str = "error"
    eval_paths: list[str] = field(default_factory=list)
    eval_files: list[dict] = field(default_factory=list)  # the manifest's entries (Decontaminator.files)
    ngram: int = 13
    buckets: int = 16
    fingerprint: str = ""
    overwrite: bool = False
    extra_settings: dict = field(default_factory=dict)
    started: float = 0.0

    def source(self, rank: int):
        from foundry.data.sources import SourceFile

        s = self.sources[rank]
        return SourceFile(Path(s["path"]), s["format"], s["provenance"], s["group"])

    @property
    def near(self) -> bool:
        return self.near_dup_threshold < 1


# ---- helpers ----------------------------------------------------------------------------------------
def save_bucketed(folder: Path, name: str, rows: np.ndarray, bucket: np.ndarray, buckets: int) -> None:
    """Rows sorted by bucket in one file plus the offsets of each bucket: two files per task, not B
    (datatrove's dedup stages write sorted files for the same reason)."""
    order = np.argsort(bucket, kind="stable")
    save_npy(folder / f"{name}.npy", rows[order])
    save_npy(folder / f"{name}_offsets.npy", np.searchsorted(bucket[order], np.arange(buckets + 1)).astype(np.int64))


def bucket_rows(folder: Path, name: str, bucket: int) -> np.ndarray:
    offsets = np.load(folder / f"{name}_offsets.npy")
    return np.array(np.load(folder / f"{name}.npy", mmap_mode="r")[offsets[bucket]:offsets[bucket + 1]])


_lsh_cache: dict = {}


def lsh_layout(threshold: float):
    """(NearDeduplicator, bands, rows per band) exactly as the single-process path builds them."""
    if threshold not in _lsh_cache:
        from foundry.data.dedup import NearDeduplicator

        near = NearDeduplicator(threshold)
        _lsh_cache[threshold] = (near, *near.bands)
    return _lsh_cache[threshold]


_decon_cache: dict = {}


def _decontaminator(paths: list[str], n: int):
    key = (tuple(paths), n)
    if key not in _decon_cache:
        from foundry.data.decontam import Decontaminator

        _decon_cache.clear()
        _decon_cache[key] = Decontaminator(paths, n) if paths else None
    return _decon_cache[key]


# ---- stage 1: read, clean, hash, contamination, signatures --------------------------------------------
class _PerSourceStep(Step):
    """A stage with one task per source file: a failure names that file."""

    def where(self, rank):
        return self.job.sources[rank]["path"]


class ReadStep(_PerSourceStep):
    stage = "read"

    def run_task(self, rank, world_size):
        from foundry.data.prepare import clean_document
        from foundry.data.sources import ReadStats, read_documents
        from foundry.utils.io import sha256_file

        job = self.job
        src = job.source(rank)
        layout = job.txt_split or src.provenance.get("txt_split") or "file"
        decon = _decontaminator(job.eval_paths, job.ngram)
        near, bands, rows = lsh_layout(job.near_dup_threshold) if job.near else (None, 0, 0)
        stats, counts = ReadStats(), Counter()
        exact_keys, band_rows, sigs, sig_orders = [], [], [], []
        with task_dir(Path(job.work) / "read" / f"{rank:05d}") as tmp:
            with open(tmp / "docs.jsonl", "w", encoding="utf-8") as docs:
                for index, raw in enumerate(read_documents(src, job.text_field, layout, job.on_bad_utf8, stats)):
                    counts["read"] += 1
                    counts["text_bytes"] += len(raw.encode("utf-8"))
                    document = clean_document(raw, job.min_chars, job.val_fraction)
                    if document is None:
                        counts["too_short"] += 1
                        continue
                    order = rank << ORDER_SHIFT | index
                    digest = document.digest
                    exact_keys.append((digest, order))
                    # judged on every copy: which copy of an exact duplicate survives is known only in stage 2
                    contaminated = document.is_contaminated(decon)
                    if near is not None and not contaminated:
                        hv = near.signature(document.words).hashvalues.astype(np.uint32)  # values < 2**32 (datasketch)
                        doc = int.from_bytes(digest[:8], "little")
                        for b in range(bands):
                            key = int.from_bytes(hashlib.blake2b(hv[b * rows:(b + 1) * rows].tobytes(),
                                                                 digest_size=8).digest(), "little")
                            band_rows.append((b, key, doc, order))
                        sigs.append(hv)
                        sig_orders.append(order)
                    docs.write(json.dumps({"o": order, "id": digest.hex(), "split": document.split, "c": contaminated,
                                           "text": document.text}, ensure_ascii=False) + "\n")
            exact = np.array(exact_keys, dtype=EXACT_DTYPE)
            # bucket = the key's first 8 bytes modulo B (any B, not only up to 256)
            save_bucketed(tmp, "exact", exact, np.frombuffer(exact["key"].tobytes(), dtype=">u8")[::2] % job.buckets,
                          job.buckets)
            band = np.array(band_rows, dtype=BAND_DTYPE)
            save_bucketed(tmp, "band", band, band["key"] % job.buckets, job.buckets)
            save_npy(tmp / "sig.npy", np.array(sigs, dtype=np.uint32).reshape(len(sigs), near.num_perm if near else 0))
            save_npy(tmp / "sig_order.npy", np.array(sig_orders, dtype=np.int64))
            (tmp / "stats.json").write_text(json.dumps({
                "read": counts["read"], "text_bytes": counts["text_bytes"], "too_short": counts["too_short"],
                "undecodable_lines": stats.undecodable_lines, "sha256": sha256_file(src.path), "layout": layout}))


# ---- stage 2: exact groups and verified LSH candidates, per bucket ----------------------------------
class MatchStep(Step):
    stage = "match"

    def run_task(self, rank, world_size):
        job = self.job
        read = Path(job.work) / "read"
        n = len(job.sources)
        with task_dir(Path(job.work) / "match" / f"{rank:05d}") as tmp:
            exact = np.concatenate([bucket_rows(read / f"{r:05d}", "exact", rank) for r in range(n)])
            exact = exact[np.lexsort((exact["order"], exact["key"]))]
            later = np.zeros(len(exact), dtype=bool)
            later[1:] = exact["key"][1:] == exact["key"][:-1]  # not the first copy of its hash
            save_npy(tmp / "exact_drop.npy", np.sort(exact["order"][later]))
            del exact, later
            pairs = np.empty(0, dtype=PAIR_DTYPE)
            if job.near:
                pairs = self._near_pairs(read, n, rank)
            save_npy(tmp / "near_pairs.npy", pairs)

    def _near_pairs(self, read: Path, n: int, rank: int) -> np.ndarray:
        band = np.concatenate([bucket_rows(read / f"{r:05d}", "band", rank) for r in range(n)])
        if not len(band):
            return np.empty(0, dtype=PAIR_DTYPE)
        band = band[np.lexsort((band["order"], band["key"], band["band"]))]
        same = (band["band"][1:] == band["band"][:-1]) & (band["key"][1:] == band["key"][:-1])
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
        ends = np.append(starts[1:], len(band))
        groups, shared = [], ends - starts >= 2
        for s, e in zip(starts[shared], ends[shared]):
            group = band[s:e]
            # one member per content hash (the earliest): later copies are exact duplicates, never compared
            _, first = np.unique(group["doc"], return_index=True)
            if len(first) >= 2:
                groups.append(np.sort(group["order"][first]))
        del band
        if not groups:
            return np.empty(0, dtype=PAIR_DTYPE)
        signature = self._signatures(read, np.unique(np.concatenate(groups)))
        threshold = self.job.near_dup_threshold
        found = []
        for members in groups:
            sig = np.stack([signature[int(o)] for o in members])
            for i in range(len(members) - 1):
                # datasketch's MinHash.jaccard: the fraction of equal signature values
                sim = (sig[i + 1:] == sig[i]).mean(axis=1)
                for j in np.flatnonzero(sim >= threshold):
                    found.append((members[i], members[i + 1 + j]))
        return np.unique(np.array(found, dtype=PAIR_DTYPE)) if found else np.empty(0, dtype=PAIR_DTYPE)

    @staticmethod
    def _signatures(read: Path, orders: np.ndarray) -> dict[int, np.ndarray]:
        """The MinHash signatures of the candidate documents (sorted `orders`), read file by file and copied
        out, so the task holds only the candidates' rows, not pages of every source's signature file."""
        signatures = {}
        files = orders >> ORDER_SHIFT
        for r in np.unique(files):
            wanted = orders[files == r]
            index = np.searchsorted(np.load(read / f"{r:05d}" / "sig_order.npy"), wanted)
            rows = np.load(read / f"{r:05d}" / "sig.npy", mmap_mode="r")
            signatures.update(zip(wanted.tolist(), np.array(rows[index])))
            del rows
        return signatures


# ---- stage 3: resolve near pairs in input order ------------------------------------------------------
class ResolveStep(Step):
    stage = "resolve"

    def run_task(self, rank, world_size):
        job = self.job
        match = Path(job.work) / "match"
        with task_dir(Path(job.work) / "resolve") as tmp:
            drops = np.empty(0, dtype=np.int64)
            exact = np.sort(np.concatenate([np.load(match / f"{b:05d}" / "exact_drop.npy")
                                            for b in range(job.buckets)]))
            save_npy(tmp / "exact_drop.npy", exact)  # one sorted file: a write task reads its own range
            if job.near:
                pairs = np.unique(np.concatenate([np.load(match / f"{b:05d}" / "near_pairs.npy")
                                                  for b in range(job.buckets)]))
                drops = resolve_near_pairs(pairs, exact)
            save_npy(tmp / "near_drop.npy", drops)


def resolve_near_pairs(pairs: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Orders of the near duplicates: walking documents in input order, one is dropped when an earlier
    document that was kept (not excluded, not dropped) matches it; as NearDeduplicator does one at a time.
    `excluded` (sorted: exact duplicates) is applied with numpy first, so the walk holds only near drops."""
    pairs = pairs[~np.isin(pairs["first"], excluded) & ~np.isin(pairs["second"], excluded)]
    pairs = pairs[np.lexsort((pairs["first"], pairs["second"]))]
    dropped: set[int] = set()
    for first, second in zip(pairs["first"].tolist(), pairs["second"].tolist()):
        if second not in dropped and first not in dropped:
            dropped.add(second)
    return np.array(sorted(dropped), dtype=np.int64)


# ---- stage 4: per source, apply the decisions and write its part --------------------------------------
class WriteStep(_PerSourceStep):
    stage = "write"

    def run_task(self, rank, world_size):
        job = self.job
        work = Path(job.work)
        lo, hi = rank << ORDER_SHIFT, (rank + 1) << ORDER_SHIFT
        e = np.load(work / "resolve" / "exact_drop.npy", mmap_mode="r")
        exact = set(e[np.searchsorted(e, lo):np.searchsorted(e, hi)].tolist())
        n = np.load(work / "resolve" / "near_drop.npy", mmap_mode="r")
        near = set(n[np.searchsorted(n, lo):np.searchsorted(n, hi)].tolist())
        path = job.sources[rank]["path"]
        counts, dropped, chars = Counter(), Counter(), 0
        with task_dir(work / "write" / f"{rank:05d}") as tmp, \
                open(work / "read" / f"{rank:05d}" / "docs.jsonl", encoding="utf-8") as docs, \
                open(tmp / "train.jsonl", "w", encoding="utf-8") as train_f, \
                open(tmp / "val.jsonl", "w", encoding="utf-8") as val_f:
            for line in docs:
                d = json.loads(line)
                if d["o"] in exact:
                    dropped["exact_duplicate"] += 1
                elif d["c"]:
                    dropped["contaminated"] += 1
                elif d["o"] in near:
                    dropped["near_duplicate"] += 1
                else:
                    out = json.dumps({"id": d["id"], "source": path, "text": d["text"]}, ensure_ascii=False)
                    (val_f if d["split"] == "val" else train_f).write(out + "\n")
                    counts[d["split"]] += 1
                    chars += len(d["text"])
            (tmp / "counts.json").write_text(json.dumps({"counts": counts, "dropped": dropped, "chars": chars}))


# ---- stage 5: concatenate in source order, manifest, rename into place --------------------------------
class MergeStep(FinalStep):
    stage = "merge"

    def run_task(self, rank, world_size):
        from foundry.data.prepare import finish_dataset, source_record
        from foundry.utils.io import atomic_directory

        job = self.job
        work = Path(job.work)
        records = []
        for r in range(len(job.sources)):
            read = json.loads((work / "read" / f"{r:05d}" / "stats.json").read_text())
            wrote = json.loads((work / "write" / f"{r:05d}" / "counts.json").read_text())
            counts = Counter(wrote["counts"], read=read["read"])
            dropped = Counter(wrote["dropped"], too_short=read["too_short"])
            records.append(source_record(job.source(r), read["layout"], read["sha256"], read["text_bytes"],
                                         read["undecodable_lines"], counts, dropped, wrote["chars"]))
        cpu = sum(float(p.read_text()) for p in (work / "cpu").iterdir()) if (work / "cpu").is_dir() else 0.0
        with atomic_directory(job.out, overwrite=job.overwrite) as tmp:
            for split in ("train", "val"):
                with open(tmp / f"{split}.jsonl", "wb") as out:
                    for r in range(len(job.sources)):
                        with open(work / "write" / f"{r:05d}" / f"{split}.jsonl", "rb") as part:
                            shutil.copyfileobj(part, out, 1 << 22)
                    out.flush()
                    os.fsync(out.fileno())
            settings = {"text_field": job.text_field, "txt_split": job.txt_split, "min_chars": job.min_chars,
                        "val_fraction": job.val_fraction, "near_dup_threshold": job.near_dup_threshold,
                        "on_bad_utf8": job.on_bad_utf8, **job.extra_settings}
            manifest = finish_dataset(tmp, records, [job.source(r) for r in range(len(job.sources))],
                                      settings=settings, eval_files=job.eval_files,
                                      fingerprint=job.fingerprint, seconds=time.time() - job.started,
                                      cpu_seconds=cpu)
        (work / "manifest.json").write_text(json.dumps(manifest))


# ---- running it -----------------------------------------------------------------------------------------
def prepare_on_engine(job: PrepareJob, *, workers: int, executor: str = "local", options: dict | None = None,
                      progress: bool = True) -> dict | None:
    """Run the five stages; returns the manifest (None when Slurm was only submitted)."""
    work = Path(job.work)
    stamp = work / "job.json"
    if work.exists():
        try:
            before = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            before = {}
        same = before.get("fingerprint") == job.fingerprint
        if same:  # resume: finished tasks wrote their keys into that many buckets, whatever --workers is now
            job.buckets = before["buckets"]
        else:  # the scratch of another dataset (other sources or settings): start afresh
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(json.dumps(asdict(job)))
    job.started = time.time()
    n = len(job.sources)
    options = dict(options or {})
    logs = work / "logs"
    plan = [(ReadStep, n), (MatchStep, job.buckets), (ResolveStep, 1), (WriteStep, n), (MergeStep, 1)]
    if progress:
        print(f"prepare on datatrove ({executor}): {n} read/write tasks, {job.buckets} match buckets, "
              f"{workers} at once; task logs in {logs}", file=sys.stderr, flush=True)
    stages: list = []
    for step, tasks in plan:
        stages.append(make_executor(executor, [step(job)], tasks, workers, logs / step.stage,
                                    stages[-1] if stages else None, options))
    run_logged(stages, work)
    if executor == "slurm":
        return None
    manifest = json.loads((work / "manifest.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return manifest
