"""`foundry data prepare`: raw corpora -> a clean, deduplicated, decontaminated, split dataset with provenance.

Per document, in order (the first rule that fires is the reason it is dropped, counted per source):
  clean (NFC, control characters, trim) -> too_short -> exact_duplicate -> contaminated -> near_duplicate
Kept documents go to `val` when their content hash falls under --val-fraction, else to `train`; the
contamination rule applies to training documents only (held-out text may hold eval items, and the
bundled tasks are built from it). The split depends only on the text, so it is stable across runs,
machines and input order.

Output (written to a temporary sibling and renamed into place, so no half dataset is ever visible):
  DIR/train.jsonl, DIR/val.jsonl   one {"id", "source", "text"} per line (id: content hash)
  DIR/manifest.json                every source file's path, sha256, bytes, provenance, documents kept
                                   and dropped by reason; the settings; totals
  DIR/run.json                     the run record (foundry.utils.io.write_run_record)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from foundry.data.clean import clean_text, content_hash, words
from foundry.data.decontam import Decontaminator
from foundry.data.dedup import ExactDeduplicator, NearDeduplicator
from foundry.data.sources import ReadStats, SourceFile, read_documents
from foundry.errors import DataError
from foundry.utils.io import atomic_directory, atomic_write_json, sha256_file, write_run_record

DROP_REASONS = ("too_short", "exact_duplicate", "contaminated", "near_duplicate")
DROP_COLUMNS = {"too_short": "short", "exact_duplicate": "exact dup", "contaminated": "contam.",
                "near_duplicate": "near dup"}  # summary table headers, in DROP_REASONS order
MANIFEST_FORMAT = "foundry-dataset/1"


def dataset_manifest(dataset: str | Path) -> Path:
    """`DATASET/manifest.json`; a directory without one is not a prepared dataset (a one-line DataError)."""
    manifest = Path(dataset) / "manifest.json"
    if not manifest.is_file():
        raise DataError(f"{dataset}: not a dataset directory (no manifest.json); run 'foundry data prepare' first")
    return manifest


def in_validation(digest: bytes, val_fraction: float) -> bool:
    """The split rule: the first 8 bytes of the content hash as a number in [0, 1)."""
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


@dataclass
class Document:
    """A cleaned document long enough to keep, and what the rules after too_short read of it."""
    text: str
    digest: bytes  # clean.content_hash: the exact-duplicate key, the id and the split
    split: str  # "train" or "val"

    @cached_property
    def words(self) -> list[str]:
        """Split once, shared by decontamination and near-dedup."""
        return words(self.text)

    def is_contaminated(self, decon: Decontaminator | None) -> bool:
        """Only training text must not contain eval items; held-out text may (the bundled tasks are built
        from the validation split on purpose)."""
        return self.split == "train" and bool(decon) and decon.is_contaminated(self.words)


def clean_document(raw: str, min_chars: int, val_fraction: float) -> Document | None:
    """The per-document rules before deduplication, for the single-process path and the engine alike: clean
    the text, None when it is too short, else its content hash and split."""
    text = clean_text(raw)
    if len(text) < min_chars:
        return None
    digest = content_hash(text)
    return Document(text, digest, "val" if in_validation(digest, val_fraction) else "train")


def dataset_fingerprint(sources: list[dict], settings: dict, evals: list[dict]) -> str:
    """Hash of everything that determines the output, to tell 'same dataset' from 'different dataset'."""
    key = {"sources": [(s["path"], s["sha256"], s["provenance"]) for s in sources], "settings": settings,
           "eval": [e["sha256"] for e in evals]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def check_existing_output(out: Path, fingerprint: str, overwrite: bool) -> bool:
    """True when `out` already holds this exact dataset. Refuse a different one unless --overwrite."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            same = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
        except (json.JSONDecodeError, UnicodeDecodeError):
            same = False
        if same and not overwrite:
            return True
        if not overwrite:
            raise DataError(f"{out}: already holds a different dataset (other sources or settings); "
                            "pass --overwrite to replace it, or choose another --out")
    elif any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: exists and is not empty (and not a foundry dataset); "
                        "pass --overwrite to replace it, or choose another --out")
    return False


def prepare(sources: list[SourceFile], out: Path, *, text_field: str = "text", txt_split: str | None = None,
            min_chars: int = 100, val_fraction: float = 0.02, near_dup_threshold: float = 0.8,
            on_bad_utf8: str = "error", decontaminator: Decontaminator | None = None, overwrite: bool = False,
            progress: bool = True, fingerprint: str = "", extra_settings: dict | None = None) -> dict:
    """Run the pipeline over `sources` and write the dataset directory `out`; returns the manifest.

    `overwrite` lets an existing `out` be replaced (the CLI decides that in `check_existing_output`).
    """
    from tqdm import tqdm

    t0, cpu0 = time.perf_counter(), time.process_time()
    exact = ExactDeduplicator()
    near = NearDeduplicator(near_dup_threshold) if near_dup_threshold < 1 else None
    decon = decontaminator
    records: list[dict] = []
    total_disk = sum(s.path.stat().st_size for s in sources)
    bar = tqdm(total=total_disk, unit="B", unit_scale=True, desc="prepare", disable=not progress, file=sys.stderr)
    with atomic_directory(out, overwrite=overwrite) as tmp, \
            open(tmp / "train.jsonl", "w", encoding="utf-8") as train_f, \
            open(tmp / "val.jsonl", "w", encoding="utf-8") as val_f:
        for src in sources:
            layout = txt_split or src.provenance.get("txt_split") or "file"
            stats, counts, dropped = ReadStats(), Counter(), Counter()
            chars = text_bytes = 0
            for raw in read_documents(src, text_field, layout, on_bad_utf8, stats):
                counts["read"] += 1
                text_bytes += len(raw.encode("utf-8"))
                doc = clean_document(raw, min_chars, val_fraction)
                if doc is None:
                    dropped["too_short"] += 1
                    continue
                if exact.seen(doc.digest):
                    dropped["exact_duplicate"] += 1
                    continue
                if doc.is_contaminated(decon):
                    dropped["contaminated"] += 1
                    continue
                doc_id = doc.digest.hex()
                if near is not None and near.is_near_duplicate(doc_id, doc.words) is not None:
                    dropped["near_duplicate"] += 1
                    continue
                line = json.dumps({"id": doc_id, "source": str(src.path), "text": doc.text}, ensure_ascii=False)
                (val_f if doc.split == "val" else train_f).write(line + "\n")
                counts[doc.split] += 1
                chars += len(doc.text)
            bar.update(src.path.stat().st_size)
            records.append(source_record(src, layout, sha256_file(src.path), text_bytes, stats.undecodable_lines,
                                         counts, dropped, chars))
        bar.close()
        for f in (train_f, val_f):  # on disk before the directory is renamed into place
            f.flush()
            os.fsync(f.fileno())
        manifest = finish_dataset(tmp, records, sources, settings={
            "text_field": text_field, "txt_split": txt_split, "min_chars": min_chars, "val_fraction": val_fraction,
            "near_dup_threshold": near_dup_threshold, "on_bad_utf8": on_bad_utf8, **(extra_settings or {})},
            eval_files=decon.files if decon else [], fingerprint=fingerprint,
            seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)
    return manifest


def source_record(src: SourceFile, layout: str, sha256: str, text_bytes: int, undecodable_lines: int,
                  counts: Counter, dropped: Counter, chars: int) -> dict:
    """One source file's manifest entry: where it is, its hash and provenance, and what became of its documents."""
    prov = src.provenance
    return {
        "path": str(src.path), "group": src.group, "format": src.format,
        "sha256": sha256, "bytes": src.path.stat().st_size, "text_bytes": text_bytes,
        "license": prov.get("license"), "origin": prov.get("origin"), "collected": prov.get("collected"),
        **{k: prov[k] for k in ("name", "package", "version", "language") if k in prov},
        "unlicensed": not prov.get("license"),
        "txt_split": layout if src.format == "txt" else None,
        "undecodable_lines": undecodable_lines,
        "documents": {"read": counts["read"], "kept": counts["train"] + counts["val"],
                      "train": counts["train"], "val": counts["val"],
                      "dropped": {r: dropped[r] for r in DROP_REASONS}},
        "chars_kept": chars,
    }


def finish_dataset(tmp: Path, records: list[dict], sources: list[SourceFile], *, settings: dict,
                   eval_files: list[dict], fingerprint: str, seconds: float, cpu_seconds: float) -> dict:
    """Refuse an empty result, then write manifest.json and run.json into `tmp` (train/val already there)."""
    totals = _totals(records)
    where = ", ".join(sorted({s.group for s in sources}))
    if totals["documents"]["kept"] == 0:
        d = totals["documents"]["dropped"]
        raise DataError(f"{where}: empty corpus: no documents left out of {totals['documents']['read']} read "
                        f"({', '.join(f'{v} {k}' for k, v in d.items() if v) or 'the sources hold no text'}); "
                        f"check the sources or lower --min-chars (now {settings['min_chars']})")
    if totals["documents"]["train"] == 0:
        raise DataError(f"{where}: all {totals['documents']['kept']} kept documents fell in the validation "
                        f"split; lower --val-fraction (now {settings['val_fraction']}) or add data")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint,
        "settings": settings,
        "eval_files": eval_files,
        "sources": records,
        "unlicensed_sources": [r["path"] for r in records if r["unlicensed"]],
        "totals": totals,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),  # wall time misleads on a shared machine
        "throughput_mb_per_s": round(totals["text_bytes"] / 1e6 / max(seconds, 1e-9), 3),
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    write_run_record(tmp, "data", manifest["settings"],
                     parents={"sources": [r["sha256"] for r in records]},
                     results={"totals": totals, "seconds": manifest["seconds"]})
    return manifest


def _totals(records: list[dict]) -> dict:
    docs = Counter()
    dropped = Counter()
    for r in records:
        for k in ("read", "kept", "train", "val"):
            docs[k] += r["documents"][k]
        dropped.update(r["documents"]["dropped"])
    return {"files": len(records), "bytes": sum(r["bytes"] for r in records),
            "text_bytes": sum(r["text_bytes"] for r in records), "chars_kept": sum(r["chars_kept"] for r in records),
            "undecodable_lines": sum(r["undecodable_lines"] for r in records),
            "documents": {**{k: docs[k] for k in ("read", "kept", "train", "val")},
                          "dropped": {k: dropped[k] for k in DROP_REASONS}}}


def print_summary(manifest: dict, out: Path) -> None:
    """One row per command-line source (a folder's files summed), then the totals."""
    from rich.console import Console
    from rich.table import Table

    groups: dict[str, list[dict]] = {}
    for r in manifest["sources"]:
        groups.setdefault(r["group"], []).append(r)
    table = Table(title=f"dataset {out}", title_justify="left")
    for col in ("source", "files", "license", "read", "kept", "train", "val", "chars",
                *DROP_COLUMNS.values(), "bad utf-8"):
        table.add_column(col, justify="left" if col in ("source", "license") else "right",
                         no_wrap=col not in ("source", "license"))

    def row(name, recs, license_):
        t = _totals(recs)
        d = t["documents"]
        table.add_row(name, str(len(recs)), license_, f"{d['read']:,}", f"{d['kept']:,}", f"{d['train']:,}",
                      f"{d['val']:,}", f"{t['chars_kept']:,}", *(f"{d['dropped'][k]:,}" for k in DROP_REASONS),
                      f"{t['undecodable_lines']:,}")

    for name, recs in groups.items():
        licenses = sorted({r["license"] or "UNLICENSED" for r in recs})
        row(name, recs, "[red]UNLICENSED[/red]" if licenses == ["UNLICENSED"] else ", ".join(licenses))
    table.add_section()
    row("total", manifest["sources"], "")
    console = Console()
    if not console.is_terminal:  # piped or logged: rich would squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
    if manifest["unlicensed_sources"]:
        n = len(manifest["unlicensed_sources"])
        console.print(f"[yellow]warning:[/yellow] {n} source file(s) have no license (flagged in the manifest): "
                      f"{manifest['unlicensed_sources'][0]}{' ...' if n > 1 else ''}; add a SOURCE.yaml or --license")
    t = manifest["totals"]
    console.print(f"{t['text_bytes'] / 1e6:.2f} MB of text in {manifest['seconds']:.1f}s "
                  f"({manifest['throughput_mb_per_s']:.2f} MB/s) -> {out}")
