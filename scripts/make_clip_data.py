"""Make the two bundled image-text sets of recipes/clip.yaml, as WebDataset tar shards (no download).

    python scripts/make_clip_data.py            # writes data/clip/scenes/ and data/clip/digits/

- scenes (the general set): 32x32 pictures rendered with Pillow from random parameters (a shape, a
  colour, how many, where, a background shade, small jitter); the caption is written from the same
  parameters, so it is true of its picture by construction. This script, with its seed, is the data's
  provenance; the pictures are ours (Apache-2.0, as the repository).
- digits (the specialised set): scikit-learn's copy of the UCI "Optical Recognition of Handwritten
  Digits" test set (1,797 8x8 greyscale scans, CC BY 4.0, Alpaydin and Kaynak 1998), kept at 8x8 (16 grey
  levels scaled to 0..255, white ink on black; preprocessing upscales them), captioned with the digit's name.

Each sample is `KEY.png` + `KEY.txt` (caption) + `KEY.cls` (label: the shape, or the digit's name), in
gzipped shards (`.tar.gz`) of at most 1,000 samples; tar members and gzip headers carry no time stamps, so a
re-run is byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
           "purple": (140, 60, 180), "white": (245, 245, 245)}
COUNTS = ("one", "two", "three")
POSITIONS = {"on the left": (0.28, 0.5), "on the right": (0.72, 0.5), "at the top": (0.5, 0.28),
             "at the bottom": (0.5, 0.72), "in the middle": (0.5, 0.5)}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SCENE_TEMPLATES = ("{count} {colour} {shapes} {where}", "a picture of {count} {colour} {shapes} {where}",
                   "{where}, {count} {colour} {shapes}", "an image with {count} {colour} {shapes} {where}")
DIGIT_TEMPLATES = ("a handwritten digit {d}", "the number {d} written by hand", "a scan of a handwritten {d}",
                   "{d}, handwritten")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # cross
        w = max(1.0, r / 2.5)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def render_scene(rng: random.Random) -> tuple[Image.Image, str, str]:
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    count, where = rng.randrange(1, 4), rng.choice(list(POSITIONS))
    shade = rng.randrange(40, 110)
    img = Image.new("RGB", (SIZE, SIZE), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    fx, fy = POSITIONS[where]
    r = {1: 5.5, 2: 4.0, 3: 3.5}[count] + rng.uniform(-0.5, 0.5)
    # a group of `count` shapes around the position, laid out across (left/right/middle) or along it
    offsets = {1: [(0, 0)], 2: [(-1, 0), (1, 0)], 3: [(-1, 0), (0, 0), (1, 0)]}[count]
    vertical = where in ("on the left", "on the right")
    gap = 2.3 * r
    for dx, dy in offsets:
        ox, oy = (dy * gap, dx * gap) if vertical else (dx * gap, dy * gap)
        draw_shape(draw, shape, fx * SIZE + ox + rng.uniform(-1, 1), fy * SIZE + oy + rng.uniform(-1, 1), r,
                   COLOURS[colour])
    shapes = shape + ("es" if shape == "cross" and count > 1 else "s" if count > 1 else "")
    caption = rng.choice(SCENE_TEMPLATES).format(count=COUNTS[count - 1], colour=colour, shapes=shapes, where=where)
    return img, caption, shape


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_shards(samples, out_dir: Path, prefix: str, per_shard: int = 1000) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{prefix}-*.tar*"):
        old.unlink()
    n, tar = 0, None
    for key, image, caption, label in samples:
        if n % per_shard == 0:
            if tar is not None:
                tar.close()
            # gzip: the 512-byte tar headers are most of a small picture's bytes; mtime 0 keeps it reproducible
            raw = gzip.GzipFile(out_dir / f"{prefix}-{n // per_shard:03d}.tar.gz", "wb", mtime=0)
            tar = tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT)
        for ext, data in (("png", png_bytes(image)), ("txt", caption.encode()), ("cls", label.encode())):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        n += 1
    if tar is not None:
        tar.close()
        tar.fileobj.close()
    return n


def scenes(count: int, seed: int):
    rng = random.Random(seed)
    for i in range(count):
        image, caption, label = render_scene(rng)
        yield f"scene{i:05d}", image, caption, label


def digits(seed: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = random.Random(seed)
    for i, (pixels, target) in enumerate(zip(data.images, data.target)):
        grey = Image.fromarray(np.uint8(np.round(pixels * 255 / 16)), mode="L")
        image = grey  # as scanned, 8x8 greyscale: preprocessing upscales it (bicubic) and makes it RGB
        name = DIGITS[int(target)]
        yield f"digit{i:05d}", image, rng.choice(DIGIT_TEMPLATES).format(d=name), name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "clip"))
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    n = write_shards(scenes(args.scenes, args.seed), out / "scenes", "scenes")
    m = write_shards(digits(args.seed), out / "digits", "digits")
    print(f"{n} scenes -> {out / 'scenes'}, {m} digits -> {out / 'digits'}")


if __name__ == "__main__":
    main()
