"""`foundry data prepare` and `data tokenize` as datatrove pipelines (docs/DATA.md says why datatrove).

The engine (datatrove's executors) schedules tasks on local processes, a Slurm array or a Ray cluster,
records each finished task in `completions/` (a re-run skips those: that is the resume) and logs per
task. The steps are foundry's own rules (clean.py, dedup.py, decontam.py, the split in prepare.py), so
the output is the single-process path's, document for document and line for line:

  1 read    (task = source file)  read, clean, drop too_short; content hash, split, contamination;
                                  MinHash signature; exact keys and LSH band keys into B hash buckets
  2 match   (task = bucket)       exact: the first copy (in input order) of each hash survives;
                                  near: documents sharing an LSH band are candidates, verified on the
                                  full signature (Jaccard >= threshold) as datasketch's query + check is
  3 resolve (one task)            near pairs resolved greedily in input order: a document is a near
                                  duplicate when an earlier KEPT document matches it (the sequential rule)
  4 write   (task = source file)  drop by reason, count per source, write its train/val part
  5 merge   (one task)            parts concatenated in source order, manifest, run record, atomic rename

A document's place in the input is `order` = file index << 40 | document index, so "first" means the
same thing at any number of workers. Memory per task is one file's documents (stages 1, 4) or one
bucket's keys (stage 2); only stage 3 holds all verified near pairs and the exact duplicates' orders.
Intermediate files live in the work directory (default OUT.prepare-work), deleted after a local run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from foundry.errors import DataError

ORDER_SHIFT = 40  # documents per file < 2**40; files < 2**23
EXACT_DTYPE = np.dtype([("key", "S16"), ("order", "<i8")])
BAND_DTYPE = np.dtype([("band", "<u2"), ("key", "<u8"), ("doc", "<u8"), ("order", "<i8")])
PAIR_DTYPE = np.dtype([("first", "<i8"), ("second", "<i8")])
FAULT_ENV = "FOUNDRY_DATA_FAULT"  # "STAGE:RANK": SIGKILL this process as that task starts (tests kill a run)


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
_forking_parent: list[int] = []  # while the engine runs: the pid that forks (each child dies with its parent)


def _remember_parent() -> None:
    if _forking_parent:
        _forking_parent[1:] = [os.getpid()]


def _die_with_parent() -> None:
    """In a process forked while the engine runs (datatrove's manager, its pool workers): SIGKILL from the
    kernel when the parent dies (Linux's PR_SET_PDEATHSIG), so a killed driver leaves no helper behind."""
    if not _forking_parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: helpers end as datatrove ends them
        return
    if os.getppid() != _forking_parent[-1]:  # the parent died before the request took effect
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_remember_parent, after_in_child=_die_with_parent)


def _fault(stage: str, rank: int) -> None:
    """Test hook: kill the whole run (this process group: driver, engine manager, workers) as a lost
    machine would, when task `rank` of `stage` starts. Only set it on a process started in its own session."""
    if os.environ.get(FAULT_ENV) == f"{stage}:{rank}":
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _save_bucketed(folder: Path, name: str, rows: np.ndarray, bucket: np.ndarray, buckets: int) -> None:
    """Rows sorted by bucket in one file plus the offsets of each bucket: two files per task, not B
    (datatrove's dedup stages write sorted files for the same reason)."""
    order = np.argsort(bucket, kind="stable")
    _save_npy(folder / f"{name}.npy", rows[order])
    _save_npy(folder / f"{name}_offsets.npy", np.searchsorted(bucket[order], np.arange(buckets + 1)).astype(np.int64))


def _bucket_rows(folder: Path, name: str, bucket: int) -> np.ndarray:
    offsets = np.load(folder / f"{name}_offsets.npy")
    return np.array(np.load(folder / f"{name}.npy", mmap_mode="r")[offsets[bucket]:offsets[bucket + 1]])


@contextlib.contextmanager
def _task_dir(final: Path):
    """A task's output directory appears whole or not at all (a killed task leaves only a .tmp to redo)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


_lsh_cache: dict = {}


def lsh_layout(threshold: float):
    """(bands, rows, template MinHash) exactly as the single-process NearDeduplicator builds them."""
    if threshold not in _lsh_cache:
        from foundry.data.dedup import NearDeduplicator

        near = NearDeduplicator(threshold)
        _lsh_cache[threshold] = (near, near._lsh.b, near._lsh.r)
    return _lsh_cache[threshold]


_decon_cache: dict = {}


def _decontaminator(paths: list[str], n: int):
    key = (tuple(paths), n)
    if key not in _decon_cache:
        from foundry.data.decontam import Decontaminator

        _decon_cache.clear()
        _decon_cache[key] = Decontaminator(paths, n) if paths else None
    return _decon_cache[key]


def _run_logged(stages: list, work: Path) -> None:
    """Run the pipeline, the engine's chatter in work/engine.log.

    Local and Slurm stages are chained by `depends` (the last one runs or submits the ones before). Ray's
    executor only logs a task that failed its retries, and a stage depending on it re-checks every 2 minutes,
    forever; so Ray stages run one after another here, each checked for unfinished tasks, whose recorded
    one-line error (`errors/`) is raised as the local executor raises it.

    On a DataError nothing is left behind: bad input fails the same way on every try and its fix changes the
    fingerprint, and a full disk needs the space back. Anything else (a killed worker) keeps the finished
    tasks for a resume.
    """
    _quiet()
    log = open(work / "engine.log", "a")
    _forking_parent[:] = [os.getpid(), os.getpid()]  # [marker, the forking process's pid]
    try:
        with contextlib.redirect_stderr(log):
            for stage in (stages if stages[-1].depends is None else stages[-1:]):
                stage.run()
                _check_finished(stage, work)
    except DataError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        _forking_parent.clear()
        with contextlib.suppress(OSError):  # on a full disk the log's last flush fails too; the error says why
            log.close()


def _check_finished(stage, work: Path) -> None:
    """After a blocking stage: every task finished, or the first unfinished one's error as a DataError."""
    from datatrove.executor import SlurmPipelineExecutor

    if isinstance(stage, SlurmPipelineExecutor):  # submitted, not run: the array finishes later
        return
    unfinished = stage.get_incomplete_ranks(skip_completed=True)
    if not unfinished:
        return
    name = stage.pipeline[0].stage
    for rank in unfinished:
        recorded = work / "errors" / f"{name}_{rank:05d}"
        if recorded.is_file():
            raise DataError(recorded.read_text())
    raise DataError(f"{work}: data {name} tasks {unfinished[:5]} did not finish (the engine gave up on them); "
                    f"their logs are in {work / 'logs' / name}")


def _is_write_failure(exc: OSError) -> bool:
    """A full disk or quota (ENOSPC, EDQUOT, EFBIG), or a short write (numpy's "N requested and M written")."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or (
        exc.errno is None and "requested and" in str(exc) and "written" in str(exc))


class _Step:
    """A foundry step run by datatrove: one call per task (rank), output written under the work directory."""
    stage = ""

    def __init__(self, job: PrepareJob):
        from datatrove.utils.stats import Stats

        self.job = job
        self.stats = Stats(f"foundry {self.stage}")

    def __repr__(self) -> str:
        return f"foundry: {self.stage}"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        _fault(self.stage, rank)
        cpu0 = time.process_time()
        try:
            self.run_task(rank, world_size)
        except Exception as exc:
            error = self._error(exc, rank)
            # the driver of an executor that only logs a failed task (Ray) reads the one line from here
            with contextlib.suppress(OSError):
                (Path(self.job.work) / "errors").mkdir(exist_ok=True)
                (Path(self.job.work) / "errors" / f"{self.stage}_{rank:05d}").write_text(str(error))
            if error is exc:
                raise
            raise error from exc
        work = Path(self.job.work)
        (work / "cpu").mkdir(exist_ok=True)
        (work / "cpu" / f"{self.stage}_{rank:05d}").write_text(str(time.process_time() - cpu0))
        return None

    def _error(self, exc: Exception, rank: int) -> DataError:
        """A failed task as one line naming its input (bad input, a bug) or its output (a full disk)."""
        if isinstance(exc, DataError):
            return exc
        if isinstance(exc, OSError) and _is_write_failure(exc):
            return DataError(f"{self.output()}: cannot write ({exc}; is the disk full?); data {self.stage} task "
                             f"{rank} stopped and nothing already there was replaced")
        return DataError(f"{self.where(rank)}: data {self.stage} task {rank} failed ({type(exc).__name__}: {exc})")

    def where(self, rank: int) -> str:
        return self.job.work

    def output(self) -> str:
        """What the run writes in the end: the dataset directory, or its tokenizer's tokens folder."""
        job = self.job
        return job.out

    def run_task(self, rank: int, world_size: int) -> None:
        raise NotImplementedError


# ---- stage 1: read, clean, hash, contamination, signatures --------------------------------------------
class _PerSourceStep(_Step):
    """A stage with one task per source file: a failure names that file."""

    def where(self, rank):
        return self.job.sources[rank]["path"]


class ReadStep(_PerSourceStep):
    stage = "read"

    def run_task(self, rank, world_size):
        from foundry.data.clean import clean_text, content_hash, words
        from foundry.data.prepare import in_validation
        from foundry.data.sources import ReadStats, read_documents
        from foundry.utils.io import sha256_file

        job = self.job
        src = job.source(rank)
        layout = job.txt_split or src.provenance.get("txt_split") or "file"
        decon = _decontaminator(job.eval_paths, job.ngram)
        near, bands, rows = lsh_layout(job.near_dup_threshold) if job.near else (None, 0, 0)
        stats, counts = ReadStats(), Counter()
        exact_keys, band_rows, sigs, sig_orders = [], [], [], []
        with _task_dir(Path(job.work) / "read" / f"{rank:05d}") as tmp:
            with open(tmp / "docs.jsonl", "w", encoding="utf-8") as docs:
                for index, raw in enumerate(read_documents(src, job.text_field, layout, job.on_bad_utf8, stats)):
                    counts["read"] += 1
                    counts["text_bytes"] += len(raw.encode("utf-8"))
                    text = clean_text(raw)
                    if len(text) < job.min_chars:
                        counts["too_short"] += 1
                        continue
                    order = rank << ORDER_SHIFT | index
                    digest = content_hash(text)
                    exact_keys.append((digest, order))
                    split = "val" if in_validation(digest, job.val_fraction) else "train"
                    toks = words(text)
                    contaminated = split == "train" and bool(decon) and decon.is_contaminated(toks)
                    if near is not None and not contaminated:
                        hv = near.signature(toks).hashvalues.astype(np.uint32)  # values < 2**32 (datasketch)
                        doc = int.from_bytes(digest[:8], "little")
                        for b in range(bands):
                            key = int.from_bytes(hashlib.blake2b(hv[b * rows:(b + 1) * rows].tobytes(),
                                                                 digest_size=8).digest(), "little")
                            band_rows.append((b, key, doc, order))
                        sigs.append(hv)
                        sig_orders.append(order)
                    docs.write(json.dumps({"o": order, "id": digest.hex(), "split": split, "c": contaminated,
                                           "text": text}, ensure_ascii=False) + "\n")
            exact = np.array(exact_keys, dtype=EXACT_DTYPE)
            # bucket = the key's first 8 bytes modulo B (any B, not only up to 256)
            _save_bucketed(tmp, "exact", exact, np.frombuffer(exact["key"].tobytes(), dtype=">u8")[::2] % job.buckets,
                           job.buckets)
            band = np.array(band_rows, dtype=BAND_DTYPE)
            _save_bucketed(tmp, "band", band, band["key"] % job.buckets, job.buckets)
            _save_npy(tmp / "sig.npy", np.array(sigs, dtype=np.uint32).reshape(len(sigs), near._template.num_perm if near else 0))
            _save_npy(tmp / "sig_order.npy", np.array(sig_orders, dtype=np.int64))
            (tmp / "stats.json").write_text(json.dumps({
                "read": counts["read"], "text_bytes": counts["text_bytes"], "too_short": counts["too_short"],
                "undecodable_lines": stats.undecodable_lines, "sha256": sha256_file(src.path), "layout": layout}))


# ---- stage 2: exact groups and verified LSH candidates, per bucket ----------------------------------
class MatchStep(_Step):
    stage = "match"

    def run_task(self, rank, world_size):
        job = self.job
        read = Path(job.work) / "read"
        n = len(job.sources)
        with _task_dir(Path(job.work) / "match" / f"{rank:05d}") as tmp:
            exact = np.concatenate([_bucket_rows(read / f"{r:05d}", "exact", rank) for r in range(n)])
            exact = exact[np.lexsort((exact["order"], exact["key"]))]
            later = np.zeros(len(exact), dtype=bool)
            later[1:] = exact["key"][1:] == exact["key"][:-1]  # not the first copy of its hash
            _save_npy(tmp / "exact_drop.npy", np.sort(exact["order"][later]))
            del exact, later
            pairs = np.empty(0, dtype=PAIR_DTYPE)
            if job.near:
                pairs = self._near_pairs(read, n, rank)
            _save_npy(tmp / "near_pairs.npy", pairs)

    def _near_pairs(self, read: Path, n: int, rank: int) -> np.ndarray:
        band = np.concatenate([_bucket_rows(read / f"{r:05d}", "band", rank) for r in range(n)])
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
class ResolveStep(_Step):
    stage = "resolve"

    def run_task(self, rank, world_size):
        job = self.job
        match = Path(job.work) / "match"
        with _task_dir(Path(job.work) / "resolve") as tmp:
            drops = np.empty(0, dtype=np.int64)
            exact = np.sort(np.concatenate([np.load(match / f"{b:05d}" / "exact_drop.npy")
                                            for b in range(job.buckets)]))
            _save_npy(tmp / "exact_drop.npy", exact)  # one sorted file: a write task reads its own range
            if job.near:
                pairs = np.unique(np.concatenate([np.load(match / f"{b:05d}" / "near_pairs.npy")
                                                  for b in range(job.buckets)]))
                drops = resolve_near_pairs(pairs, exact)
            _save_npy(tmp / "near_drop.npy", drops)


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
        with _task_dir(work / "write" / f"{rank:05d}") as tmp, \
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
class MergeStep(_Step):
    stage = "merge"

    def where(self, rank):
        return self.job.out

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
EXECUTORS = ("local", "slurm", "ray")


def _executor(kind: str, pipeline: list, tasks: int, workers: int, logs: Path, depends, options: dict):
    """The engine's executor for one stage; `options` pass through (Slurm: partition, time, ...)."""
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs),
                                     depends=depends, start_method=options.get("start_method", "fork"))
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(pipeline, tasks=tasks, logging_dir=str(logs), depends=depends,
                                     workers=workers if workers > 0 else -1, **options)
    if kind == "ray":
        import ray
        from datatrove.executor import RayPipelineExecutor

        if not ray.is_initialized():  # joins RAY_ADDRESS's cluster, or starts one on this machine
            # the workers' output stays in the task logs, not after foundry's one-line error on the terminal
            ray.init(log_to_driver=False)

        # no depends: _run_logged runs Ray stages in order itself (datatrove's wait on a failed one never ends)
        return RayPipelineExecutor(pipeline, tasks=tasks, logging_dir=str(logs),
                                   workers=workers if workers > 0 else -1, **options)
    raise DataError(f"--executor must be one of inline, {', '.join(EXECUTORS)}; got {kind!r}")


def _quiet():
    """The engine's own log goes to the work directory's logs, not to the terminal (errors are one line)."""
    from datatrove.utils.logging import logger

    logger.remove()


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
        stages.append(_executor(executor, [step(job)], tasks, workers, logs / step.stage,
                                stages[-1] if stages else None, options))
    _run_logged(stages, work)
    if executor == "slurm":
        return None
    manifest = json.loads((work / "manifest.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return manifest


# ---- data tokenize ------------------------------------------------------------------------------------
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


class EncodeStep(_Step):
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
        with _task_dir(Path(job.work) / "encode" / f"{rank:05d}") as tmp, open(tmp / "tokens.bin", "wb") as out, \
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


class ShardStep(_Step):
    stage = "shard"

    def where(self, rank):
        return self.job.out

    def run_task(self, rank, world_size):
        from foundry.data.shards import ShardWriter, write_token_index
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
    from foundry.data.shards import tokenizer_key

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
    encode = _executor(executor, [EncodeStep(job)], len(parts), workers, work / "logs" / "encode", None, options)
    shard = _executor(executor, [ShardStep(job)], 1, workers, work / "logs" / "shard", encode, options)
    _run_logged([encode, shard], work)
    if executor == "slurm":
        return None
    result = json.loads((work / "index.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return result
