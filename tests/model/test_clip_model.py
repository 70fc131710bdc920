"""The CLIP model against transformers: an exported directory loads in `CLIPModel` and `CLIPProcessor`, the
processor prepares images and captions exactly as foundry does, and the image and text embeddings agree
within 1e-4. The losses on hand-computed numbers. The stage: the loss falls on tiny generated data, and a
continued run starts from its parent."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from foundry.checkpoints import load_model, save_checkpoint
from foundry.cli import main as cli_main
from foundry.data.clip_tokenizer import ClipTokenizer
from foundry.data.images import preprocess
from foundry.model.clip import Clip, config_from_preset
from foundry.train.clip import clip_loss_sum, siglip_loss_sum


def _script(name: str):
    """A script from scripts/ (not a package), imported by its path."""
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_clip_data = _script("make_clip_data")

CAPTIONS = ["a red circle on the left", "two blue squares at the top", "three green triangles in the middle",
            "one yellow cross at the bottom", "a picture of two white circles on the right"] * 4


def tiny_model(seed: int = 0) -> tuple[Clip, ClipTokenizer]:
    tokenizer = ClipTokenizer.train(CAPTIONS, vocab_size=560, min_frequency=1)
    torch.manual_seed(seed)
    model = Clip(config_from_preset("test", vocab_size=tokenizer.vocab_size))
    with torch.no_grad():  # move every norm and bias off its initial value, so a misplaced one shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), tokenizer


def hf_features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_export_loads_in_transformers_with_matching_embeddings(tmp_path):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    model, tokenizer = tiny_model()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, meta={"stage": "test"})
    loaded, loaded_tok = load_model(tmp_path / "ckpt")  # the store round trip
    assert cli_main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0

    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path / "hf")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((16, 16), (24, 40), (37, 21))]
    texts = ["a red circle", "Two BLUE   squares, at the top!", "an unseen zebra (with 7 stripes)"]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding="max_length",
                       max_length=model.config.text_len, truncation=True)

    pixels = torch.from_numpy(np.stack([preprocess(img, model.config.image_size) for img in images]))
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-5)
    ids = loaded_tok.encode_batch(texts, model.config.text_len)
    assert torch.equal(inputs["input_ids"], ids)

    with torch.no_grad():
        ours_image = loaded.encode_image(pixels, normalize=False)
        ours_text = loaded.encode_text(ids, normalize=False)
        theirs_image = hf_features(hf.get_image_features(pixel_values=inputs["pixel_values"]))
        theirs_text = hf_features(hf.get_text_features(input_ids=inputs["input_ids"],
                                                       attention_mask=inputs["attention_mask"]))
        logits = hf(**inputs).logits_per_image
    assert (ours_image - theirs_image).abs().max() < 1e-4
    assert (ours_text - theirs_text).abs().max() < 1e-4
    ours_logits = loaded.logit_scale.exp() * loaded.encode_image(pixels) @ loaded.encode_text(ids).T
    assert (ours_logits - logits).abs().max() < 1e-3


def test_tokenizer_rows_and_unseen_words():
    tokenizer = ClipTokenizer.train(CAPTIONS, vocab_size=560, min_frequency=1)
    rows = tokenizer.encode_batch(["a red circle", "zebra " * 40], 12)
    assert rows[0, 0] == tokenizer.bos_id and tokenizer.eos_id in rows[0].tolist()
    assert rows[1, -1] == tokenizer.eos_id  # truncated, end-of-text kept
    assert tokenizer.decode(tokenizer.encode("a RED circle")) == "a red circle"
    assert tokenizer.decode(tokenizer.encode("zebra, 7 Ünïcode")) == "zebra , 7 ünïcode"  # unseen: byte pieces


def test_clip_loss_on_hand_computed_numbers():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(math.log(2.0))
    # logits_per_image = 2 * [[1, .6], [0, .8]]; rows of logits_per_text = 2 * [[1, 0], [.6, .8]]
    ce = lambda row, t: -row[t] + math.log(sum(math.exp(v) for v in row))  # noqa: E731
    expected = (ce([2, 1.2], 0) + ce([0, 1.6], 1) + ce([2, 0], 0) + ce([1.2, 1.6], 1)) / 2
    assert abs(float(clip_loss_sum(image, text, image, text, scale)) - expected) < 1e-6
    bias = torch.tensor(-1.0)
    sig = lambda z: -math.log(1 / (1 + math.exp(-z)))  # noqa: E731
    expected = sig(2 - 1) + sig(-(1.2 - 1)) + sig(-(0 - 1)) + sig(1.6 - 1)
    assert abs(float(siglip_loss_sum(image, text, scale, bias)) - expected) < 1e-6


def make_scene_dataset(root: Path, n: int = 96) -> Path:
    make_clip_data.write_shards(make_clip_data.scenes(n, seed=3), root / "shards", "scenes", per_shard=64)
    assert cli_main(["data", "images", str(root / "shards"), "--out", str(root / "data"), "--license", "Apache-2.0",
                     "--val-fraction", "0.25", "--template", "a picture of a {}"]) == 0
    return root / "data"


@pytest.mark.slow
def test_clip_stage_loss_falls_and_continues(tmp_path):
    import yaml

    data = make_scene_dataset(tmp_path)
    recipe = tmp_path / "clip.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": str(data), "model": {"preset": "test"},
        "train": {"micro_batch_size": 16, "lr": 6e-3, "warmup_steps": 5, "eval_every": 1000, "log_every": 5,
                  "progress": False, "threads": 1, "checkpoint_every": 1000, "eval_batches": 2}}))
    assert cli_main(["clip", "--config", str(recipe), f"out_dir={tmp_path / 'run'}", "train.max_steps=80",
                     f"zero_shot={{scenes: {data}}}"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    # chance on a batch of 16 is ln 16 = 2.77 nats per pair; the trained model is far below it
    assert losses[-1] < math.log(16) - 1.0 and losses[-1] < losses[0] - 1.0, losses
    final = json.loads((tmp_path / "run" / "run.json").read_text())["results"]
    assert 0 <= final["scenes/zero_shot_acc"] <= 1 and "scenes/i2t_r@1" in final
    # continual pretraining: starts from the parent's weights (evaluated at step 0) with its tokenizer
    assert cli_main(["clip", "--config", str(recipe), f"init={tmp_path / 'run'}", f"out_dir={tmp_path / 'more'}",
                     "train.max_steps=5", f"replay={data}", "replay_fraction=0.5"]) == 0
    record = json.loads((tmp_path / "more" / "run.json").read_text())
    assert record["parents"]["replay"] == str(data.resolve())
    more = [json.loads(line) for line in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    assert more[0]["step"] == 0 and abs(more[0]["val/loss"] - final["best/val/loss"]) < 1e-4  # init: the best checkpoint
    assert (tmp_path / "more" / "checkpoints").is_dir()
    assert cli_main(["clip", "eval", str(tmp_path / "more"), "--data", f"scenes={data}", "--out",
                     str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["scenes"]
    assert {"zero_shot_acc", "chance", "linear_probe_acc", "i2t_r@10", "t2i_r@10"} <= set(results)
    assert (tmp_path / "eval" / "retrieval-scenes.png").is_file()
    card = (tmp_path / "eval" / "model_card.md").read_text()
    assert card.count("license **Apache-2.0**") == 2  # both stages trained on the scenes, each listed
    # the run's report card carries the image-text evaluation: its table and the retrieval grid
    from foundry.eval.report import write_report

    write_report(tmp_path, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Image-text evaluation" in report and "| scenes |" in report
    assert "(plots/clip_eval_retrieval-scenes.png)" in report
    assert (tmp_path / "report" / "plots" / "clip_eval_retrieval-scenes.png").is_file()
