#!/usr/bin/env python3
"""Build the bundled multiple-choice tasks in data/eval/ from held-out bundled text (deterministic).

    python scripts/make_eval_tasks.py            # rewrites data/eval/*.jsonl and data/eval/SOURCE.yaml

Held-out text: documents are read exactly as `foundry data prepare` reads them (form-feed documents,
`clean_text`) and a document is held out when its content hash, read as a number in [0, 1), falls
below HELD_OUT[corpus]: the same rule and hash as prepare's validation split, so with the default
`--val-fraction 0.02` every KJV item comes from a chapter in the validation split. Items and their
distractors are drawn only from held-out documents. Pass these files to
`foundry data prepare --eval data/eval/<task>.jsonl` (the quickstart recipe does) and every training
document sharing a 13-word n-gram with any item is dropped as contaminated, so the held-out text
never reaches training even where HELD_OUT exceeds the validation fraction (pydocs, whose validation
split alone is too small for 120 items).

Tasks (JSONL, `foundry.eval.tasks` format; the first FEWSHOT items are marked `"split": "fewshot"`):
- kjv-continuation: the previous verse and the first half of a verse; pick its true second half among
  four (three distractors are second halves of other held-out verses of similar length).
- kjv-book: a verse; pick the book it comes from among four book names.
- pydocs-continuation: the previous line and the first half of a line of the Python documentation;
  pick the true second half among four.

It also writes data/bakeoff/prompts.jsonl: the held-out SFT questions (data/post/instructions_val.jsonl,
never trained on) with reference answers, required facts and forbidden false claims.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from foundry.data.clean import clean_text, content_hash  # noqa: E402
from foundry.data.prepare import in_validation  # noqa: E402
from foundry.data.sources import ReadStats, read_txt  # noqa: E402

SEED = 20261123
FEWSHOT = 5
HELD_OUT = {"kjv": 0.02, "pydocs": 0.04}
SIZES = {"kjv-continuation": 150, "kjv-book": 150, "pydocs-continuation": 120}
VERSE = re.compile(r"^(\d+) (.+)$")


def held_out_documents(folder: Path, fraction: float) -> list[tuple[str, str]]:
    """(file name, cleaned document) of every held-out form-feed document in `folder`, in file order."""
    docs = []
    for path in sorted(folder.glob("*.txt")):
        for raw in read_txt(path, "formfeed", "error", ReadStats()):
            text = clean_text(raw)
            if text and in_validation(content_hash(text), fraction):
                docs.append((path.name, text))
    return docs


def split_half(text: str, rng: random.Random) -> tuple[str, str] | None:
    """Cut `text` at a word boundary near its middle: (first half, second half with its leading space)."""
    words = text.split(" ")
    if len(words) < 8:
        return None
    cut = rng.randint(len(words) // 2 - 1, len(words) // 2 + 1)
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def continuation_items(units: list[tuple[str, str, str]], n: int, rng: random.Random, task: str) -> list[dict]:
    """units: (previous line, line prefix to keep, line text). Distractors: halves of similar length."""
    cut_units = []
    for prev, prefix, line in units:
        halves = split_half(line, rng)
        if halves:
            cut_units.append((prev, prefix + halves[0], halves[1]))
    rng.shuffle(cut_units)
    chosen = cut_units[:n]
    endings = [u[2] for u in cut_units]
    items = []
    for k, (prev, head, true) in enumerate(chosen):
        # Distractors: of the other endings, those closest in length (a length cue would give the answer away).
        pool = sorted((e for e in set(endings) if e != true), key=lambda e: (abs(len(e) - len(true)), e))[:12]
        distractors = rng.sample(pool, 3)
        choices = distractors + [true]
        rng.shuffle(choices)
        items.append({"id": f"{task}-{k:03d}", "context": (prev + "\n" if prev else "") + head,
                      "choices": choices, "answer": choices.index(true)})
    return items


def kjv_units(docs) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(continuation units, (book, verse) pairs) from held-out chapters."""
    units, verses = [], []
    for name, text in docs:
        book = re.sub(r"^\d+_", "", name.removesuffix(".txt")).replace("_", " ")
        prev = None
        for line in text.split("\n"):
            m = VERSE.match(line.strip())
            if not m:
                continue
            number, verse = m.group(1), m.group(2).strip()
            if prev is not None:
                units.append((prev, f"{number} ", verse))
            verses.append((book, verse))
            prev = line.strip()
    return units, verses


def kjv_book_items(verses, books: list[str], n: int, rng: random.Random) -> list[dict]:
    pool = [(b, v) for b, v in verses if len(v.split()) >= 10]
    rng.shuffle(pool)
    items = []
    for k, (book, verse) in enumerate(pool[:n]):
        choices = rng.sample([b for b in books if b != book], 3) + [book]
        rng.shuffle(choices)
        items.append({"id": f"kjv-book-{k:03d}", "context": f"{verse}\nThis verse is from the book of",
                      "choices": [" " + c for c in choices], "answer": choices.index(book)})
    return items


def pydocs_units(docs) -> list[tuple[str, str, str]]:
    """Prose lines (not markup, code or headings) with the line before them."""
    units = []
    for _, text in docs:
        lines = text.split("\n")
        for prev, line in zip(lines, lines[1:]):
            s = line.strip()
            if (line.startswith((" ", "\t")) or len(s.split()) < 9 or s.startswith(("..", "*", "=", "-", ">>>", "|"))
                    or not prev.strip() or prev.startswith((" ", "\t", ".."))):
                continue
            units.append((prev.strip(), "", s))
    return units


def write_jsonl(path: Path, items: list[dict]) -> str:
    for k, item in enumerate(items):
        if k < FEWSHOT:
            item["split"] = "fewshot"
    text = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def bakeoff_prompts(val_chats: Path, books: list[str]) -> list[dict]:
    """The bake-off prompt set: every held-out SFT question (data/post/instructions_val.jsonl) with its
    reference answer, the facts an answer must state (`required`) and false claims it must not make
    (`forbidden`: the neighbouring book on the wrong side)."""
    prompts = []
    for k, line in enumerate(val_chats.read_text(encoding="utf-8").splitlines()):
        messages = json.loads(line)["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        question, answer = messages[-2]["content"], messages[-1]["content"]
        rec = {"id": f"q{k:02d}", "prompt": question, "reference": answer}
        if system:
            rec["system"] = system
        m = re.match(r"Which book (follows|comes before) (.+)\?$", question)
        if m:
            book = answer.rstrip(".")
            rec["required"] = [book]
            i = books.index(m.group(2))
            wrong = i - 1 if m.group(1) == "follows" else i + 1
            if 0 <= wrong < len(books):
                rec["forbidden"] = [books[wrong]]
        elif question.startswith("How many chapters"):
            rec["required"] = [re.search(r"\d+ chapters?", answer).group(0)]
        else:  # quote / finish a verse: its two longest words
            words = sorted(set(re.findall(r"[A-Za-z]+", answer)), key=lambda w: (-len(w), w))
            rec["required"] = words[:2]
        prompts.append(rec)
    return prompts


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "data"), help="writes OUT/eval and OUT/bakeoff (default: data/)")
    args = parser.parse_args(argv)
    out = Path(args.out) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    kjv_dir, py_dir = REPO / "data/general/kjv", REPO / "data/domain/pydocs"
    kjv_docs = held_out_documents(kjv_dir, HELD_OUT["kjv"])
    py_docs = held_out_documents(py_dir, HELD_OUT["pydocs"])
    books = [re.sub(r"^\d+_", "", p.stem).replace("_", " ") for p in sorted(kjv_dir.glob("*.txt"))]
    units, verses = kjv_units(kjv_docs)
    tasks = {
        "kjv-continuation": continuation_items(units, SIZES["kjv-continuation"], random.Random(SEED), "kjv-continuation"),
        "kjv-book": kjv_book_items(verses, books, SIZES["kjv-book"], random.Random(SEED + 1)),
        "pydocs-continuation": continuation_items(pydocs_units(py_docs), SIZES["pydocs-continuation"],
                                                  random.Random(SEED + 2), "pydocs-continuation"),
    }
    hashes = {}
    for name, items in tasks.items():
        if len(items) < SIZES[name]:
            raise SystemExit(f"{name}: only {len(items)} items from held-out text (wanted {SIZES[name]})")
        hashes[name] = write_jsonl(out / f"{name}.jsonl", items)
        print(f"{name}: {len(items)} items ({FEWSHOT} few-shot) -> {out / (name + '.jsonl')}")
    source = {
        "name": "foundry bundled evaluation tasks",
        "generated_by": "scripts/make_eval_tasks.py",
        "seed": SEED,
        "license": "public-domain (kjv-*, text of the King James Bible); PSF-2.0 (pydocs-*, Python documentation)",
        "held_out": {
            "rule": "content_hash(clean_text(document)) as a number in [0, 1) below the fraction: the rule of "
                    "'foundry data prepare' --val-fraction",
            "kjv": {"corpus": "data/general/kjv", "fraction": HELD_OUT["kjv"], "documents": len(kjv_docs),
                    "note": "the validation split of 'foundry data prepare --val-fraction 0.02'"},
            "pydocs": {"corpus": "data/domain/pydocs", "fraction": HELD_OUT["pydocs"], "documents": len(py_docs),
                       "note": "validation split plus documents removed from training by decontamination"},
        },
        "decontamination": "pass every task file as 'foundry data prepare --eval data/eval/<task>.jsonl' "
                           "(recipes/quickstart.yaml does), dropping training documents that share a 13-word "
                           "n-gram with any item",
        "tasks": {name: {"items": len(items), "fewshot": FEWSHOT, "choices": 4, "sha256": hashes[name]}
                  for name, items in tasks.items()},
    }
    import yaml

    prompts = bakeoff_prompts(REPO / "data/post/instructions_val.jsonl", books)
    bake = Path(args.out) / "bakeoff"
    bake.mkdir(parents=True, exist_ok=True)
    (bake / "prompts.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts),
                                        encoding="utf-8")
    print(f"bake-off: {len(prompts)} prompts -> {bake / 'prompts.jsonl'}")
    (out / "SOURCE.yaml").write_text(yaml.safe_dump(source, sort_keys=False, width=100), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
