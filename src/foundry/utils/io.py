"""Atomic file and directory writes, hashing, and the run record every stage leaves behind.

Everything a stage writes goes through here, so an interrupted or failing write never leaves a
half-written artefact where a finished one is expected (temporary path, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from foundry.errors import FoundryError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise FoundryError(f"{path}: write failed ({exc.strerror or exc}); the previous file is intact") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise FoundryError(f"{path}{':' + str(line) if line else ''}: not valid JSON ({exc})") from None


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing, unreadable or not valid JSON (a report reads what it can)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    On any error the temporary directory is removed and `final` is left exactly as it was.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FoundryError(f"{final}: already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        if final.exists():
            # Swap: move the old one aside first so there is never a moment with neither.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise FoundryError(f"{final}: write failed ({exc.strerror or exc}); nothing was changed") from exc
        raise


def code_version() -> str:
    """The git commit of the foundry checkout (with '+dirty' if modified), else the package version."""
    from foundry import __version__

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def write_run_record(run_dir: str | os.PathLike, stage: str, config: Any, parents: dict[str, Any] | None = None,
                     data_manifests: dict[str, str] | None = None, results: dict[str, Any] | None = None,
                     created: str | None = None) -> Path:
    """Write `run.json`: what produced this run directory (config, code version, parents, data hashes).

    `parents` maps a role ("checkpoint", "tokenizer", "dataset") to a path or hash; `data_manifests`
    maps a dataset name to its manifest's sha256. The model card and the lineage view read this file.
    """
    run_dir = Path(run_dir)
    record = {
        "stage": stage,
        "created": created or utc_now(),
        "code_version": code_version(),
        "config": config.model_dump(mode="json") if hasattr(config, "model_dump") else config,
        "parents": parents or {},
        "data_manifests": data_manifests or {},
        "results": results or {},
    }
    path = run_dir / "run.json"
    atomic_write_json(path, record)
    return path


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RunRecord:
    """A run's `run.json`, rewritten as its status changes, with `created` fixed at the run's start.

    A resumed run keeps the `created` of the run it continues."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, config: Any, parents: dict[str, Any] | None = None,
                 data_manifests: dict[str, str] | None = None, resume: bool = False):
        self.run_dir, self.stage, self.config = Path(run_dir), stage, config
        self.parents, self.data_manifests = parents or {}, data_manifests or {}
        previous = self.run_dir / "run.json"
        created = None
        if resume and previous.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                created = json.loads(previous.read_text(encoding="utf-8")).get("created")
        self.created = created or utc_now()

    def write(self, results: dict[str, Any]) -> Path:
        return write_run_record(self.run_dir, self.stage, self.config, self.parents, self.data_manifests, results,
                                created=self.created)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of `RUN/metrics.jsonl` (a torn or malformed line, from a killed run, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                    records.append(record)
    return records
