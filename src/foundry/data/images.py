"""Image-text pairs: reading them (a folder with a captions JSONL, or WebDataset tar shards), decoding and
preprocessing images with Pillow, and `foundry data images`, which prepares a dataset with provenance.

Design choices:
- Preprocessing is transformers' `CLIPImageProcessor`, step for step: RGB, shortest edge to `size`
  (bicubic), centre crop to `size` x `size`, scale to [0, 1], normalise with CLIP's mean and std. So
  an exported model's `CLIPProcessor` sees what foundry's model saw in training.
- WebDataset shards (`.tar`, or gzipped `.tar.gz`) are read as a stream (`tarfile` mode `r|*`, one pass,
  no index): consecutive members
  sharing a key (the path up to the first dot of the file name) are one sample; the image is the
  `jpg/jpeg/png/webp/bmp/gif` member, the caption the `txt` member (or `json`'s "caption"/"text"), the
  label the `cls` member (or `json`'s "label"). The `webdataset` package is not needed.
- A prepared dataset is `images/<sha256>.<ext>` (the original bytes, so the hash is the file's),
  `pairs.jsonl` (image, caption, label, split, source, sha256) and `manifest.json` (each source's path,
  license and sha256; counts of what was kept and of what was dropped, by reason). It is written into a
  temporary directory and renamed into place, so a failure never leaves half a dataset.
- Bad input is counted and skipped: a caption line naming a missing image, an image that does not
  decode (not an image, truncated), an image smaller than `min_side` pixels on a side, an empty caption,
  a line that is not JSON, a shard cut short (what was read before the cut is kept). An exact duplicate
  image (same sha256) keeps its first caption. Nothing usable left: one DataError line. The manifest
  names the first `file:line` (or `shard:key`) dropped for each reason.
- Hostile input is bounded and confined: an image over `MAX_IMAGE_PIXELS` (read from its header, before
  decoding) or a file or tar member over `MAX_IMAGE_BYTES` is dropped (`huge_image`, `too_large`) without
  being decoded or read whole; a caption line's image path must resolve inside the JSONL's folder
  (`outside_source` otherwise: no `../` or absolute paths, no symlinks out); `--out` may not be, hold or
  sit inside a source. A caption that is not UTF-8 or a label that is not a string or number is a
  one-line DataError naming `file:line`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from foundry.errors import DataError

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (OpenAI) normalisation, as CLIPImageProcessor's
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
MIN_SIDE = 8
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height; decoded RGB is 3 bytes a pixel (48 MiB at the cap)
MAX_IMAGE_BYTES = 32 << 20  # an image file or tar member (and any other member) larger than this is not read
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # a gzipped shard is read as the same stream
DROP_REASONS = ("bad_line", "missing_image", "broken_image", "tiny_image", "empty_caption", "duplicate_image",
                "no_image", "no_caption", "truncated_shard", "huge_image", "too_large", "outside_source")


class BadImage(Exception):
    """An image that cannot be used; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode_image(data, min_side: int = MIN_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """bytes (or a path) -> an RGB PIL image, or BadImage("broken_image" | "tiny_image" | "huge_image").

    The size is read from the header before anything is decoded, so a small file that would inflate to
    gigabytes (a 10000x10000 PNG is a few hundred KB) costs nothing."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard, for formats whose frames grow past the header
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # over the cap: refused just below
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage("huge_image", f"{width}x{height} pixels, over the limit of {max_pixels:,}")
            img.load()  # decode now: a truncated file fails here, not later in training
            rgb = img.convert("RGB")
    except (BadImage, FileNotFoundError):
        raise
    except Image.DecompressionBombError:  # Pillow's guard fired first, at twice MAX_IMAGE_PIXELS
        raise BadImage("huge_image", f"over the limit of {max_pixels:,} pixels") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise BadImage("broken_image", f"not a decodable image ({type(exc).__name__})") from None
    if min(rgb.size) < min_side:
        raise BadImage("tiny_image", f"{rgb.size[0]}x{rgb.size[1]} pixels (at least {min_side} per side)")
    return rgb


def preprocess(image, size: int, mean=IMAGE_MEAN, std=IMAGE_STD) -> np.ndarray:
    """An RGB PIL image -> float32 (3, size, size), exactly as CLIPImageProcessor prepares it."""
    from PIL import Image

    width, height = image.size
    if width <= height:  # shortest edge to `size`, the other in proportion (truncated, as transformers does)
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    pixels = np.array(image.convert("RGB").resize((new_w, new_h), resample=Image.BICUBIC, reducing_gap=None))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    pixels = pixels[top:top + size, left:left + size]  # (size, size, 3) uint8
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    normed = (scaled - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return normed.transpose(2, 0, 1).astype(np.float32)  # (3, size, size)


# ---- reading sources ---------------------------------------------------------------------------
@dataclass
class RawPair:
    image: bytes | None
    ext: str
    caption: str | None
    label: str | None
    where: str  # file:line or shard:key, for messages
    counted: bool = False  # the image was already dropped (and counted) while reading: skip the pair


@dataclass
class DropCounts:
    counts: dict[str, int] = field(default_factory=lambda: {reason: 0 for reason in DROP_REASONS})
    first: dict[str, str] = field(default_factory=dict)  # reason -> where the first such drop was

    def add(self, reason: str, where: str | None = None) -> None:
        self.counts[reason] += 1
        if where is not None:
            self.first.setdefault(reason, where)


def _caption_of(value) -> str | None:
    return value.strip() if isinstance(value, str) else None


def _label_of(value, where: str) -> str | None:
    """A label as stored: a string (or a number, as its text); anything else is refused, not its repr."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: label must be a string or a number, got {type(value).__name__} {value!r:.60}")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None


def _image_ext(suffix: str) -> str:
    """The stored file's extension: a known image extension, else 'img' (never the source's own name)."""
    ext = suffix.lstrip(".").lower()
    return ext if ext in IMAGE_EXTENSIONS else "img"


def read_caption_jsonl(path: Path, drops: DropCounts) -> Iterator[RawPair]:
    """Lines `{"image": "relative/path.png", "caption": "...", "label": "..."}` (label optional); image
    paths are relative to the JSONL's folder and must resolve inside it."""
    root = path.parent.resolve()
    with open(path, "rb") as f:
        for n, raw_line in enumerate(f, 1):
            where = f"{path}:{n}"
            line = _utf8(raw_line, where)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = record["image"]
                if not isinstance(name, str) or not name or "\0" in name:
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                drops.add("bad_line", where)
                continue
            label = _label_of(record.get("label"), where)
            try:
                file = (root / name).resolve()
                if not file.is_relative_to(root):  # ../, an absolute path, or a symlink out of the folder
                    drops.add("outside_source", where)
                    continue
                if not file.is_file():
                    drops.add("missing_image", where)
                    continue
                if file.stat().st_size > MAX_IMAGE_BYTES:
                    drops.add("too_large", where)
                    continue
                data = file.read_bytes()
            except OSError:  # a name too long for the file system, a file that cannot be read...
                drops.add("missing_image", where)
                continue
            yield RawPair(data, _image_ext(file.suffix), _caption_of(record.get("caption")), label, where)


def read_tar_shard(path: Path, drops: DropCounts) -> Iterator[RawPair]:
    """A WebDataset shard as a stream: consecutive members with one key are one sample."""

    def sample_of(key: str, parts: dict[str, bytes | None]) -> RawPair:
        if any(v is None for v in parts.values()):  # a member over the size cap: the sample is dropped, counted
            return RawPair(None, "", None, None, f"{path}:{key}", counted=True)
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        caption, label = None, None
        where = f"{path}:{key}"
        if "txt" in parts:
            caption = _utf8(parts["txt"], f"{where}.txt").strip()
        if "json" in parts:
            try:
                meta = json.loads(parts["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = None
            if isinstance(meta, dict):
                caption = caption if caption is not None else _caption_of(meta.get("caption", meta.get("text")))
                label = _label_of(meta.get("label"), f"{where}.json")
        if "cls" in parts:
            label = _utf8(parts["cls"], f"{where}.cls").strip()
        return RawPair(parts.get(image_ext) if image_ext else None, image_ext or "", caption, label, where)

    key, parts, complete = None, {}, False
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, name = member.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not dot:
                    continue
                member_key = f"{directory}/{stem}" if directory else stem
                if member_key != key and key is not None:  # a new key: the previous sample is complete
                    yield sample_of(key, parts)
                    parts = {}
                key = member_key
                if member.size > MAX_IMAGE_BYTES:  # from the header: the member is skipped, never read
                    drops.add("too_large", f"{path}:{member.name}")
                    parts[ext.lower()] = None
                    continue
                parts[ext.lower()] = tar.extractfile(member).read()
            complete = True
    except (tarfile.TarError, EOFError, OSError, ValueError):
        drops.add("truncated_shard")  # the sample being read at the cut is lost; those before it are kept
        return
    if complete and key is not None:
        yield sample_of(key, parts)


def iter_source(path: Path, drops: DropCounts) -> Iterator[RawPair]:
    """A captions JSONL, a folder holding `captions.jsonl` or `*.tar` shards, or one `.tar` shard."""
    if path.is_dir():
        if (path / "captions.jsonl").is_file():
            yield from read_caption_jsonl(path / "captions.jsonl", drops)
            return
        shards = sorted(p for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES))
        if not shards:
            raise DataError(f"{path}: no captions.jsonl and no .tar shards in this folder")
        for shard in shards:
            yield from read_tar_shard(shard, drops)
        return
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.name.endswith(SHARD_SUFFIXES):
        yield from read_tar_shard(path, drops)
    elif path.suffix == ".jsonl":
        yield from read_caption_jsonl(path, drops)
    else:
        raise DataError(f"{path}: expected a captions .jsonl, a .tar shard, or a folder of either")


def source_digest(path: Path) -> str:
    """sha256 of a source: of the file, or of its files' names and hashes for a folder."""
    from foundry.utils.io import sha256_file

    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    blob = "\n".join(f"{p.relative_to(path).as_posix()} {sha256_file(p)}" for p in files)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- prepare -----------------------------------------------------------------------------------
def check_apart(source: Path, out: Path) -> None:
    """Refuse an `out` that is, holds or sits inside `source` (for a captions JSONL: its folder, where its
    images are): replacing `out` would delete the source, and writing into it would change it."""
    source, target = source.resolve(), out.resolve()
    area = source.parent if source.is_file() and source.suffix == ".jsonl" else source
    if target == area or target.is_relative_to(area) or area.is_relative_to(target):
        raise DataError(f"{out}: the output may not be, hold or sit inside the source {source}; "
                        "choose an --out elsewhere")


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic by content: the same image lands in the same split whatever else is in the set."""
    return "val" if int(sha256[:8], 16) / 0x100000000 < val_fraction else "train"


def prepare_pairs(sources: list[dict], out: str | Path, val_fraction: float = 0.1, min_side: int = MIN_SIDE,
                  templates: list[str] | None = None, overwrite: bool = False) -> dict:
    """`sources`: [{"path", "license", "name"?, "description"?}]. Writes `out` (atomically); returns the manifest.

    `templates`: zero-shot prompts for the labels ("a handwritten digit {}"), kept in the manifest."""
    from foundry.utils.io import atomic_directory, atomic_write_json, code_version

    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction}: must be in [0, 1)")
    for template in templates or []:
        if template.count("{}") != 1:
            raise DataError(f"prompt template {template!r}: must hold one '{{}}' where the label goes")
    out = Path(out)
    for spec in sources:
        check_apart(Path(spec["path"]), out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    seen: set[str] = set()
    manifest_sources, splits, labels = [], {"train": 0, "val": 0}, {}
    drops = DropCounts()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "pairs.jsonl", "w", encoding="utf-8") as pairs_file:
            for spec in sources:
                path = Path(spec["path"])
                before = dict(drops.counts)
                read = kept = 0
                for raw in iter_source(path, drops):
                    read += 1
                    if raw.counted:
                        continue
                    if raw.image is None:
                        drops.add("no_image", raw.where)
                        continue
                    if raw.caption is None:
                        drops.add("no_caption", raw.where)
                        continue
                    caption = " ".join(raw.caption.split())
                    if not caption:
                        drops.add("empty_caption", raw.where)
                        continue
                    try:
                        decode_image(raw.image, min_side)
                    except BadImage as bad:
                        drops.add(bad.reason, raw.where)
                        continue
                    digest = hashlib.sha256(raw.image).hexdigest()
                    if digest in seen:
                        drops.add("duplicate_image", raw.where)
                        continue
                    seen.add(digest)
                    name = f"images/{digest}.{raw.ext}"
                    (tmp / name).write_bytes(raw.image)
                    split = split_of(digest, val_fraction)
                    splits[split] += 1
                    kept += 1
                    if raw.label is not None:
                        labels[raw.label] = labels.get(raw.label, 0) + 1
                    pairs_file.write(json.dumps({"image": name, "caption": caption, "label": raw.label,
                                                 "split": split, "source": spec.get("name") or path.name,
                                                 "sha256": digest}) + "\n")
                manifest_sources.append({
                    "name": spec.get("name") or path.name, "path": str(path.resolve()), "license": spec["license"],
                    "description": spec.get("description", ""), "sha256": source_digest(path), "read": read,
                    "kept": kept, "dropped": {k: drops.counts[k] - before[k] for k in DROP_REASONS
                                              if drops.counts[k] != before[k]}})
        total = splits["train"] + splits["val"]
        dropped = {k: v for k, v in drops.counts.items() if v}
        if total == 0:
            said = ", ".join(f"{k} {v}" for k, v in dropped.items()) or "no samples found"
            raise DataError(f"{', '.join(str(s['path']) for s in sources)}: no usable image-text pairs ({said})")
        if splits["train"] == 0:
            raise DataError(f"{out}: every one of the {total} pairs fell in the val split; lower --val-fraction")
        manifest = {"kind": "image-text pairs", "pairs": total, "splits": splits, "dropped": dropped,
                    "first_dropped": {k: drops.first[k] for k in DROP_REASONS if k in drops.first},
                    "labels": dict(sorted(labels.items())), "sources": manifest_sources,
                    "templates": list(templates or ["{}"]), "val_fraction": val_fraction, "min_side": min_side,
                    "code_version": code_version()}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


# ---- reading a prepared dataset ----------------------------------------------------------------
@dataclass
class PairSet:
    """One split of a prepared dataset: image files, captions and labels (None where there is none)."""

    root: Path
    images: list[str]
    captions: list[str]
    labels: list[str | None]
    templates: list[str] = field(default_factory=lambda: ["{}"])  # zero-shot prompts, from the manifest
    lines: list[int] = field(default_factory=list)  # each pair's line in pairs.jsonl, for messages

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, size: int) -> np.ndarray:
        """(N, 3, size, size) float32, preprocessed; an image gone missing or broken since the dataset was
        prepared is a one-line DataError naming it and its line."""
        out = np.empty((len(self.images), 3, size, size), dtype=np.float32)
        for i, name in enumerate(self.images):
            file = self.root / name
            at = f"{self.root / 'pairs.jsonl'}:{self.lines[i]}" if i < len(self.lines) else str(self.root)
            try:
                image = decode_image(file, min_side=1)
            except FileNotFoundError:
                raise DataError(f"{at}: image {file} is missing; re-run 'foundry data images'") from None
            except BadImage as bad:
                raise DataError(f"{at}: image {file}: {bad}; re-run 'foundry data images'") from None
            out[i] = preprocess(image, size)
        return out


def load_pairs(dataset: str | Path, split: str | None = "train") -> PairSet:
    """A split ("train", "val") of a dataset from `foundry data images`; None: all of it."""
    root = Path(dataset)
    file = root / "pairs.jsonl"
    if not file.is_file():
        raise DataError(f"{root}: not an image-text dataset (no pairs.jsonl); make one with 'foundry data images'")
    images, captions, labels, lines = [], [], [], []
    resolved = root.resolve()
    with open(file, "rb") as f:
        for n, raw_line in enumerate(f, 1):
            try:
                record = json.loads(raw_line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{file}:{n}: not valid JSON (re-run 'foundry data images')") from None
            if not isinstance(record, dict):
                raise DataError(f"{file}:{n}: not a pair object (re-run 'foundry data images')")
            missing = [k for k in ("image", "caption", "split") if not isinstance(record.get(k), str)]
            if missing:
                raise DataError(f"{file}:{n}: no {', '.join(missing)} (re-run 'foundry data images')")
            if not (resolved / record["image"]).resolve().is_relative_to(resolved):
                raise DataError(f"{file}:{n}: image {record['image']!r} is outside the dataset")
            if split is None or record["split"] == split:
                images.append(record["image"])
                captions.append(record["caption"])
                labels.append(_label_of(record.get("label"), f"{file}:{n}"))
                lines.append(n)
    if not images:
        raise DataError(f"{file}: no pairs in split '{split}'")
    templates = ["{}"]
    if (root / "manifest.json").is_file():
        templates = json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("templates") or templates
    return PairSet(root, images, captions, labels, list(templates), lines)
