"""Write the bundled fact set `data/facts/`: a docs folder and a generation-task JSONL of questions.

The facts are about invented towns, generated deterministically from a fixed seed, so no model can
know them closed-book (no pretraining corpus contains them) and every answer is in exactly one
document: the set measures grounding, not memory. Run: `python scripts/make_fact_set.py [OUT_DIR]`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import yaml

SEED = 7
N_TOWNS = 10
N_TRAINING_TOWNS = 200
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou"]
CODAS = ["n", "r", "l", "s", "th", "nd", "rk", "lt", "m"]
EXPORTS = ["copper", "saffron", "wool", "glassware", "cider", "slate", "honey", "rope", "paper", "cheese",
           "timber", "salt"]
LANDMARKS = ["Glass Bridge", "Iron Lighthouse", "Clock of Nine Bells", "Amber Gate", "Salt Cathedral",
             "Hanging Garden", "Bronze Stair", "Owl Tower", "Moon Fountain", "Stone Orchard", "Red Mill",
             "Whispering Arch"]
FIRST = ["Edda", "Tomas", "Ilse", "Marek", "Odile", "Bram", "Greta", "Anselm", "Livia", "Corin", "Hedda", "Piet"]
LAST = ["Morrow", "Quill", "Harrow", "Voss", "Fenwick", "Aldane", "Brisk", "Coyle", "Dunmore", "Elsing",
        "Garrow", "Holt"]


def name(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS)
    return word.capitalize()


def make_towns(rng: random.Random) -> list[dict]:
    towns, seen = [], set()
    exports, landmarks = rng.sample(EXPORTS, N_TOWNS), rng.sample(LANDMARKS, N_TOWNS)
    firsts, lasts = rng.sample(FIRST, N_TOWNS), rng.sample(LAST, N_TOWNS)
    years = rng.sample(range(1210, 1890), N_TOWNS)
    while len(towns) < N_TOWNS:
        town, river = name(rng, 2), name(rng, 1)
        if town in seen or river in seen:
            continue
        seen.update((town, river))
        i = len(towns)
        towns.append({"town": town, "river": river, "export": exports[i], "landmark": landmarks[i],
                      "founder": f"{firsts[i]} {lasts[i]}", "year": str(years[i]),
                      "population": str(rng.randrange(2, 90) * 1000 + rng.randrange(1, 999))})
    return towns


def make_training_towns(rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    """Other invented towns, disjoint from the evaluation towns, to teach reading retrieved passages."""
    towns, seen = [], set(taken)
    while len(towns) < n:
        town, river = name(rng, 2), name(rng, 1)
        if town in seen or river in seen:
            continue
        seen.update((town, river))
        towns.append({"town": town, "river": river, "export": rng.choice(EXPORTS),
                      "landmark": rng.choice(LANDMARKS), "founder": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                      "year": str(rng.randrange(1210, 1890)),
                      "population": str(rng.randrange(2, 90) * 1000 + rng.randrange(1, 999))})
    return towns


def grounded_chats(towns: list[dict], passages: int) -> list[dict]:
    """SFT chats whose user turn is exactly what `foundry eval/generate/serve --index` build (the same
    `grounded_prompt` over an index of these towns' documents) and whose answer copies the fact and cites
    its source, so a model learns to answer from the passages it is given."""
    import tempfile

    from foundry.serve.retrieval import Index, collect_passages, grounded_prompt

    with tempfile.TemporaryDirectory() as tmp:
        for t in towns:
            (Path(tmp) / f"{t['town'].lower()}.md").write_text(document(t), encoding="utf-8")
        index = Index.build(collect_passages(tmp))
        chats = []
        for t in towns:
            for q in questions(t):
                prompt = grounded_prompt(index, q["prompt"], passages)
                answer = f"{q['checker']['values'][0]} [{t['town'].lower()}.md]"
                chats.append({"messages": [{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": answer}]})
    return chats


def document(t: dict) -> str:
    return (f"# {t['town']}\n\n"
            f"{t['town']} is a market town on the banks of the river {t['river']}. It was founded in "
            f"{t['year']} by the cartographer {t['founder']}, who drew the first map of the valley and "
            f"chose the site for its ford.\n\n"
            f"The main export of {t['town']} is {t['export']}, carried downstream on barges. The town's "
            f"best-known landmark is the {t['landmark']}, and its population at the last census was "
            f"{t['population']}.\n")


def questions(t: dict) -> list[dict]:
    town = t["town"]
    qa = [
        (f"In which year was the town of {town} founded?", [t["year"]]),
        (f"Which river flows past the town of {town}?", [t["river"]]),
        (f"What is the main export of the town of {town}?", [t["export"]]),
        (f"Who founded the town of {town}?", [t["founder"]]),
        (f"What is the best-known landmark of the town of {town}?", [t["landmark"]]),
    ]
    return [{"id": f"{town.lower()}-{k}", "prompt": q, "checker": {"type": "include", "values": values}}
            for k, (q, values) in enumerate(qa)]


def multiple_choice(towns: list[dict], rng: random.Random) -> list[dict]:
    """The same questions as log-likelihood multiple choice: the true fact against three of the same kind
    from other towns, so closed-book is at chance (0.25) and only the passage can lift it."""
    fields = ["year", "river", "export", "founder", "landmark"]
    rows = []
    for t in towns:
        for q, field_ in zip(questions(t), fields):
            others = rng.sample([o[field_] for o in towns if o[field_] != t[field_]], 3)
            choices = others + [t[field_]]
            rng.shuffle(choices)
            rows.append({"id": q["id"], "context": q["prompt"], "choices": [f" {c}" for c in choices],
                         "answer": choices.index(t[field_])})
    return rows


def main(out: Path) -> None:
    rng = random.Random(SEED)
    towns = make_towns(rng)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for t in towns:
        (docs / f"{t['town'].lower()}.md").write_text(document(t), encoding="utf-8")
    rows = [q for t in towns for q in questions(t)]
    (out / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    mc = multiple_choice(towns, random.Random(SEED + 2))
    (out / "questions_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc), encoding="utf-8")
    taken = {t["town"] for t in towns} | {t["river"] for t in towns}
    train = grounded_chats(make_training_towns(random.Random(SEED + 1), N_TRAINING_TOWNS, taken), passages=1)
    (out / "grounded_train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in train), encoding="utf-8")
    source = {
        "name": "foundry fact set (invented towns)",
        "source": "generated by scripts/make_fact_set.py (seed 7); every fact is invented",
        "license": "CC0-1.0 (written for this project)",
        "documents": f"{len(towns)} markdown files in docs/",
        "questions": f"{len(rows)} generation tasks in questions.jsonl, "
                     '{"id", "prompt", "checker": {"type": "include", "values": [...]}}',
        "questions_mc": f"{len(mc)} multiple-choice tasks in questions_mc.jsonl (the same questions, four "
                        "choices of the same kind, chance 0.25), {\"id\", \"context\", \"choices\", \"answer\"}",
        "grounded_train": f"{len(train)} SFT chats in grounded_train.jsonl about {N_TRAINING_TOWNS} other invented "
                          "towns (none shared with docs/): a retrieved passage and a question, answered from the "
                          "passage with its source",
        "purpose": "closed-book against grounded accuracy; no model can know these facts without retrieval",
    }
    (out / "SOURCE.yaml").write_text(yaml.safe_dump(source, sort_keys=False, width=110), encoding="utf-8")
    print(f"wrote {len(towns)} documents and {len(rows)} questions to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "facts")
