#!/usr/bin/env python3
"""Build the bundled multiple-choice tasks in data/eval/ from held-out bundled text (deterministic).

    python scripts/make_eval_tasks.py            # rewrites data/eval/*.jsonl and data/eval/SOURCE.yaml

Held-out text: documents are read exactly as `foundry data prepare` reads them (form-feed documents,
`clean_text`) and a document is held out when its content hash, read as a number in [0, 1), falls
below HELD_OUT[corpus]: the same rule and hash as prepare's validation split, so every KJV item comes
from a chapter in the validation split of `--val-fraction 0.02` and every pydocs item from the
validation split of the quickstart's `--val-fraction 0.05` (text that neither pretraining nor continual
pretraining reads). Items and their distractors are drawn only from held-out documents. Pass these
files to `foundry data prepare --eval data/eval/<task>.jsonl` (the quickstart recipe does) and every
training document sharing a 13-word n-gram with any item is dropped as contaminated as well.

Tasks (JSONL, `foundry.eval.tasks` format; the first FEWSHOT items are marked `"split": "fewshot"`):
- kjv-continuation: the previous verse and the first half of a verse; pick its true second half among
  four (three distractors are second halves of other held-out verses of similar length).
- kjv-book: a verse; pick the book it comes from among four book names.
- pydocs-continuation, the domain task (issue 13, lesson a: does continual pretraining teach the
  domain?): about 300 characters of a held-out Python-docs passage, cut at a word boundary inside a
  line of running text; pick the true next word among four. Why this shape:
  * all four choices are the domain's own words: the distractors are next words at the same kind of
    position in OTHER held-out pydocs documents (never the general corpus, which would measure "which
    corpus", not knowledge of the domain), of the closest lengths, so neither vocabulary nor length
    gives the answer away and only reading the context in the domain's language does;
  * one word, not a half line: a 1.1M model's sum of log-probabilities over a long continuation is
    dominated by how common the continuation is on its own, whatever the context; over one word the
    context's share of the score is largest (the earlier half-line version scored near chance for
    every model, continued or not);
  * every kind of word: a variant restricted to content words (function words, one might think,
    measure English, not the domain) showed a smaller gain from continual pretraining on the
    quickstart's checkpoints (0.518 -> 0.539) than this one (0.689 -> 0.762 on a first draft):
    the domain's own use of short words is part of its language;
  * 250 items (at most one per 150 characters of a document) so the 95% interval is about +-0.06;
    scored by acc and acc_norm (the choices are length-matched, so the two agree closely).
- kjv-direct-answers (generation, issue 13 lesson d): every held-out fact question of the
  post-training data (data/post/instructions_val.jsonl: book order, chapter counts; no stage trains
  on them); passes when the greedy answer is direct: none of the hedges ("I think", "not sure") that
  the preference data rejects in favour of the same answer stated directly, and the answer in its
  form. Scored for the SFT model and the DPO model, it shows whether preference optimisation moved
  what the preferences reward (see scripts/make_post_training_data.py for the data design).

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
HELD_OUT = {"kjv": 0.02, "pydocs": 0.05}
SIZES = {"kjv-continuation": 150, "kjv-book": 150, "pydocs-continuation": 250}
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


def is_prose(line: str) -> bool:
    """A line of running text: not indented code, a directive, a list or table row, or a heading rule."""
    s = line.strip()
    return not (line.startswith((" ", "\t")) or len(s.split()) < 6
                or s.startswith(("..", "*", "=", "-", ">>>", "|", "^", '"', "+")) or set(s) <= set("=-^*\"~+#"))


def next_word_positions(docs) -> list[tuple[int, str, str]]:
    """(document index, text before, next word with its leading space) at every word boundary inside
    prose lines (the next word holds a letter)."""
    out = []
    for d, (_, text) in enumerate(docs):
        start = 0
        for line in text.split("\n"):
            if is_prose(line):
                words = line.split(" ")
                for cut in range(1, len(words)):
                    head, word = " ".join(words[:cut]), words[cut]
                    if head.strip() and re.search(r"[A-Za-z]", word):
                        out.append((d, text[:start] + head, " " + word))
            start += len(line) + 1
    return out


def next_word_items(docs, n: int, rng: random.Random, task: str, context_chars: int = 300,
                    spacing: int = 150) -> list[dict]:
    """A held-out passage cut before a content word; pick the true next word among four. Distractors are
    next words at the same kind of position in OTHER held-out documents, of the closest byte lengths: all
    four are the domain's own vocabulary, so only reading the context in the domain's language tells them
    apart. At most one item per `spacing` characters of a document, so items do not share their text."""
    positions = next_word_positions(docs)
    rng.shuffle(positions)
    words_by_doc = [(d, w) for d, _, w in positions]
    items, taken = [], set()
    for d, before, word in positions:
        if len(items) == n:
            break
        slot = (d, len(before) // spacing)
        if slot in taken or len(before) < context_chars // 3:
            continue
        taken.add(slot)
        pool = sorted({w for dd, w in words_by_doc if dd != d and w != word},
                      key=lambda w: (abs(len(w) - len(word)), w))[:12]
        choices = rng.sample(pool, 3) + [word]
        rng.shuffle(choices)
        context = before[-context_chars:]
        if len(before) > context_chars:  # start at a word boundary
            context = context[context.find(" ") + 1:]
        items.append({"id": f"{task}-{len(items):03d}", "context": context, "choices": choices,
                      "answer": choices.index(word)})
    return items


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
    from make_post_training_data import is_val

    prompts = []
    for k, line in enumerate(val_chats.read_text(encoding="utf-8").splitlines()):
        messages = json.loads(line)["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        question, answer = messages[-2]["content"], messages[-1]["content"]
        first_question = next(m["content"] for m in messages if m["role"] == "user")
        if not is_val(first_question, 0.1):  # the bake-off keeps the 10% every kind of question holds out
            continue
        rec = {"id": f"q{len(prompts):02d}", "prompt": question, "reference": answer}
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


HEDGES = ["I think", "not sure"]
DESIGNS = {
    "kjv-continuation": "previous verse and the first half of a verse; pick its true second half among four "
                        "(distractors: second halves of other held-out verses of similar length)",
    "kjv-book": "a verse; pick the book it comes from among four book names",
    "pydocs-continuation": "the domain task: about 300 characters of a held-out Python-docs passage cut at a word "
                           "boundary in running text; pick the true next word among four. Distractors are next "
                           "words at the same kind of position in other held-out pydocs documents, of the closest "
                           "lengths, so every choice is the domain's own vocabulary and only reading the context "
                           "in the domain's language separates them (never general-corpus words, which would "
                           "measure 'which corpus'); one word, as a long continuation's score is dominated by its "
                           "own frequency whatever the context",
    "kjv-direct-answers": "the preference check: every held-out fact question of data/post (book order, chapter "
                          "counts); passes when the greedy answer is direct (no 'I think' / 'not sure', and a book "
                          "name first or 'N chapters'), the behaviour data/post/preferences.jsonl rewards over hedging",
}


def direct_answer_items(val_chats: Path, books: list[str]) -> list[dict]:
    """The preference check (issue 13, lesson d): every held-out fact question (book order, chapter counts;
    data/post/instructions_val.jsonl, in no training set) as a generation item that passes when the greedy
    answer is direct: none of the hedges the preference data rejects, and the answer in its form (a book
    name first, or "N chapters"). It checks the form, not the fact: a 1.1M model rarely knows the fact."""
    from make_post_training_data import FACT_QUESTION

    items, seen = [], set()
    for line in val_chats.read_text(encoding="utf-8").splitlines():
        question = next(m["content"] for m in json.loads(line)["messages"] if m["role"] == "user")
        if not FACT_QUESTION.match(question) or question in seen:
            continue
        seen.add(question)
        book_first = r"^\s*(" + "|".join(re.escape(b) for b in books) + r")\b"
        form = ({"type": "regex", "pattern": r"\b\d+ chapters?\b"} if question.startswith("How many")
                else {"type": "regex", "pattern": book_first, "ignore_case": False})
        items.append({"id": f"kjv-direct-answers-{len(items):03d}", "prompt": question,
                      "checker": [{"type": "exclude", "values": HEDGES}, form]})
    return items


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
        "pydocs-continuation": next_word_items(py_docs, SIZES["pydocs-continuation"], random.Random(SEED + 2),
                                               "pydocs-continuation"),
    }
    direct = direct_answer_items(REPO / "data/post/instructions_val.jsonl", books)
    hashes = {}
    for name, items in tasks.items():
        if len(items) < SIZES[name]:
            raise SystemExit(f"{name}: only {len(items)} items from held-out text (wanted {SIZES[name]})")
        hashes[name] = write_jsonl(out / f"{name}.jsonl", items)
        print(f"{name}: {len(items)} items ({FEWSHOT} few-shot) -> {out / (name + '.jsonl')}")
    direct_text = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in direct)
    (out / "kjv-direct-answers.jsonl").write_text(direct_text, encoding="utf-8")
    print(f"kjv-direct-answers: {len(direct)} generation items -> {out / 'kjv-direct-answers.jsonl'}")
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
                       "note": "the validation split of 'foundry data prepare --val-fraction 0.05' (the quickstart's "
                               "data_domain stage), which neither pretraining nor continual pretraining reads"},
        },
        "decontamination": "pass every task file as 'foundry data prepare --eval data/eval/<task>.jsonl' "
                           "(recipes/quickstart.yaml does), dropping training documents that share a 13-word "
                           "n-gram with any item",
        "tasks": {name: {"items": len(items), "fewshot": FEWSHOT, "choices": 4, "sha256": hashes[name],
                         "design": DESIGNS[name]}
                  for name, items in tasks.items()},
    }
    source["tasks"]["kjv-direct-answers"] = {
        "items": len(direct), "kind": "generation", "sha256": hashlib.sha256(direct_text.encode()).hexdigest(),
        "design": DESIGNS["kjv-direct-answers"]}
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
