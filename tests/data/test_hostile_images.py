"""Hostile image data (issue 30): `foundry data images` bounds images by their header and members by their
size, confines caption paths to their folder, never deletes a source; a damaged prepared dataset, a
one-label set or a CLIP checkpoint given to a language-model verb is one line and a non-zero exit."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foundry.cli import main as cli_main
from foundry.data.images import load_pairs


def png(seed: int, size=(12, 12)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG: about 12 KB on disk, 300 MB decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress((b"\0" * (1 + (width + 7) // 8)) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def folder(root: Path, lines: list, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "captions.jsonl").write_bytes(b"".join(
        (x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return root


def one_line_error(capsys, code: int) -> str:
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def prepare(src, out, *extra) -> int:
    return cli_main(["data", "images", str(src), "--out", str(out), "--license", "CC0-1.0", "--val-fraction", "0",
                     *extra])


def test_huge_images_and_members_are_dropped_unread(tmp_path, capsys):
    long_name = "a" * 300 + ".png"
    src = folder(tmp_path / "src", [
        {"image": "ok.png", "caption": "a fine picture"},
        {"image": "bomb.png", "caption": "ten thousand squared"},
        {"image": long_name, "caption": "a name too long for the file system"},
        {"image": "../secret.png", "caption": "up and out"},
        {"image": str(tmp_path / "secret.png"), "caption": "an absolute path"},
        {"image": "link.png", "caption": "a symlink out"},
    ], {"ok.png": png(1), "bomb.png": bomb_png()})
    (tmp_path / "secret.png").write_bytes(png(2))
    os.symlink(tmp_path / "secret.png", src / "link.png")
    start = time.monotonic()
    assert prepare(src, tmp_path / "ds") == 0
    assert time.monotonic() - start < 10  # the bomb was judged by its header, never decoded
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["pairs"] == 1
    assert manifest["dropped"] == {"huge_image": 1, "missing_image": 1, "outside_source": 3}
    assert manifest["first_dropped"]["missing_image"].endswith("captions.jsonl:3")  # the 300-character name
    assert manifest["first_dropped"]["outside_source"].endswith("captions.jsonl:4")
    assert "missing_image 1 (first " in capsys.readouterr().out  # the summary line names it too
    stored = sorted(p.read_bytes() for p in (tmp_path / "ds" / "images").iterdir())
    assert stored == [png(1)]  # the secret was not copied in

    from foundry.data.images import MAX_IMAGE_BYTES

    shard = tmp_path / "shards" / "big.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for key, ext, data in (("000", "png", png(3)), ("000", "txt", b"kept"),
                               ("001", "png", png(4)), ("001", "txt", b"x" * (MAX_IMAGE_BYTES + 1)),
                               ("002", "png", png(5)), ("002", "txt", b"also kept")):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert prepare(shard.parent, tmp_path / "ds2") == 0
    manifest = json.loads((tmp_path / "ds2" / "manifest.json").read_text())
    assert manifest["pairs"] == 2 and manifest["dropped"] == {"too_large": 1}


def test_out_may_not_be_hold_or_sit_inside_the_source(tmp_path, capsys):
    src = folder(tmp_path / "src", [{"image": "a.png", "caption": "a picture"}], {"a.png": png(1)})
    for out in (src, src / "inside", tmp_path):
        err = one_line_error(capsys, prepare(src, out, "--overwrite"))
        assert "may not be, hold or sit inside the source" in err
        assert (src / "a.png").read_bytes() == png(1) and (src / "captions.jsonl").is_file()
    err = one_line_error(capsys, prepare(src / "captions.jsonl", src, "--overwrite"))
    assert "source" in err and (src / "a.png").is_file()


@pytest.mark.parametrize("line, expect", [
    (b'{"image": "a.png", "caption": "caf\xe9 au lait"}', "captions.jsonl:2: not UTF-8"),
    (json.dumps({"image": "a.png", "caption": "labelled", "label": {"x": 1}}).encode(),
     "captions.jsonl:2: label must be a string or a number"),
])
def test_bad_captions_and_labels_name_their_line(tmp_path, capsys, line, expect):
    src = folder(tmp_path / "src", [{"image": "b.png", "caption": "good"}, line], {"a.png": png(1), "b.png": png(2)})
    err = one_line_error(capsys, prepare(src, tmp_path / "ds"))
    assert expect in err
    assert not (tmp_path / "ds").exists()


@pytest.fixture()
def dataset(tmp_path):
    files = {f"{i}.png": png(i) for i in range(6)}
    src = folder(tmp_path / "src", [{"image": f"{i}.png", "caption": f"picture {i}", "label": "one"}
                                    for i in range(6)], files)
    assert cli_main(["data", "images", str(src), "--out", str(tmp_path / "ds"), "--license", "CC0-1.0",
                     "--val-fraction", "0.5"]) == 0
    return tmp_path / "ds"


def clip_checkpoint(path: Path) -> Path:
    from foundry.checkpoints import save_checkpoint
    from foundry.data.clip_tokenizer import ClipTokenizer
    from foundry.model.clip import Clip, config_from_preset

    tokenizer = ClipTokenizer.train(["picture one", "picture two"] * 3, vocab_size=540, min_frequency=1)
    torch.manual_seed(0)
    save_checkpoint(path, Clip(config_from_preset("test", vocab_size=tokenizer.vocab_size)), tokenizer,
                    meta={"stage": "test"})
    return path


def test_damaged_prepared_dataset_is_one_line(dataset, capsys):
    pairs = [json.loads(x) for x in (dataset / "pairs.jsonl").read_text().splitlines()]
    first = dataset / pairs[0]["image"]
    first.write_bytes(b"garbage, not an image")
    with pytest.raises(Exception) as bad:
        load_pairs(dataset, None).pixels(16)
    assert type(bad.value).__name__ == "DataError" and "pairs.jsonl:1" in str(bad.value)
    first.unlink()
    with pytest.raises(Exception) as gone:
        load_pairs(dataset, None).pixels(16)
    assert type(gone.value).__name__ == "DataError" and "missing" in str(gone.value)
    del pairs[1]["split"]
    (dataset / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with pytest.raises(Exception) as no_split:
        load_pairs(dataset, "train")
    assert type(no_split.value).__name__ == "DataError" and "pairs.jsonl:2: no split" in str(no_split.value)


def test_clip_eval_one_label_set_and_out_checks(dataset, tmp_path, capsys):
    ckpt = clip_checkpoint(tmp_path / "clip")
    (tmp_path / "afile").write_text("x")
    err = one_line_error(capsys, cli_main(["clip", "eval", str(ckpt), "--data", f"d={dataset}", "--out",
                                           str(tmp_path / "afile")]))
    assert "is a file" in err
    out = tmp_path / "eval"
    assert cli_main(["clip", "eval", str(ckpt), "--data", f"d={dataset}", "--out", str(out)]) == 0  # one label
    results = json.loads((out / "results.json").read_text())["results"]["d"]
    assert "one label" in results["linear_probe_skipped"] and "linear_probe_acc" not in results
    before = (out / "results.json").read_bytes()
    err = one_line_error(capsys, cli_main(["clip", "eval", str(ckpt), "--data", f"d={dataset}", "--out", str(out)]))
    assert "--overwrite" in err and (out / "results.json").read_bytes() == before
    assert cli_main(["clip", "eval", str(ckpt), "--data", f"d={dataset}", "--out", str(out), "--overwrite"]) == 0


def test_clip_checkpoint_given_to_language_model_verbs(tmp_path, capsys):
    ckpt = clip_checkpoint(tmp_path / "clip")
    chats = tmp_path / "chat.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    (tmp_path / "data").mkdir()
    sft = tmp_path / "sft.yaml"
    sft.write_text(f"init: {ckpt}\ndata: {chats}\nout_dir: {tmp_path / 'sft'}\n")
    for argv, verb in ((["generate", str(ckpt), "--prompt", "hi"], "foundry generate"),
                       (["chat", str(ckpt)], "foundry chat"),
                       (["eval", str(ckpt), "--data", str(tmp_path / "data")], "foundry eval"),
                       (["sft", "--config", str(sft)], "foundry sft"),
                       (["bakeoff", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "b"),
                         "--model", f"m={ckpt}"], "foundry bakeoff")):
        err = one_line_error(capsys, cli_main(argv))
        assert "image-text (CLIP) checkpoint" in err and verb in err and "needs a language model" in err, err


def test_clip_training_needs_two_pairs_a_batch_and_checks_before_writing(dataset, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "clip.yaml"
    recipe.write_text(yaml.safe_dump({"data": str(dataset), "model": {"preset": "test"}, "vocab_size": 520,
                                      "train": {"max_steps": 2, "progress": False, "threads": 1,
                                                "eval_every": 1000, "checkpoint_every": 1000}}))
    run = tmp_path / "run"
    err = one_line_error(capsys, cli_main(["clip", "--config", str(recipe), f"out_dir={run}",
                                           "train.micro_batch_size=1"]))
    assert "at least 2 pairs" in err and not run.exists()
    err = one_line_error(capsys, cli_main(["clip", "--config", str(recipe), f"out_dir={run}",
                                           "train.micro_batch_size=64"]))
    assert "more than the" in err and not run.exists()  # validated before run.json: the re-run is not refused
    assert cli_main(["clip", "--config", str(recipe), f"out_dir={run}", "train.micro_batch_size=2"]) == 0
