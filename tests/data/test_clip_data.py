"""`foundry data images`: image-text pairs from a captions JSONL and from WebDataset tar shards, with their
provenance; every bad input of issue 15 counted and skipped, or one clear line and a non-zero exit when
nothing usable is left, and never a half-written dataset."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundry.cli import main as cli_main
from foundry.data.images import load_pairs


def png(seed: int, size=(12, 12)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder(root: Path, lines: list[dict], files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    return root


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_folder_with_every_bad_input(tmp_path, capsys):
    good = png(1)
    files = {"a.png": good, "b.png": png(2), "dup.png": good, "trunc.png": png(3)[:40],
             "text.png": b"hello, not an image", "tiny.png": png(4, (1, 1))}
    lines = [{"image": "a.png", "caption": "a red circle", "label": "circle"},
             {"image": "b.png", "caption": "  two   blue squares ", "label": "square"},
             {"image": "dup.png", "caption": "the same picture again", "label": "circle"},
             {"image": "missing.png", "caption": "nowhere"},
             {"image": "trunc.png", "caption": "cut short"},
             {"image": "text.png", "caption": "not a picture"},
             {"image": "tiny.png", "caption": "one pixel"},
             {"image": "b.png", "caption": "   "}]
    src = write_folder(tmp_path / "src", lines, files)
    assert cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds"), "--license", "CC0-1.0",
                     "--val-fraction", "0"]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["pairs"] == 2
    assert manifest["dropped"] == {"bad_line": 1, "missing_image": 1, "broken_image": 2, "tiny_image": 1,
                                   "empty_caption": 1, "duplicate_image": 1}
    source = manifest["sources"][0]
    assert source["license"] == "CC0-1.0" and len(source["sha256"]) == 64 and source["kept"] == 2
    pairs = load_pairs(tmp_path / "ds", "train")
    assert pairs.captions == ["a red circle", "two blue squares"] and pairs.labels == ["circle", "square"]
    assert pairs.pixels(8).shape == (2, 3, 8, 8)
    assert "dropped:" in capsys.readouterr().out


def test_tar_shards_streamed_and_a_shard_cut_short(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "s-000.tar", [("x/k1", {"png": png(5), "txt": b"a green star", "cls": b"star"}),
                                     ("x/k2", {"jpg": png(6), "json": json.dumps({"caption": "a jpg", "label": 3}).encode()}),
                                     ("x/k3", {"txt": b"caption without image"}),
                                     ("x/k4", {"png": png(7)})])
    whole = write_tar(tmp_path / "full.tar", [(f"k{i}", {"png": png(10 + i), "txt": f"picture {i}".encode()})
                                              for i in range(6)])
    with tarfile.open(whole) as tar:
        cut = tar.getmember("k3.png").offset_data + 20
    (shards / "s-001.tar").write_bytes(whole.read_bytes()[:cut])  # cut inside the fourth sample's image
    assert cli_main(["data", "images", str(shards), "--out", str(tmp_path / "ds"), "--license", "CC-BY-4.0",
                     "--val-fraction", "0"]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["dropped"]["no_image"] == 1 and manifest["dropped"]["no_caption"] == 1
    assert manifest["dropped"]["truncated_shard"] == 1
    assert manifest["pairs"] == 2 + 3  # the cut shard's three samples before the cut are kept
    labels = load_pairs(tmp_path / "ds", "train").labels
    assert labels[:2] == ["star", "3"]


def test_nothing_usable_is_one_line_and_no_dataset(tmp_path, capsys):
    src = write_folder(tmp_path / "src", [{"image": "gone.png", "caption": "x"},
                                          {"image": "t.png", "caption": "y"}], {"t.png": b"\x89PNG\r\n"})
    code = cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds"), "--license", "CC0-1.0"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no usable image-text pairs" in err and "missing_image 1" in err and "broken_image 1" in err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_license_is_required_and_existing_output_kept(tmp_path, capsys):
    src = write_folder(tmp_path / "src", [{"image": "a.png", "caption": "x"}], {"a.png": png(1)})
    assert cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds")]) == 1
    assert "license" in capsys.readouterr().err
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep").write_text("mine")
    assert cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds"), "--license", "CC0-1.0"]) == 1
    assert (tmp_path / "ds" / "keep").read_text() == "mine"


@pytest.mark.parametrize("bad", ["{} and {}", "no slot"])
def test_bad_template(tmp_path, bad, capsys):
    src = write_folder(tmp_path / "src", [{"image": "a.png", "caption": "x"}], {"a.png": png(1)})
    assert cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds"), "--license", "CC0-1.0",
                     "--template", bad]) == 1
    assert "template" in capsys.readouterr().err
