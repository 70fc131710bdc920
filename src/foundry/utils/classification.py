"""Classification scores from predicted and true label indices: accuracy, macro-F1, confusion matrix."""

from __future__ import annotations


def confusion_matrix(true: list[int], pred: list[int], n: int) -> list[list[int]]:
    """rows: true label, columns: predicted label."""
    m = [[0] * n for _ in range(n)]
    for t, p in zip(true, pred):
        m[t][p] += 1
    return m


def classification_scores(true: list[int], pred: list[int], labels: list[str]) -> dict:
    """{"acc", "macro_f1", "confusion", "per_label": {label: {precision, recall, f1, support}}, "n"}.

    Macro-F1 is the unweighted mean of per-label F1 over labels present in `true` or `pred` (a label that
    is neither true nor predicted anywhere has no defined F1 and is left out, as scikit-learn's
    `labels=` default over the union of both does)."""
    n = len(labels)
    m = confusion_matrix(true, pred, n)
    per_label, f1s = {}, []
    for k, name in enumerate(labels):
        tp = m[k][k]
        predicted = sum(m[r][k] for r in range(n))
        support = sum(m[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or predicted:
            f1s.append(f1)
    total = len(true)
    return {"acc": sum(m[k][k] for k in range(n)) / total if total else 0.0,
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "confusion": m, "per_label": per_label, "n": total}


def format_confusion(m: list[list[int]], labels: list[str]) -> str:
    """A plain-text confusion matrix (rows true, columns predicted)."""
    width = max(6, *(len(l) for l in labels)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(l[:width - 1].rjust(width) for l in labels)]
    for name, row in zip(labels, m):
        lines.append(name[:width - 1].ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
