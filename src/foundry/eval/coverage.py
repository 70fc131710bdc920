"""`foundry coverage`: before spending compute, ask whether a model's pretraining covered a domain at all.

Four signals, each the domain against the model's own (base) corpus:
- tokenizer fertility: tokens per whitespace word. A jump means the vocabulary does not fit the domain
  (a tokenizer trained on English splits French words into many short pieces).
- bits per byte of the model on the domain's val split against its own val split. Bits per byte, not
  per-token perplexity, decides the verdict because it does not depend on how the text was tokenised;
  perplexities are reported beside it.
- the share of the domain's top-N most frequent words that never occur in the base corpus, and
- the same for word bigrams (word pairs inside one document).

Verdict (the thresholds, also in `THRESHOLDS`): each signal is "good", "fair" or "poor";

    signal                          good      fair      poor
    fertility ratio (domain/base)   <= 1.20   <= 1.60   > 1.60
    bits-per-byte ratio             <= 1.25   <= 1.75   > 1.75
    unseen top-N words              <= 0.10   <= 0.35   > 0.35
    unseen top-N bigrams            <= 0.30   <= 0.60   > 0.60

"well covered" when no signal is poor and at most one is fair, "poorly covered" when two or more are
poor, else "partly covered". Text is read with caps (`--max-chars` per split for the word statistics and
fertility, `--max-tokens` scored by the model, via `foundry.eval.perplexity`) so the command stays fast on
big corpora; the caps and the amounts actually read are in the report.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from foundry.errors import DataError

# signal -> (good upper bound, fair upper bound); above the fair bound is poor.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "fertility_ratio": (1.20, 1.60),
    "bpb_ratio": (1.25, 1.75),
    "unseen_words": (0.10, 0.35),
    "unseen_bigrams": (0.30, 0.60),
}
VERDICTS = ("well covered", "partly covered", "poorly covered")  # best first
WORD_RE = re.compile(r"\w+", re.UNICODE)


# ---- pure statistics --------------------------------------------------------------------------------
def read_texts(dataset_dir: str | Path, split: str, max_chars: int) -> list[str]:
    """Documents of DATASET/{split}.jsonl up to about `max_chars` characters (the last one is cut)."""
    from foundry.data.tokenizer import iter_split_texts

    out, total = [], 0
    for text in iter_split_texts(dataset_dir, split):
        if total >= max_chars:
            break
        text = text[: max_chars - total]
        out.append(text)
        total += len(text)
    return out


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters and digits, so accented words stay whole)."""
    return WORD_RE.findall(text.lower())


def vocabulary_counts(texts: Iterable[str]) -> tuple[Counter, Counter]:
    """(word counts, bigram counts); bigrams never cross a document boundary."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        ws = words(text)
        unigrams.update(ws)
        bigrams.update(zip(ws, ws[1:]))
    return unigrams, bigrams


def unseen_share(domain: Counter, base: Counter | set, top_n: int) -> dict:
    """Of the domain's `top_n` most frequent items, the share never seen in `base`.

    `share` counts items; `weighted` weighs them by their domain frequency (the share of the domain's
    running text those frequent items make up that the base never showed the model).
    """
    top = domain.most_common(top_n)
    if not top:
        return {"top_n": 0, "unseen": 0, "share": float("nan"), "weighted": float("nan"), "examples": []}
    unseen = [(item, n) for item, n in top if item not in base]
    total = sum(n for _, n in top)
    fmt = (lambda item: " ".join(item) if isinstance(item, tuple) else item)
    return {"top_n": len(top), "unseen": len(unseen), "share": len(unseen) / len(top),
            "weighted": sum(n for _, n in unseen) / total, "examples": [fmt(i) for i, _ in unseen[:10]]}


def grade(signal: str, value: float) -> str:
    good, fair = THRESHOLDS[signal]
    if math.isnan(value):
        return "fair"  # unknown is not evidence either way
    return "good" if value <= good else "fair" if value <= fair else "poor"


def verdict(signals: dict[str, float]) -> tuple[str, dict[str, str]]:
    """The one-line verdict from the signals present (see the module docstring for the rule)."""
    grades = {name: grade(name, value) for name, value in signals.items()}
    poor = sum(g == "poor" for g in grades.values())
    fair = sum(g == "fair" for g in grades.values())
    if poor >= 2:
        return "poorly covered", grades
    if poor == 0 and fair <= 1:
        return "well covered", grades
    return "partly covered", grades


# ---- finding the model's own corpus -----------------------------------------------------------------
def _run_records(model_path: Path) -> Iterator[dict]:
    """run.json records of the model's run and, following parents.checkpoint, of its ancestors."""
    seen: set[Path] = set()
    path: Path | None = model_path
    for _ in range(8):
        if path is None:
            return
        record_file = next((d / "run.json" for d in (path, path.parent, path.parent.parent)
                            if (d / "run.json").is_file()), None)
        if record_file is None or record_file.resolve() in seen:
            return
        seen.add(record_file.resolve())
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return
        yield record
        parent = (record.get("parents") or {}).get("checkpoint")
        path = Path(parent) if isinstance(parent, str) else None


def discover_base_dataset(model_path: str | Path) -> Path | None:
    """The dataset the model was (pre)trained on, from its run.json lineage, if recorded."""
    for record in _run_records(Path(model_path)):
        parents = record.get("parents") or {}
        config = record.get("config") or {}
        candidates = [parents.get("dataset"), parents.get("data"), config.get("data"), config.get("dataset")]
        if isinstance(config.get("data"), dict):
            candidates += [config["data"].get("dataset"), config["data"].get("path"), config["data"].get("dir")]
        for c in candidates:
            if isinstance(c, str) and (Path(c) / "manifest.json").is_file():
                return Path(c)
    return None


# ---- the report -------------------------------------------------------------------------------------
def _check_dataset(path: Path, role: str) -> None:
    if not (path / "train.jsonl").is_file() and not (path / "val.jsonl").is_file():
        raise DataError(f"{path}: {role} is not a dataset directory (no train.jsonl / val.jsonl); "
                        "make one with 'foundry data prepare'")


def _eval_split(dataset: Path) -> str:
    """"val", or "train" when the dataset has no validation documents (a tiny corpus)."""
    val = dataset / "val.jsonl"
    if val.is_file():
        with open(val, encoding="utf-8") as f:
            if any(line.strip() for line in f):
                return "val"
    return "train"


def coverage_report(model, tokenizer, domain: str | Path, base: str | Path, top_n: int = 200,
                    max_chars: int = 2_000_000, max_tokens: int = 16_384, block_size: int | None = None) -> dict:
    """Everything `foundry coverage` prints, as a JSON-ready dict (see the module docstring)."""
    from foundry.data.tokenizer import fertility
    from foundry.eval.perplexity import dataset_perplexity

    domain, base = Path(domain), Path(base)
    _check_dataset(domain, "--domain")
    _check_dataset(base, "--base")
    block_size = block_size or min(256, model.config.max_seq_len)

    texts = {}
    for role, path in (("domain", domain), ("base", base)):
        texts[role] = [t for split in ("train", "val") if (path / f"{split}.jsonl").is_file()
                       for t in read_texts(path, split, max_chars)]
        if not texts[role]:
            raise DataError(f"{path}: the {role} dataset has no documents")
    fert = {role: fertility(tokenizer, texts[role]) for role in texts}
    scored = {}
    for role, path in (("domain", domain), ("base", base)):
        split = _eval_split(path)
        scored[role] = {**dataset_perplexity(model, tokenizer, path, split, max_tokens=max_tokens,
                                             block_size=block_size), "split": split}
    dom_words, dom_bigrams = vocabulary_counts(texts["domain"])
    base_words, base_bigrams = vocabulary_counts(texts["base"])
    unseen_w = unseen_share(dom_words, base_words, top_n)
    unseen_b = unseen_share(dom_bigrams, base_bigrams, top_n)

    signals = {
        "fertility_ratio": fert["domain"]["tokens_per_word"] / fert["base"]["tokens_per_word"],
        "bpb_ratio": scored["domain"]["bpb"] / scored["base"]["bpb"],
        "unseen_words": unseen_w["share"],
        "unseen_bigrams": unseen_b["share"],
    }
    label, grades = verdict(signals)
    return {
        "domain": str(domain), "base": str(base), "verdict": label, "signals": signals, "grades": grades,
        "thresholds": {k: {"good": g, "fair": f} for k, (g, f) in THRESHOLDS.items()},
        "fertility": fert, "model": {**scored, "block_size": block_size, "max_tokens": max_tokens},
        "unseen": {"words": unseen_w, "bigrams": unseen_b},
        "read": {"max_chars": max_chars, "domain_chars": sum(map(len, texts["domain"])),
                 "base_chars": sum(map(len, texts["base"]))},
    }


def verdict_line(report: dict) -> str:
    s = report["signals"]
    return (f"{report['verdict']}: fertility x{s['fertility_ratio']:.2f}, bits/byte x{s['bpb_ratio']:.2f}, "
            f"{s['unseen_words']:.0%} of top-{report['unseen']['words']['top_n']} words and "
            f"{s['unseen_bigrams']:.0%} of top bigrams unseen in the base corpus")


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    f, m = report["fertility"], report["model"]
    table = Table(title=f"coverage of {report['domain']} (base: {report['base']})")
    for col in ("signal", "domain", "base", "ratio / share", "grade"):
        table.add_column(col, justify="left" if col == "signal" else "right")
    g, s = report["grades"], report["signals"]
    table.add_row("tokens per word", f"{f['domain']['tokens_per_word']:.3f}", f"{f['base']['tokens_per_word']:.3f}",
                  f"{s['fertility_ratio']:.2f}", g["fertility_ratio"])
    table.add_row("bits per byte", f"{m['domain']['bpb']:.3f}", f"{m['base']['bpb']:.3f}",
                  f"{s['bpb_ratio']:.2f}", g["bpb_ratio"])
    table.add_row("perplexity (per token)", f"{m['domain']['ppl']:.2f}", f"{m['base']['ppl']:.2f}",
                  f"{m['domain']['ppl'] / m['base']['ppl']:.2f}", "")
    for key, label in (("words", "unseen top words"), ("bigrams", "unseen top bigrams")):
        u = report["unseen"][key]
        table.add_row(f"{label} (top {u['top_n']})", f"{u['unseen']}", "", f"{u['share']:.1%}", g[f"unseen_{key}"])
    Console().print(table)
    ex = report["unseen"]["words"]["examples"]
    if ex:
        print("frequent domain words the base corpus never shows: " + ", ".join(ex))
    print(verdict_line(report))
