"""Where documents come from: finding source files, their provenance sidecars, and reading documents.

Formats: `.txt` / `.md` / `.rst` (plain text), `.jsonl` (one JSON object per line, text in a chosen field)
and `.parquet` (text in a chosen column); `.txt.gz` and `.jsonl.gz` are read transparently.

How a text file becomes documents (`txt_split`):
- `file`      the whole file is one document (an article, a book chapter, a source file);
- `blankline` each run of lines separated by one or more blank lines is a document (paragraphs);
- `line`      every non-empty line is a document;
- `formfeed`  documents are separated by form feed characters (\f, "page break"); used by the bundled
              corpora so a document (a Bible chapter, a scene, a manual section) can keep its blank lines.
A folder's `SOURCE.yaml` may set `txt_split` for the files it describes, so a corpus carries its own
layout; an explicit `--txt-split` on the command line wins over it.

Provenance: `SOURCE.yaml` next to a file, or in any folder between it and the folder given on the
command line (the nearest wins), gives `license`, `origin`, `collected` (and optionally `name`,
`package`, `version`, `language`, `notes`). Command-line `--license/--origin/--collected` fill in what no sidecar says.
"""

from __future__ import annotations

import datetime
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from foundry.config import load_yaml_mapping
from foundry.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
SIDECAR = "SOURCE.yaml"
TXT_SPLITS = ("file", "blankline", "line", "formfeed")


def source_format(path: Path) -> str | None:
    """'txt', 'jsonl' or 'parquet' from the file name (a trailing .gz is looked through), else None."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(TEXT_SUFFIXES):
        return "txt"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet") and not path.name.lower().endswith(".gz"):
        return "parquet"
    return None


@dataclass
class SourceFile:
    path: Path
    format: str
    provenance: dict = field(default_factory=dict)  # license, origin, collected, ... (sidecar + CLI)
    group: str = ""  # the corpus it belongs to: its nearest SOURCE.yaml folder, else the argument given


def read_sidecar(path: Path) -> dict:
    """Parse a SOURCE.yaml; errors name the file and line."""
    data = load_yaml_mapping(path, DataError, "expected a mapping such as 'license: CC0-1.0'")
    out = {}
    for key, value in data.items():
        if isinstance(value, (datetime.date, datetime.datetime)):
            value = value.isoformat()[:10]
        out[str(key)] = value
    if "txt_split" in out and out["txt_split"] not in TXT_SPLITS:
        raise DataError(f"{path}: txt_split must be one of {', '.join(TXT_SPLITS)}, got {out['txt_split']!r}")
    if "collected" in out:
        _check_date(out["collected"], str(path))
    return out


def _check_date(value, where: str) -> None:
    try:
        datetime.date.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{where}: collected must be a date YYYY-MM-DD, got {value!r}") from None


def _provenance_for(file: Path, root: Path, cache: dict[Path, dict | None]) -> tuple[dict, Path | None]:
    """Merge sidecars from `root` down to the file's folder (nearer ones override farther ones);
    also return the folder of the nearest sidecar, which names the corpus in the summary."""
    folders = [file.parent]
    while folders[-1] != root and root in folders[-1].parents:
        folders.append(folders[-1].parent)
    merged: dict = {}
    nearest = None
    for folder in reversed(folders):
        side = folder / SIDECAR
        if side not in cache:
            cache[side] = read_sidecar(side) if side.is_file() else None
        if cache[side] is not None:
            merged.update(cache[side])
            nearest = folder
    return merged, nearest


def find_sources(paths: list[str], cli_provenance: dict) -> list[SourceFile]:
    """Expand files and folders (recursively, sorted) into source files with their provenance."""
    if cli_provenance.get("collected") is not None:
        _check_date(cli_provenance["collected"], "--collected")
    sources: list[SourceFile] = []
    cache: dict[Path, dict | None] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise DataError(f"{root}: no such file or directory")
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and source_format(p)
                           and not any(part.startswith(".") for part in p.relative_to(root).parts))
            if not files:
                raise DataError(f"{root}: no .txt/.md/.rst/.jsonl/.parquet files (or .gz of them) in this folder")
        else:
            if source_format(root) is None:
                raise DataError(f"{root}: unsupported file type; expected .txt, .md, .rst, .jsonl, .parquet "
                                "(or .txt.gz / .jsonl.gz)")
            files = [root]
        for f in files:
            prov = {k: v for k, v in cli_provenance.items() if v is not None}
            sidecar, corpus = _provenance_for(f, root if root.is_dir() else f.parent, cache)
            prov.update(sidecar)
            group = str(corpus) if corpus is not None and root.is_dir() else given
            sources.append(SourceFile(f, source_format(f), prov, group=group))
    seen: set[Path] = set()
    unique = []
    for s in sources:  # a file named twice (directly and through its folder) is read once
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


# ---- reading documents --------------------------------------------------------------------------
@dataclass
class ReadStats:
    undecodable_lines: int = 0


def read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def decode_line(path: Path, lineno: int, raw: bytes, on_bad_utf8: str, stats: ReadStats) -> str | None:
    """One line as text, or None when it is not UTF-8 and `on_bad_utf8` is 'skip' (then counted)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if on_bad_utf8 == "error":
            bad = raw[exc.start:exc.start + 1].hex()
            raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{bad} at column {exc.start + 1}); "
                            "fix the file or pass --on-bad-utf8 skip to drop such lines") from None
        stats.undecodable_lines += 1
        return None


def decode_lines(path: Path, data: bytes, on_bad_utf8: str, stats: ReadStats) -> list[str]:
    """UTF-8 lines (newline kept); an undecodable line is refused, or skipped and left as a blank line
    (so line numbers and paragraph breaks stay where they were)."""
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        pass
    lines = []
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        text = decode_line(path, lineno, raw, on_bad_utf8, stats)
        lines.append("\n" if text is None else text)
    return lines


_BLANK = re.compile(r"\n[ \t]*\n")


def read_txt(path: Path, split: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[str]:
    lines = decode_lines(path, read_bytes(path), on_bad_utf8, stats)
    text = "".join(lines).replace("\r\n", "\n")
    if split == "file":
        if text.strip():
            yield text
    elif split == "line":
        yield from (line for line in text.split("\n") if line.strip())
    elif split == "formfeed":
        yield from (page for page in text.split("\f") if page.strip())
    else:
        yield from (block for block in _BLANK.split(text) if block.strip())


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def iter_lines(path: Path, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) streamed from disk; undecodable lines refused or skipped and counted."""
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                text = decode_line(path, lineno, raw, on_bad_utf8, stats)
                if text is not None:
                    yield lineno, text
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def iter_json_lines(path: Path, on_bad_utf8: str = "error",
                    stats: ReadStats | None = None) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed value) for every non-blank line of a JSONL file."""
    for lineno, line in iter_lines(path, on_bad_utf8, stats or ReadStats()):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: Path, text_field: str, on_bad_utf8: str, stats: ReadStats) -> Iterator[str]:
    for lineno, record in iter_json_lines(path, on_bad_utf8, stats):
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            keys = ", ".join(list(record)[:8]) or "none"
            raise DataError(f"{path}:{lineno}: record has no '{text_field}' field (its keys: {keys}); "
                            "pass --text-field to choose another")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field '{text_field}' is {type(text).__name__}, not a string")
        yield text


def read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(names) or 'none'}); "
                        "pass --text-field to choose another")
    col_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise DataError(f"{path}: column '{text_field}' holds {col_type}, not strings")
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def read_documents(source: SourceFile, text_field: str, txt_split: str, on_bad_utf8: str,
                   stats: ReadStats) -> Iterator[str]:
    if source.format == "txt":
        return read_txt(source.path, txt_split, on_bad_utf8, stats)
    if source.format == "jsonl":
        return read_jsonl(source.path, text_field, on_bad_utf8, stats)
    return read_parquet(source.path, text_field)
