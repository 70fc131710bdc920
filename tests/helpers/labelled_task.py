"""A two-topic text classification task (river words against market words) for the finetune and transfer tests."""

from __future__ import annotations

import random

TOPICS = {"river": "the river town water boat bridge fish", "market": "copper salt wool coin trade price"}


def task(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = sorted(TOPICS)[i % 2]
        words = TOPICS[label].split()
        rows.append({"text": " ".join(rng.choice(words) for _ in range(8)), "label": label})
    return rows
