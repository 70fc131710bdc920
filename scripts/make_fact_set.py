"""Write the bundled fact set `data/facts/`: invented towns, their documents, questions and training chats.

Every town, river, founder and landmark is invented from a fixed seed, so no model can know a fact
closed-book; the set measures grounding (reading a retrieved passage), not memory.

- `docs/`: one document per EVALUATION town, three short paragraphs (passages) of two facts each.
- `questions.jsonl`: one question per evaluation town (the asked fact cycles through the six kinds);
  `questions_mc.jsonl`: the same questions as four-way multiple choice (chance 0.25).
- `questions_reworded.jsonl`: the same facts asked in other words.
- `docs_changed/` + `questions_changed.jsonl`: the documents with the asked fact of each town changed,
  and the same questions expecting the NEW fact: a model that reads follows the documents, one that
  memorised them keeps the stale fact.
- `facts_sft.jsonl`: the pitfall arm, closed-book chats teaching the asked facts themselves.
- `grounded_train.jsonl`: grounded reading for SFT on thousands of OTHER towns, each asked only a few
  times, so the only way to lower the loss is to copy from the passage. Each prompt is built exactly as
  `foundry eval --index ... --k 1` builds it (`grounded_prompt` over an index of those towns' documents).

Answers start with a space (" Thas [tastaer.md]"): right after `<|assistant|>` a word without its space
would be different tokens from the same word inside the passage (" Thas"), and copying could not work.
Checkers require the answer to START with the fact (a model that recites the passage does not pass).

Run: `python scripts/make_fact_set.py [OUT_DIR]` (deterministic; rewrites every file).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

SEED = 7
N_EVAL_TOWNS = 60
N_TRAINING_TOWNS = 4000
QUESTIONS_PER_TRAINING_TOWN = 3  # each training town is seen this rarely: reading beats memorising
PASSAGES = 1  # the quickstart evaluates with --k 1; training prompts are built the same way

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th",
          "h", "w", "gr", "pl", "sk"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "ei", "ia"]
CODAS = ["n", "r", "l", "s", "th", "nd", "rk", "lt", "m", "x", "sk", "ff"]
FIRST_NAMES = ["Edda", "Tomas", "Ilse", "Marek", "Odile", "Bram", "Greta", "Anselm", "Livia", "Corin", "Hedda",
               "Piet", "Ysolde", "Rurik", "Maud", "Casimir", "Ottilie", "Leofric", "Saskia", "Bertil", "Wenna",
               "Joris", "Agathe", "Emeric"]
EXPORTS = ["copper", "saffron", "wool", "glassware", "cider", "slate", "honey", "rope", "paper", "cheese",
           "timber", "salt", "linen", "pottery", "tin", "amber", "barley", "lace", "indigo", "soap", "candles",
           "leather", "pewter", "walnuts", "herring", "marble", "silk", "clocks", "bells", "ink"]
LANDMARK_ADJECTIVES = ["Glass", "Iron", "Amber", "Salt", "Bronze", "Moon", "Stone", "Red", "Whispering", "Silver",
                       "Crooked", "Sunken", "Golden", "Weeping", "Painted", "Hollow"]
LANDMARK_NOUNS = ["Bridge", "Lighthouse", "Gate", "Cathedral", "Garden", "Stair", "Tower", "Fountain", "Orchard",
                  "Mill", "Arch", "Well", "Market", "Chapel", "Clock", "Obelisk"]
FIELDS = ("year", "river", "founder", "export", "landmark", "population")

# Three wordings of each question; `questions.jsonl` uses the first, `questions_reworded.jsonl` the second
# or third (alternating), grounded training all three (on other towns).
PHRASINGS = {
    "year": ["In which year was the town of {town} founded?", "When was {town} founded?",
             "What year was {town} founded in?"],
    "river": ["Which river flows past the town of {town}?", "On which river does {town} lie?",
              "What river runs through {town}?"],
    "founder": ["Who founded the town of {town}?", "Who was {town} founded by?", "By whom was {town} founded?"],
    "export": ["What is the main export of the town of {town}?", "What does {town} chiefly export?",
               "Which goods are the main export of {town}?"],
    "landmark": ["What is the best-known landmark of the town of {town}?", "What is {town}'s best-known landmark?",
                 "Which landmark is {town} known for?"],
    "population": ["What is the population of the town of {town}?", "How large is the population of {town}?",
                   "What population does {town} have?"],
}


# ---- invented towns --------------------------------------------------------------------------------
def invented_word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS)
    return word.capitalize()


def fact_value(rng: random.Random, field: str, names: "NamePool") -> str:
    """One invented value of `field`'s kind."""
    if field == "year":
        return str(rng.randrange(1100, 1900))
    if field == "river":
        return names.new(rng, rng.choice((1, 2)))
    if field == "founder":
        return f"{rng.choice(FIRST_NAMES)} {names.new(rng, 2)}"
    if field == "export":
        return rng.choice(EXPORTS)
    if field == "landmark":
        return f"{rng.choice(LANDMARK_ADJECTIVES)} {rng.choice(LANDMARK_NOUNS)}"
    return str(rng.randrange(1000, 99000))


class NamePool:
    """Invented words never handed out twice, so a town's name is in its own document only and
    retrieval by name finds exactly that document."""

    def __init__(self):
        self.taken: set[str] = set()

    def new(self, rng: random.Random, syllables: int) -> str:
        while True:
            word = invented_word(rng, syllables)
            if word not in self.taken:
                self.taken.add(word)
                return word


def make_towns(rng: random.Random, n: int, names: NamePool) -> list[dict]:
    towns = []
    for _ in range(n):
        town = {"town": names.new(rng, rng.choice((2, 2, 3)))}
        town.update({field: fact_value(rng, field, names) for field in FIELDS})
        towns.append(town)
    return towns


def source_name(town: dict) -> str:
    return f"{town['town'].lower()}.md"


def document(t: dict) -> str:
    """Three short paragraphs of two facts each, so a retrieved passage (a paragraph) is short and a
    training example fits twice in a 256-token row. Each paragraph repeats the town's name and holds the
    words its questions ask with ("founded", "river", "export", "landmark", "population"), so BM25 finds
    the paragraph with the answer; no paragraph says "town", which every question says, and none names
    the town twice (that would outweigh the question's other words)."""
    town = t["town"]
    return (f"{town} was founded in {t['year']} by {t['founder']}, who chose its site.\n\n"
            f"{town} lies on the river {t['river']}, and its main export is {t['export']}.\n\n"
            f"The best-known landmark of {town} is the {t['landmark']}; its population is {t['population']}.\n")


# ---- questions -------------------------------------------------------------------------------------
def starts_with(value: str) -> dict:
    """The answer must begin with the fact (leading spaces aside), and the fact must end there."""
    return {"type": "regex", "pattern": rf"^\s*{re.escape(value)}(?![\w])"}


def question(t: dict, field: str, phrasing: int, qid: str) -> dict:
    return {"id": qid, "prompt": PHRASINGS[field][phrasing].format(town=t["town"]),
            "checker": starts_with(t[field])}


def asked_field(i: int) -> str:
    return FIELDS[i % len(FIELDS)]


def multiple_choice(towns: list[dict], rows: list[dict], rng: random.Random) -> list[dict]:
    """The questions as log-likelihood multiple choice: the true fact against three of the same kind from
    other towns, so closed-book is at chance (0.25) and only the passage can lift it."""
    out = []
    for i, (t, row) in enumerate(zip(towns, rows)):
        field = asked_field(i)
        others = rng.sample(sorted({o[field] for o in towns if o[field] != t[field]}), 3)
        choices = others + [t[field]]
        rng.shuffle(choices)
        out.append({"id": row["id"], "context": row["prompt"], "choices": [f" {c}" for c in choices],
                    "answer": choices.index(t[field])})
    return out


def changed_towns(towns: list[dict], rng: random.Random, names: NamePool) -> list[dict]:
    """Each town with its asked fact replaced by another invented value of the same kind."""
    changed = []
    for i, t in enumerate(towns):
        field = asked_field(i)
        new = t[field]
        while new == t[field] or re.search(rf"(?<![\w]){re.escape(new)}(?![\w])", document(t)):
            new = fact_value(rng, field, names)
        changed.append({**t, field: new})
    return changed


# ---- chats -----------------------------------------------------------------------------------------
def grounded_answer(value: str, source: str) -> str:
    return f" {value} [{source}]"  # leading space: see the module docstring


def grounded_chats(towns: list[dict], rng: random.Random) -> list[dict]:
    """SFT chats whose user turn is exactly what `foundry eval --index --k 1` builds (the same
    `grounded_prompt` over an index of these towns' documents) and whose answer copies the fact from the
    passage and cites its source. Each town is asked QUESTIONS_PER_TRAINING_TOWN different facts."""
    from foundry.serve.retrieval import Index, collect_passages, grounded_prompt

    with tempfile.TemporaryDirectory() as tmp:
        for t in towns:
            (Path(tmp) / source_name(t)).write_text(document(t), encoding="utf-8")
        index = Index.build(collect_passages(tmp))
    chats = []
    for t in towns:
        for field in rng.sample(FIELDS, QUESTIONS_PER_TRAINING_TOWN):
            q = PHRASINGS[field][rng.randrange(len(PHRASINGS[field]))].format(town=t["town"])
            prompt = grounded_prompt(index, q, PASSAGES)
            # the right passage, or the example would teach making answers up
            assert f"[{source_name(t)}] " in prompt and re.search(rf" {re.escape(t[field])}\b", prompt), (t, q)
            chats.append({"messages": [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": grounded_answer(t[field], source_name(t))}]})
    rng.shuffle(chats)
    return chats


def closed_book_chats(towns: list[dict], rows: list[dict]) -> list[dict]:
    """The pitfall arm: the asked facts taught as plain question and answer (the questions' own wording)."""
    return [{"messages": [{"role": "user", "content": row["prompt"]},
                          {"role": "assistant", "content": f" {t[asked_field(i)]}"}]}
            for i, (t, row) in enumerate(zip(towns, rows))]


# ---- writing ---------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_docs(folder: Path, towns: list[dict]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for t in towns:
        (folder / source_name(t)).write_text(document(t), encoding="utf-8")


def main(out: Path) -> None:
    names = NamePool()
    towns = make_towns(random.Random(SEED), N_EVAL_TOWNS, names)
    training_towns = make_towns(random.Random(SEED + 1), N_TRAINING_TOWNS, names)  # the pool keeps them disjoint
    out.mkdir(parents=True, exist_ok=True)
    write_docs(out / "docs", towns)
    rows = [question(t, asked_field(i), 0, f"{t['town'].lower()}-{asked_field(i)}") for i, t in enumerate(towns)]
    write_jsonl(out / "questions.jsonl", rows)
    reworded = [question(t, asked_field(i), 1 + i % 2, f"{t['town'].lower()}-{asked_field(i)}-reworded")
                for i, t in enumerate(towns)]
    write_jsonl(out / "questions_reworded.jsonl", reworded)
    mc = multiple_choice(towns, rows, random.Random(SEED + 2))
    write_jsonl(out / "questions_mc.jsonl", mc)
    changed = changed_towns(towns, random.Random(SEED + 3), names)
    write_docs(out / "docs_changed", changed)
    write_jsonl(out / "questions_changed.jsonl",
                [question(t, asked_field(i), 0, f"{t['town'].lower()}-{asked_field(i)}-changed")
                 for i, t in enumerate(changed)])
    facts = closed_book_chats(towns, rows)
    write_jsonl(out / "facts_sft.jsonl", facts)
    train = grounded_chats(training_towns, random.Random(SEED + 4))
    write_jsonl(out / "grounded_train.jsonl", train)
    n = len(towns)
    source = {
        "name": "foundry fact set (invented towns)",
        "source": f"generated by scripts/make_fact_set.py (seed {SEED}); every town and fact is invented",
        "license": "CC0-1.0 (written for this project)",
        "documents": f"{n} markdown files in docs/, one invented town each, three paragraphs of two facts",
        "questions": f"{n} generation tasks in questions.jsonl, one per town, "
                     '{"id", "prompt", "checker": {"type": "regex", "pattern": "^\\\\s*FACT"}} '
                     "(the answer must start with the fact)",
        "questions_reworded": f"{n} generation tasks: the same facts asked in other words",
        "questions_mc": f"{len(mc)} multiple-choice tasks (the questions with four choices of the same kind, "
                        'chance 0.25), {"id", "context", "choices", "answer"}',
        "docs_changed": f"{n} documents: docs/ with the asked fact of each town changed",
        "questions_changed": f"{n} generation tasks: the questions, expecting the changed fact of docs_changed/",
        "facts_sft": f"{len(facts)} closed-book SFT chats teaching the asked facts (the post-training arm)",
        "grounded_train": f"{len(train)} SFT chats about {N_TRAINING_TOWNS} other invented towns (none in docs/), "
                          f"{QUESTIONS_PER_TRAINING_TOWN} questions each: the top retrieved passage "
                          f"(grounded_prompt, k={PASSAGES}) and a question, answered by copying the fact with "
                          "its source",
        "purpose": "closed-book against grounded accuracy, and grounding against post-training for facts",
    }
    (out / "SOURCE.yaml").write_text(yaml.safe_dump(source, sort_keys=False, width=110), encoding="utf-8")
    print(f"wrote {n} documents, {n} questions (+ reworded, changed, mc), {len(facts)} fact chats and "
          f"{len(train)} grounded training chats to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "facts")
