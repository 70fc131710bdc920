"""A bake-off directory written without generating (answers given as text), for the rating page's tests."""

from __future__ import annotations

import json
from pathlib import Path

from foundry.eval.bakeoff.rubric import load_rubric
from foundry.eval.bakeoff.sheet import blind
from foundry.utils.io import atomic_write_json, atomic_write_text

RUBRIC = """\
criteria:
  - name: brief
    type: length
    max_words: 12
  - name: accuracy
    type: human
    scale: [1, 5]
    description: Every claim in the answer is true and supported by the prompt.
  - name: voice
    type: human
    scale: [1, 3]
    description: Sounds like the brand; plain, warm, no hype.
"""
PROMPTS = [{"id": f"p{i}", "prompt": f"Describe product {i} in one sentence."} for i in range(3)]
MODELS = ("alpha", "beta")


def make_bakeoff(root: Path, rubric: str = RUBRIC) -> Path:
    """`root/out`: 3 prompts x 2 models = 6 blinded answers, the rubric's automatic scores already set."""
    (root / "rubric.yaml").write_text(rubric)
    criteria = load_rubric(root / "rubric.yaml")
    outputs = [{"model": m, "prompt_id": p["id"], "output": f"Product {p['id'][1:]} is {text}.",
                "tokens": 8, "scores": {"brief": 1.0}}
               for m, text in zip(MODELS, ("light and quick to set up, with a two-year warranty",
                                           "the strongest product ever made, guaranteed to last forever"))
               for p in PROMPTS]
    out = root / "out"
    sheet, key = blind(outputs, PROMPTS, criteria, secret="fixture")  # fixed: the docs screenshot stays the same
    atomic_write_text(out / "outputs.jsonl", "".join(json.dumps(o) + "\n" for o in outputs))
    atomic_write_json(out / "state.json", {
        "config_path": None, "criteria": criteria, "prompts": PROMPTS,
        "models": [{"name": m, "path": m} for m in MODELS],
        "usage": {m: {"tokens": 24, "seconds": 1.0} for m in MODELS}})
    atomic_write_text(out / "rating_sheet.csv", sheet)
    atomic_write_json(out / "blind_key.json", key)
    return out
