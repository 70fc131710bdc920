"""What an image-text model can and cannot do: zero-shot classification, retrieval, a linear probe.

- Zero-shot classification (Radford et al. 2021, section 3.1.4): each class is the mean of its prompts'
  unit text embeddings (the templates, e.g. "a handwritten digit {}", filled with the class name),
  renormalised; an image is given the class whose embedding is nearest. Chance is 1 / classes.
- Retrieval recall@k, both ways, on a split's pairs: image -> text and text -> image. Generated captions
  repeat ("a red circle" may describe many images), so a retrieved item counts as a hit when its caption
  is the query's caption, not only when it is the very pair.
- Linear probe: multinomial logistic regression (scikit-learn) on frozen, unit-length image embeddings of
  the train split, scored on the val split: how much of the labels the image features hold at all,
  whether or not the text side can name them.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_TEMPLATES = ("{}",)


@torch.no_grad()
def embed_images(model, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, 3, S, S) -> (N, D) unit rows."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(pixels[i:i + batch].to(device)).float().cpu()
                      for i in range(0, pixels.shape[0], batch)])


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], batch: int = 256) -> torch.Tensor:
    """(N,) captions -> (N, D) unit rows."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        ids = tokenizer.encode_batch(texts[i:i + batch], model.config.text_len).to(device)
        out.append(model.encode_text(ids).float().cpu())
    return torch.cat(out)


def class_embeddings(model, tokenizer, classes: list[str], templates) -> torch.Tensor:
    """(C, D): each class's prompts averaged and renormalised."""
    templates = list(templates) or list(DEFAULT_TEMPLATES)
    prompts = [t.format(c) for c in classes for t in templates]
    z = embed_texts(model, tokenizer, prompts).view(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(z, dim=-1)


def zero_shot(model, tokenizer, images: torch.Tensor, labels: list[str], templates, classes: list[str] | None = None) -> dict:
    """Accuracy of naming each image's label by its prompts alone; with chance (1 / classes) beside it."""
    classes = classes or sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    truth = torch.tensor([index[label] for label in labels])
    predicted = (images @ class_embeddings(model, tokenizer, classes, templates).T).argmax(dim=-1)
    per_class = {c: float((predicted[truth == i] == i).float().mean()) for i, c in enumerate(classes)
                 if (truth == i).any()}
    return {"zero_shot_acc": float((predicted == truth).float().mean()), "chance": 1 / len(classes),
            "classes": len(classes), "n": len(labels), "per_class": per_class,
            "predicted": predicted.tolist()}


def retrieval_recall(images: torch.Tensor, texts: torch.Tensor, captions: list[str], ks=(1, 5, 10)) -> dict:
    """recall@k image -> text and text -> image; a hit is a retrieved item with the query's caption."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])  # (N,) same id = same caption
    sims = images @ texts.T  # (N images, N texts)
    out = {}
    for direction, scores in (("i2t", sims), ("t2i", sims.T)):
        ranked = scores.argsort(dim=-1, descending=True)  # (N, N) indices of the other side
        hits = caption_id[ranked] == caption_id[:, None]  # (N, N)
        for k in ks:
            out[f"{direction}_r@{k}"] = float(hits[:, :k].any(dim=-1).float().mean())
    return out


def linear_probe(train_features: torch.Tensor, train_labels: list[str], val_features: torch.Tensor,
                 val_labels: list[str], seed: int = 0) -> dict:
    """Logistic regression on frozen image embeddings: val accuracy, with the majority class beside it."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    probe.fit(train_features.numpy(), np.array(train_labels))
    accuracy = float((probe.predict(val_features.numpy()) == np.array(val_labels)).mean())
    majority = max(val_labels.count(label) for label in set(val_labels)) / len(val_labels)
    return {"linear_probe_acc": accuracy, "majority": majority}


def evaluate_pairs(model, tokenizer, pairset, templates, train_set=None, probe: bool = True) -> dict:
    """Every measure on one split of a dataset (`foundry.data.images.PairSet`): zero-shot (when it has
    labels), retrieval, and the linear probe (when `train_set` has labels too)."""
    model.eval()
    pixels = torch.from_numpy(pairset.pixels(model.config.image_size))
    images = embed_images(model, pixels)
    texts = embed_texts(model, tokenizer, pairset.captions)
    results = {"n": len(pairset), **retrieval_recall(images, texts, pairset.captions)}
    labelled = all(label is not None for label in pairset.labels)
    if labelled:
        shot = zero_shot(model, tokenizer, images, list(pairset.labels), templates)
        results.update({k: v for k, v in shot.items() if k not in ("n", "predicted")})
        results["_images"], results["_predicted"] = images, shot["predicted"]
    if probe and labelled and train_set is not None and all(label is not None for label in train_set.labels):
        if len(set(train_set.labels)) < 2:  # logistic regression needs two classes to separate
            results["linear_probe_skipped"] = f"one label ({train_set.labels[0]!r}) in the train split"
            return results
        train_images = embed_images(model, torch.from_numpy(train_set.pixels(model.config.image_size)))
        results.update(linear_probe(train_images, list(train_set.labels), images, list(pairset.labels)))
    return results


def zero_shot_evaluator(pairset, templates):
    """A factory for the training loop: tokenizer -> fn(model) -> {zero_shot_acc, i2t_r@1, ...}, with the
    split's pixels prepared once."""
    cache: dict = {}

    def factory(tokenizer):
        def evaluate(model) -> dict:
            if "pixels" not in cache:
                cache["pixels"] = torch.from_numpy(pairset.pixels(model.config.image_size))
            images = embed_images(model, cache["pixels"])
            out = {"zero_shot_acc": zero_shot(model, tokenizer, images, list(pairset.labels), templates)["zero_shot_acc"]}
            texts = embed_texts(model, tokenizer, pairset.captions)
            recall = retrieval_recall(images, texts, pairset.captions, ks=(1, 5))
            out.update({k: v for k, v in recall.items()})
            return out

        return evaluate

    return factory


def retrieval_grid(model, tokenizer, pairset, queries: list[str], out_file, k: int = 5, cell: int = 48) -> None:
    """A PNG: one row per text query, its top-k images (report card)."""
    from PIL import Image, ImageDraw

    pixels = torch.from_numpy(pairset.pixels(model.config.image_size))
    images = embed_images(model, pixels)
    texts = embed_texts(model, tokenizer, queries)
    top = (texts @ images.T).topk(min(k, len(pairset)), dim=-1).indices  # (Q, k)
    label_w = 220
    grid = Image.new("RGB", (label_w + k * (cell + 4), len(queries) * (cell + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    for row, query in enumerate(queries):
        y = 4 + row * (cell + 4)
        draw.text((4, y + cell // 2 - 6), query[:34], fill="black")
        for col, idx in enumerate(top[row].tolist()):
            with Image.open(pairset.root / pairset.images[idx]) as img:
                grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w + col * (cell + 4), y))
    grid.save(out_file)


def training_lineage(checkpoint) -> list[dict]:
    """The stages behind a CLIP checkpoint, newest first: each run's name, step, objective and the
    manifest of the dataset it trained on (sources, licenses, sha256, what was dropped)."""
    import json
    from pathlib import Path

    from foundry.checkpoints import resolve_checkpoint

    lineage, seen = [], set()
    path = resolve_checkpoint(checkpoint)
    while path is not None and str(path) not in seen:
        seen.add(str(path))
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
        record_file = run_dir / "run.json"
        if not record_file.is_file():
            break
        record = json.loads(record_file.read_text(encoding="utf-8"))
        dataset = Path(record.get("parents", {}).get("dataset", ""))
        manifest = dataset / "manifest.json"
        lineage.append({"run": str(run_dir), "stage": record.get("stage"),
                        "steps": (record.get("results") or {}).get("step"),
                        "objective": (record.get("config") or {}).get("objective"),
                        "dataset": str(dataset),
                        "manifest": json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None})
        parent = record.get("parents", {}).get("checkpoint")
        path = Path(parent) if parent else None
    return lineage


def model_card(checkpoint, model, results: dict) -> str:
    """Markdown: what the model is, what images and captions it learned from (with their licenses), and
    what it can and cannot do (the evaluation table's numbers)."""
    c = model.config
    lines = [f"# Model card: {checkpoint}", "",
             f"CLIP-style image-text model: ViT image encoder ({c.vision_layers} blocks, width {c.vision_width}, "
             f"{c.image_size}px images in {c.patch_size}px patches) and text encoder ({c.text_layers} blocks, width "
             f"{c.text_width}, {c.text_len} tokens), projected to a {c.embed_dim}-dimensional shared space; "
             f"{model.num_params():,} parameters. Loads in transformers as CLIPModel + CLIPProcessor "
             "(`foundry export --format hf`).", "", "## Training data (newest stage first)", ""]
    for stage in training_lineage(checkpoint):
        manifest = stage["manifest"] or {}
        train = manifest.get("splits", {}).get("train", "?")
        lines.append(f"- **{stage['stage']}** ({stage['objective']} loss, {stage['steps']} steps) on the train split "
                     f"({train} pairs) of `{stage['dataset']}`")
        for source in manifest.get("sources", []):
            lines.append(f"  - {source['name']}: license **{source['license']}**, sha256 `{source['sha256'][:16]}…`, "
                         f"{source['kept']} pairs kept of {source['read']} read")
        if manifest.get("dropped"):
            lines.append("  - dropped: " + ", ".join(f"{k} {v}" for k, v in manifest["dropped"].items()))
    lines += ["", "## What it can and cannot do", ""]
    for name, r in results.items():
        if "zero_shot_acc" in r:
            lines.append(f"- {name}: zero-shot {r['zero_shot_acc']:.3f} against chance {r['chance']:.3f} "
                         f"({r['classes']} classes, {r['n']} held-out images)"
                         + (f"; linear probe {r['linear_probe_acc']:.3f}" if "linear_probe_acc" in r else ""))
    return "\n".join(lines) + "\n"
