#!/usr/bin/env python3
"""Build the bundled classification task data/tasks/kjv-division/ from the bundled Bible (deterministic).

    python scripts/make_classification_tasks.py       # rewrites data/tasks/kjv-division/{train,test}.jsonl + SOURCE.yaml

The task: a passage of two consecutive verses of the King James Bible (verse numbers removed); the label is
the traditional division of the Bible its book belongs to, a fact of where the text comes from:

    law       Genesis - Deuteronomy           wisdom    Job - Song of Solomon
    history   Joshua - Esther, and Acts       prophets  Isaiah - Malachi
    gospels   Matthew - John                  epistles  Romans - Jude
    (Revelation, the one apocalypse, is left out rather than forced into a class.)

Honest splits:
- Chapters are read exactly as `foundry data prepare` reads them (form-feed documents, `clean_text`). A chapter
  belongs to the task when sha256("kjv-division:" + chapter) read as a number in [0, 1) falls below
  TASK_FRACTION; of those, the test chapters are the ones whose second hash falls below TEST_SHARE. A chapter is
  in train or in test, never both, so no passage (nor its neighbouring verses) is on both sides.
- Passages do not overlap; each class is capped (TRAIN_CAP, TEST_CAP) by a seeded draw, so the classes are
  balanced and chance is 1/6.
- Decontamination against pretraining: pass both files to `foundry data prepare --eval ...` (recipes/encoder.yaml
  does): every pretraining chapter sharing a 13-word n-gram with any passage is dropped, which removes the task's
  chapters from what the encoder is pretrained on. The script counts the passages too short (< 13 words) to be
  matched that way; their chapters are dropped through their other passages (counted as well).
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

from foundry.data.clean import clean_text  # noqa: E402
from foundry.data.sources import ReadStats, read_txt  # noqa: E402

SEED = 20261201
TASK_FRACTION = 0.3
TEST_SHARE = 0.35
TRAIN_CAP, TEST_CAP = 256, 80
VERSE = re.compile(r"^(\d+) (.+)$")
DIVISIONS = [("law", 1, 5), ("history", 6, 17), ("wisdom", 18, 22), ("prophets", 23, 39), ("gospels", 40, 43),
             ("history", 44, 44), ("epistles", 45, 65)]
OUT = REPO / "data" / "tasks" / "kjv-division"


def division(book_number: int) -> str | None:
    return next((name for name, lo, hi in DIVISIONS if lo <= book_number <= hi), None)


def unit_hash(tag: str, text: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{tag}:{text}".encode()).digest()[:8], "big") / 2**64


def passages(chapter: str) -> list[str]:
    verses = [m.group(2).strip() for line in chapter.split("\n") if (m := VERSE.match(line.strip()))]
    return [" ".join(verses[i:i + 2]) for i in range(0, len(verses) - 1, 2)]


def main() -> int:
    rng = random.Random(SEED)
    pools: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    chapters = {"train": 0, "test": 0}
    for path in sorted((REPO / "data" / "general" / "kjv").glob("*.txt")):
        label = division(int(path.name.split("_")[0]))
        if label is None:
            continue
        book = re.sub(r"^\d+_", "", path.stem).replace("_", " ")
        for raw in read_txt(path, "formfeed", "error", ReadStats()):
            text = clean_text(raw)
            if not text or unit_hash("kjv-division", text) >= TASK_FRACTION:
                continue
            split = "test" if unit_hash("kjv-division-test", text) < TEST_SHARE else "train"
            chapters[split] += 1
            chapter_name = f"{book} {text.split(chr(10), 1)[0].split()[-1]}"
            for k, passage in enumerate(passages(text)):
                pools[split].setdefault(label, []).append({"text": passage, "label": label,
                                                           "source": f"{chapter_name}, passage {k + 1}"})
    caps = {"train": TRAIN_CAP, "test": TEST_CAP}
    OUT.mkdir(parents=True, exist_ok=True)
    counts, digests, short = {}, {}, {}
    for split in ("train", "test"):
        items = []
        for label in sorted(pools[split]):
            pool = pools[split][label]
            items += rng.sample(pool, min(caps[split], len(pool)))
        rng.shuffle(items)
        body = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        (OUT / f"{split}.jsonl").write_text(body, encoding="utf-8")
        digests[split] = hashlib.sha256(body.encode()).hexdigest()
        counts[split] = {label: sum(i["label"] == label for i in items) for label in sorted(pools[split])}
        short[split] = sum(len(i["text"].split()) < 13 for i in items)
    train_texts = {i["text"] for i in map(json.loads, (OUT / "train.jsonl").read_text().splitlines())}
    test_texts = {i["text"] for i in map(json.loads, (OUT / "test.jsonl").read_text().splitlines())}
    assert not train_texts & test_texts, "a passage is in both splits"
    import yaml

    source = {
        "name": "kjv-division: which division of the Bible a passage comes from",
        "generated_by": "scripts/make_classification_tasks.py",
        "seed": SEED,
        "license": "public-domain (text of the King James Bible, data/general/kjv)",
        "format": "JSONL {text, label, source}: foundry finetune / foundry transfer read text and label",
        "labels": {name: f"books {lo}-{hi}" for name, lo, hi in DIVISIONS if name != "history"}
        | {"history": "books 6-17 (Joshua-Esther) and 44 (Acts)"},
        "left_out": "Revelation (book 66)",
        "unit": "two consecutive verses of one chapter, verse numbers removed, passages not overlapping",
        "split": {"rule": f"a chapter is in the task when sha256('kjv-division:' + chapter) < {TASK_FRACTION} "
                          f"(as a number in [0, 1)); in test when sha256('kjv-division-test:' + chapter) < "
                          f"{TEST_SHARE}; chapters are never in both splits",
                  "chapters": chapters, "cap_per_class": caps},
        "items": counts,
        "sha256": digests,
        "decontamination": "pass train.jsonl and test.jsonl to 'foundry data prepare --eval' (recipes/encoder.yaml "
                           "does): pretraining chapters sharing a 13-word n-gram with any passage are dropped",
        "passages_under_13_words": short,
    }
    (OUT / "SOURCE.yaml").write_text(yaml.safe_dump(source, sort_keys=False, allow_unicode=True, width=110))
    print(f"wrote {OUT}: train {counts['train']}, test {counts['test']} (chapters {chapters})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
