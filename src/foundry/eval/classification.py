"""`foundry eval CLASSIFIER --labelled FILE`: a fine-tuned classifier scored on labelled examples."""

from __future__ import annotations

from foundry.errors import ConfigError, DataError


def score_classifier(model, tokenizer, path: str, text_field: str = "text", label_field: str = "label",
                     batch_size: int = 32) -> dict:
    """{"acc", "macro_f1", "confusion", "per_label", "n", "labels", "data"} of `model` on a JSONL/CSV file."""
    from foundry.data.labelled import read_labelled
    from foundry.model.classifier import classify
    from foundry.utils.classification import classification_scores

    labels = getattr(model.config, "labels", None)
    if labels is None:
        raise ConfigError(f"--labelled {path}: the model is not a classifier (make one with 'foundry finetune')")
    examples = read_labelled(path, text_field, label_field)
    index = {name: k for k, name in enumerate(labels)}
    for e in examples:
        if e.label not in index:
            raise DataError(f"{e.where}: unknown label '{e.label}' (the classifier's labels are {', '.join(labels)})")
    probs = classify(model, tokenizer, [e.text for e in examples], batch_size=batch_size)
    scores = classification_scores([index[e.label] for e in examples], probs.argmax(-1).tolist(), list(labels))
    return {**scores, "labels": list(labels), "data": str(path)}
