#!/usr/bin/env python3
"""Generate the bundled post-training sets in data/post/ from the bundled King James Bible text.

    python scripts/make_post_training_data.py [--kjv data/general/kjv] [--out data/post] [--seed 0]

Deterministic (one seeded `random.Random`), standard library + foundry only. Reads the one-file-per-book
KJV dump (`NN_Book_Name.txt`, chapters separated by form feeds, each chapter "Book N" then "V text" lines)
and writes:

  instructions.jsonl / instructions_val.jsonl   chat SFT data {"messages": [...]}: quote a verse, the book
                                                 after / before a book, chapter counts, finish a verse,
                                                 and two-turn follow-ups; some with a system prompt
  preferences.jsonl / preferences_val.jsonl     {"prompt" or "messages", "chosen", "rejected"}: the right
                                                 answer over a wrong verse, a truncated verse, a wrong
                                                 book or a wrong count; and for every fact question the
                                                 direct answer over the same answer hedged

The behaviour preference optimisation is checked on (issue 13, lesson d): like demonstrations collected
from people, HEDGE_RATE of the training demonstrations for fact questions (book order, chapter counts)
give the right answer hedged ("I think it is Ruth, but I am not sure."), so SFT learns to hedge; the
preferences reward the direct answer over the same answer hedged (and the right fact over a wrong one).
Validation chats are the clean reference answers. data/eval/kjv-direct-answers.jsonl (made by
scripts/make_eval_tasks.py) asks the held-out fact questions and checks the answers are direct.

Train and validation never share a prompt; fact questions hold out FACT_VAL_SHARE of their prompts (more
than the 10% of the rest) so the direct-answer check and the held-out preference accuracy have enough
items. The preference files are checked with foundry's own audit
(`foundry.data.prefs.audit_pairs`): a generated pair the audit would flag is skipped, so the bundled set
audits clean; its length bias is printed and recorded in SOURCE.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SYSTEM = "You answer questions about the King James Bible briefly and exactly."
MAX_VERSE_CHARS = 140  # short verses keep the examples within small models' context
HEDGE_RATE = 0.4  # share of training demonstrations for fact questions that hedge the (right) answer
FACT_VAL_SHARE = 0.3
FACT_QUESTION = re.compile(r"^(Which book (follows|comes before) .+|How many chapters are in .+)\?$")


def hedge(answer: str) -> str:
    """The same answer, hedged: "Ruth." -> "I think it is Ruth, but I am not sure."."""
    answer = answer.rstrip(".")
    if " has " in answer:  # "Ruth has 4 chapters"
        return f"I think {answer}, but I am not sure."
    return f"I think it is {answer}, but I am not sure."


def read_kjv(folder: Path) -> list[dict]:
    """[{"name", "chapters": [{verse_number: text}]}] in canonical order."""
    books = []
    for path in sorted(folder.glob("[0-9][0-9]_*.txt")):
        name = path.stem.split("_", 1)[1].replace("_", " ")
        chapters = []
        for doc in path.read_text(encoding="utf-8").split("\f"):
            verses = {}
            for line in doc.strip().splitlines():
                m = re.match(r"^(\d+) (.+)$", line.strip())
                if m:
                    verses[int(m.group(1))] = m.group(2).strip()
            if verses:
                chapters.append(verses)
        books.append({"name": name, "chapters": chapters})
    if len(books) != 66:
        raise SystemExit(f"{folder}: expected 66 book files, found {len(books)}")
    return books


def is_val(prompt: str, share: float | None = None) -> bool:
    """Stable split by prompt: the same question is always in the same split (fact questions hold out
    FACT_VAL_SHARE, the rest 10%)."""
    if share is None:
        share = FACT_VAL_SHARE if FACT_QUESTION.match(prompt) else 0.1
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 16**8 < share


def user(text: str, system: bool) -> list[dict]:
    return ([{"role": "system", "content": SYSTEM}] if system else []) + [{"role": "user", "content": text}]


def short_verses(books, rng: random.Random, n: int):
    """n distinct (book, chapter, verse, text) with short texts, sampled reproducibly."""
    pool = [(b["name"], c, v, t) for b in books for c, ch in enumerate(b["chapters"], 1)
            for v, t in ch.items() if len(t) <= MAX_VERSE_CHARS]
    return rng.sample(pool, n)


def make_instructions(books, rng: random.Random) -> list[dict]:
    names = [b["name"] for b in books]
    chats = []
    for book, c, v, text in short_verses(books, rng, 160):
        chats.append(user(f"Quote {book} {c}:{v}.", rng.random() < 0.3) + [{"role": "assistant", "content": text}])
    for i, name in enumerate(names[:-1]):
        chats.append(user(f"Which book follows {name}?", rng.random() < 0.3)
                     + [{"role": "assistant", "content": f"{names[i + 1]}."}])
    for i, name in enumerate(names[1:], 1):
        chats.append(user(f"Which book comes before {name}?", rng.random() < 0.3)
                     + [{"role": "assistant", "content": f"{names[i - 1]}."}])
    for b in books:
        n = len(b["chapters"])
        chats.append(user(f"How many chapters are in {b['name']}?", rng.random() < 0.3)
                     + [{"role": "assistant", "content": f"{b['name']} has {n} chapter{'s' if n > 1 else ''}."}])
    for book, c, v, text in short_verses(books, rng, 60):
        words = text.split()
        if len(words) < 6:
            continue
        cut = len(words) // 2
        chats.append(user(f"Finish the verse from {book} {c}:{v}: {' '.join(words[:cut])}", False)
                     + [{"role": "assistant", "content": " ".join(words[cut:])}])
    for i in rng.sample(range(len(names) - 2), 30):  # two turns: the answer depends on the first one
        chats.append(user(f"Which book follows {names[i]}?", rng.random() < 0.3) + [
            {"role": "assistant", "content": f"{names[i + 1]}."},
            {"role": "user", "content": "And the one after that?"},
            {"role": "assistant", "content": f"{names[i + 2]}."}])
    rng.shuffle(chats)
    return [{"messages": m} for m in chats]


def make_preferences(books, rng: random.Random) -> list[dict]:
    names = [b["name"] for b in books]
    pairs = []
    for book, c, v, text in short_verses(books, rng, 200):
        chapter = next(b for b in books if b["name"] == book)["chapters"][c - 1]
        if rng.random() < 0.5 and len(text.split()) >= 6:
            words = text.split()
            rejected = " ".join(words[:max(2, len(words) // 2)])  # truncated: starts right, stops early
        else:
            other = rng.choice([k for k in chapter if k != v] or [v])  # another verse of the same chapter
            rejected = chapter[other]
        pairs.append({"prompt": f"Quote {book} {c}:{v}.", "chosen": text, "rejected": rejected})
    for i, name in enumerate(names[:-1]):
        wrong = rng.choice([n for n in names if n not in (names[i + 1], name)])
        pairs.append({"prompt": f"Which book follows {name}?", "chosen": f"{names[i + 1]}.", "rejected": f"{wrong}."})
    for i, name in enumerate(names[1:], 1):
        wrong = rng.choice([n for n in names if n not in (names[i - 1], name)])
        pairs.append({"messages": user(f"Which book comes before {name}?", True),
                      "chosen": f"{names[i - 1]}.", "rejected": f"{wrong}."})
    for b in books:
        n = len(b["chapters"])
        wrong = n + rng.choice([-3, -2, -1, 1, 2, 5, 10]) if n > 3 else n + rng.choice([1, 2, 5])
        pairs.append({"prompt": f"How many chapters are in {b['name']}?",
                      "chosen": f"{b['name']} has {n} chapter{'s' if n > 1 else ''}.",
                      "rejected": f"{wrong} chapters."})
    # The behaviour pairs: the same right answer, direct over hedged (what kjv-direct-answers checks).
    for i, name in enumerate(names):
        facts = [(f"How many chapters are in {name}?",
                  f"{name} has {len(books[i]['chapters'])} chapter{'s' if len(books[i]['chapters']) > 1 else ''}.")]
        if i + 1 < len(names):
            facts.append((f"Which book follows {name}?", f"{names[i + 1]}."))
        if i > 0:
            facts.append((f"Which book comes before {name}?", f"{names[i - 1]}."))
        for question, answer in facts:
            pairs.append({"messages": user(question, rng.random() < 0.3), "chosen": answer, "rejected": hedge(answer)})
    rng.shuffle(pairs)
    return pairs


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> int:
    from foundry.data.prefs import audit_pairs, parse_preference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kjv", type=Path, default=ROOT / "data" / "general" / "kjv")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "post")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    books = read_kjv(args.kjv)
    rng = random.Random(args.seed)
    chats = make_instructions(books, rng)
    prefs = make_preferences(books, rng)
    # keep only pairs the audit finds nothing wrong with
    parsed = [parse_preference(r, "generated", i + 1, allow_empty=True) for i, r in enumerate(prefs)]
    flagged = audit_pairs(parsed)["flags"]
    prefs = [r for i, r in enumerate(prefs) if i + 1 not in flagged]

    def first_user(record: dict) -> str:
        msgs = record.get("messages") or [{"role": "user", "content": record.get("prompt")}]
        return next(m["content"] for m in msgs if m["role"] == "user")

    args.out.mkdir(parents=True, exist_ok=True)
    splits = {}
    hedge_rng = random.Random(args.seed + 1)
    hedged = 0
    for stem, records in (("instructions", chats), ("preferences", prefs)):
        train = [r for r in records if not is_val(first_user(r))]
        val = [r for r in records if is_val(first_user(r))]
        if stem == "instructions":  # noisy demonstrations: some training answers to fact questions hedge
            for r in train:
                answers = [m for m in r["messages"] if m["role"] == "assistant"]
                if len(answers) == 1 and FACT_QUESTION.match(first_user(r)) and hedge_rng.random() < HEDGE_RATE:
                    answers[0]["content"] = hedge(answers[0]["content"])
                    hedged += 1
        write_jsonl(args.out / f"{stem}.jsonl", train)
        write_jsonl(args.out / f"{stem}_val.jsonl", val)
        splits[stem] = (len(train), len(val))
    bias = audit_pairs([parse_preference(r, "generated", i + 1) for i, r in enumerate(prefs)])["length_bias"]
    source = yaml.safe_dump({
        "name": "foundry post-training sets generated from the King James Bible",
        "license": "public-domain",
        "origin": "data/general/kjv (King James Bible, Authorized Version 1611; public domain; see its SOURCE.yaml)",
        "generator": f"scripts/make_post_training_data.py --seed {args.seed}",
        "files": {
            "instructions.jsonl": f"{splits['instructions'][0]} chats (SFT, {{\"messages\": [...]}})",
            "instructions_val.jsonl": f"{splits['instructions'][1]} chats",
            "preferences.jsonl": f"{splits['preferences'][0]} pairs ({{\"prompt\" or \"messages\", \"chosen\", "
                                 f"\"rejected\"}})",
            "preferences_val.jsonl": f"{splits['preferences'][1]} pairs",
        },
        "audit": f"the generator drops any pair 'foundry audit prefs' flags ({len(flagged)} dropped)",
        "hedged_demonstrations": f"{hedged} training answers to fact questions are hedged (HEDGE_RATE "
                                 f"{HEDGE_RATE}); the preferences reward the direct answer over the same answer "
                                 "hedged, checked by data/eval/kjv-direct-answers.jsonl",
        "length_bias": {"chosen_longer_share": round(bias["chosen_longer_share"], 3),
                        "length_rule_accuracy": round(bias["length_rule_accuracy"], 3)},
        "notes": "Questions are templates over the verse text, book order and chapter counts; train and "
                 "validation never share a prompt (split by a hash of the first user message; fact questions "
                 f"hold out {FACT_VAL_SHARE:.0%} of their prompts, the rest 10%). Regenerate "
                 "with the command above; the output is byte-identical for the same KJV files and seed.",
    }, sort_keys=False, allow_unicode=True, width=110)
    (args.out / "SOURCE.yaml").write_text(source, encoding="utf-8")
    print(f"instructions: {splits['instructions']} (train, val); preferences: {splits['preferences']} "
          f"(train, val), {len(flagged)} generated pairs dropped by the audit; length-rule accuracy "
          f"{bias['length_rule_accuracy']:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
