"""`foundry finetune`: sequence classification on top of any foundry model, on the one training loop.

    foundry finetune --config recipes/encoder.yaml ...   (or a recipe of its own: init, data, val_data, ...)

What this stage adds, and nothing else:
- labelled data (`foundry.data.labelled`): JSONL {"text", "label"} or CSV; label names are kept in the
  checkpoint's config (`labels`), so predictions come back as names;
- a classification head on the starting model (`foundry.model.classifier`): an encoder pools its first token
  through BERT's pooler (or the mean of its tokens), a decoder its last token; full fine-tuning or LoRA
  (only the adapters and the new head train; merged into the saved best);
- `ClassificationObjective` (cross-entropy, units = examples) and an evaluator reporting loss, accuracy and
  macro-F1; at the end the saved model is scored on `test_data` (else `val_data`) with a confusion matrix,
  written to RUN/classification.json;
- `init_weights: random` starts from the same architecture with fresh weights (the transfer curve's baseline),
  and `max_train_examples` fine-tunes on a seeded, class-balanced subset (its N).
"""

from __future__ import annotations

import json
import random
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from foundry.config import TrainConfig
from foundry.errors import ConfigError, DataError
from foundry.train.batches import ShuffledRows
from foundry.train.stage import LoRASpec
from foundry.train.stage import StageConfig, StageRunner


class FinetuneTrainConfig(TrainConfig):
    """TrainConfig with classification defaults; block_size is the longest text in tokens (longer ones are cut)."""

    max_steps: int = Field(200, gt=0)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    eval_every: int = Field(50, gt=0)
    micro_batch_size: int = Field(16, gt=0)
    block_size: int = Field(128, gt=2, description="tokens per text, markers included (longer texts are cut)")
    weight_decay: float = Field(0.01, ge=0)


class FinetuneConfig(StageConfig):
    init: str = Field(description="model to start from: a foundry checkpoint, a run directory (its best checkpoint) "
                      "or an imported Hugging Face directory; an encoder or a decoder")
    data: str = Field(description="training examples: JSONL {\"text\", \"label\"} per line, or CSV with a header")
    val_data: str | None = Field(None, description="held-out examples for validation (loss, accuracy, macro-F1)")
    test_data: str | None = Field(None, description="examples scored once at the end (default: val_data)")
    text_field: str = Field("text", description="the text's field (JSONL) or column (CSV)")
    label_field: str = Field("label", description="the label's field (JSONL) or column (CSV)")
    labels: list[str] | None = Field(None, description="label names in output order (default: the training labels, "
                                      "sorted)")
    pooling: Literal["first", "mean", "last"] | None = Field(
        None, description="encoder: first (BERT's pooler on the first token, exportable) or mean; decoder: last")
    lora: LoRASpec | None = Field(None, description="train low-rank adapters (and the head) only; targets default to "
                                  "query/value (encoder) or q_proj/v_proj (decoder)")
    init_weights: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the same architecture and tokenizer with fresh weights (a baseline)")
    max_train_examples: int | None = Field(None, gt=0, description="fine-tune on a seeded, class-balanced subset "
                                           "of this many training examples")
    subset_seed: int | None = Field(None, description="seed of that subset (default train.seed)")
    tokenizer: str | None = Field(None, description="the tokenizer the data was made for (a directory or "
                                  "tokenizer.json); refused if it is not the model's")
    train: FinetuneTrainConfig = FinetuneTrainConfig()


# ---- data ------------------------------------------------------------------------------------------------
def label_set(train_examples, given: list[str] | None, path: str) -> list[str]:
    seen = sorted({e.label for e in train_examples})
    if len(seen) < 2:
        raise DataError(f"{path}: every training example has label '{seen[0]}'; a classifier needs at least two "
                        "classes")
    if given is None:
        return seen
    if len(set(given)) != len(given):
        raise ConfigError(f"labels: {given} names a label twice")
    for e in train_examples:
        if e.label not in given:
            raise DataError(f"{e.where}: label '{e.label}' is not in the recipe's labels {given}")
    return list(given)


def check_labels(examples, labels: list[str]) -> None:
    for e in examples:
        if e.label not in labels:
            raise DataError(f"{e.where}: unknown label '{e.label}' (the training labels are {', '.join(labels)})")


def balanced_subset(examples, n: int, seed: int) -> list:
    """n examples, classes taken in turn (each class shuffled by `seed`), so every class appears once n >= classes."""
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_label.items())]
    picked: list = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    rng.shuffle(picked)
    return picked


class ClassificationRows(ShuffledRows):
    """Labelled token sequences, shuffled each epoch, padded per batch (right padding)."""

    def __init__(self, rows: list[tuple[list[int], int]], pad_id: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(len(rows), seed, rank, world_size)
        self.rows, self.pad_id = rows, pad_id

    def collate(self, rows: list[list[int]]) -> dict:
        from foundry.model.classifier import pad_batch

        ids, mask = pad_batch([self.rows[i][0] for (i,) in rows], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([self.rows[i][1] for (i,) in rows], dtype=torch.long)}


class ClassificationObjective:
    """Cross-entropy over examples (units: examples); metric: correct predictions."""

    name = "classification"

    def units(self, batch: dict) -> int:
        return int(batch["labels"].numel())

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, num_labels)
        loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        return loss_sum, {"acc": (logits.argmax(-1) == batch["labels"]).sum().float()}


def predictions(model, source: ClassificationRows, batch_size: int) -> tuple[list[int], list[int], float]:
    """(true, predicted, loss sum) over every example of `source`."""
    device = next(model.parameters()).device
    true, pred, loss = [], [], 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in source.eval_batches(batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
            loss += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
            true += batch["labels"].tolist()
            pred += logits.argmax(-1).tolist()
    model.train(was_training)
    return true, pred, loss


def classification_evaluator(source: ClassificationRows, labels: list[str], batch_size: int):
    from foundry.utils.classification import classification_scores

    def evaluate(model) -> dict:
        true, pred, loss = predictions(model, source, batch_size)
        scores = classification_scores(true, pred, labels)
        return {"loss": loss / max(1, len(true)), "acc": scores["acc"], "macro_f1": scores["macro_f1"]}

    return evaluate


def encode_rows(config, tokenizer, examples, labels: list[str], max_length: int) -> list[tuple[list[int], int]]:
    from foundry.model.classifier import encode_for_classifier

    index = {name: k for k, name in enumerate(labels)}
    return [(encode_for_classifier(config, tokenizer, e.text, max_length), index[e.label]) for e in examples]


# ---- the stage -------------------------------------------------------------------------------------------
def build_classifier(start_model, labels: list[str], pooling: str | None, init_weights: str, seed: int):
    from foundry.model.classifier import Classifier, ClassifierConfig, classifier_from_model

    if isinstance(start_model.config, ClassifierConfig):
        raise ConfigError("init: the checkpoint is already a classifier; start from an encoder or a decoder")
    torch.manual_seed(seed)  # the new head (and, for init_weights: random, every weight) depends only on the seed
    clf = classifier_from_model(start_model, labels, pooling)
    if init_weights == "random":
        torch.manual_seed(seed)
        clf = Classifier(clf.config)
    return clf


def run_finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tune a classifier as `cfg` says; returns the final metrics and the test scores."""
    from foundry.checkpoints import load_model
    from foundry.data.labelled import read_labelled
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.lora import apply_lora, lora_parameter_count
    from foundry.utils.classification import classification_scores, format_confusion
    from foundry.utils.io import atomic_write_text

    with StageRunner("finetune", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        train_examples = read_labelled(cfg.data, cfg.text_field, cfg.label_field)
        labels = label_set(train_examples, cfg.labels, cfg.data)
        val_examples = read_labelled(cfg.val_data, cfg.text_field, cfg.label_field) if cfg.val_data else None
        test_path = cfg.test_data or cfg.val_data
        test_examples = read_labelled(cfg.test_data, cfg.text_field, cfg.label_field) if cfg.test_data else val_examples
        for examples in (val_examples, test_examples):
            if examples is not None:
                check_labels(examples, labels)
        start = runner.load_start(cfg.init)
        tokenizer = start.tokenizer
        if cfg.tokenizer is not None and Tokenizer.load(cfg.tokenizer).sha256 != tokenizer.sha256:
            raise DataError(f"{cfg.tokenizer}: the data's tokenizer is not the model's ({start.path}: tokenizer "
                            f"{tokenizer.sha256[:12]}); fine-tune a model trained with that tokenizer")
        if cfg.max_train_examples is not None:
            train_examples = balanced_subset(train_examples, cfg.max_train_examples,
                                             tc.seed if cfg.subset_seed is None else cfg.subset_seed)
            if len({e.label for e in train_examples}) < 2:
                raise DataError(f"{cfg.data}: max_train_examples={cfg.max_train_examples} leaves a single class")
        model = build_classifier(start.model, labels, cfg.pooling, cfg.init_weights, tc.seed)
        config = model.config
        rows = encode_rows(config, tokenizer, train_examples, labels, tc.block_size)
        source = ClassificationRows(rows, tokenizer.pad_id, tc.seed, env.rank, env.world_size)
        evaluators = {}
        if val_examples is not None:
            val_source = ClassificationRows(encode_rows(config, tokenizer, val_examples, labels, tc.block_size),
                                            tokenizer.pad_id, tc.seed)
            evaluators["val"] = classification_evaluator(val_source, labels, tc.micro_batch_size)
        if cfg.lora is not None:
            targets = cfg.lora.targets
            if config.kind == "bert" and "targets" not in cfg.lora.model_fields_set:
                targets = ["query", "value"]  # BERT's names for the q/v projections
            apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, targets)
            for name, p in model.named_parameters():  # the new head always trains
                if name.startswith(("classifier.", "score.", "bert.pooler.")):
                    p.requires_grad_(True)
        files = [cfg.data] + [f for f in (cfg.val_data, cfg.test_data) if f]
        out_dir = runner.open_run_dir({"init_weights": cfg.init_weights}, data_files=files)
        trainable, total = lora_parameter_count(model)
        counts = {name: sum(e.label == name for e in train_examples) for name in labels}
        runner.log(f"foundry finetune: {config.kind} classifier ({config.pooling} pooling, {cfg.init_weights} "
                   f"weights), {len(train_examples)} examples {counts}, {trainable:,} of {total:,} parameters "
                   f"trainable -> {out_dir}")
        model.train()
        results = runner.train(model, ClassificationObjective(), source, tokenizer, evaluators=evaluators,
                               best_metric="val/loss" if evaluators else None, lora=cfg.lora)
        results.update({"labels": labels, "train_examples": len(train_examples)})
        if test_examples is not None and runner.is_main:
            saved, _ = load_model(out_dir, device=str(next(model.parameters()).device))
            test_source = ClassificationRows(encode_rows(config, tokenizer, test_examples, labels, tc.block_size),
                                             tokenizer.pad_id, tc.seed)
            true, pred, _ = predictions(saved, test_source, tc.micro_batch_size)
            scores = classification_scores(true, pred, labels)
            scores["data"] = str(test_path)
            scores["correct"] = [int(t == q) for t, q in zip(true, pred)]  # per test example, in file order
            atomic_write_text(out_dir / "classification.json", json.dumps(scores, indent=2) + "\n")
            results.update({"test/acc": scores["acc"], "test/macro_f1": scores["macro_f1"]})
            runner.log(f"{test_path}: accuracy {scores['acc']:.3f}, macro-F1 {scores['macro_f1']:.3f} "
                       f"({scores['n']} examples)\n" + format_confusion(scores["confusion"], labels))
        return runner.finish(results, summary=["val/acc", "val/macro_f1", "test/acc"])
