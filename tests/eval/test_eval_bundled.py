"""The bundled eval tasks and bake-off set: valid, deterministic, held out, and caught by decontamination."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from foundry.data.clean import clean_text, content_hash
from foundry.data.decontam import Decontaminator
from foundry.data.prepare import in_validation
from foundry.data.sources import ReadStats, read_txt
from foundry.eval.bakeoff.rubric import load_prompts, load_rubric
from foundry.eval.tasks import load_task

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "data" / "eval"
TASKS = ("kjv-continuation", "kjv-book", "pydocs-continuation")


def _chapters():
    for path in sorted((REPO / "data/general/kjv").glob("*.txt")):
        for raw in read_txt(path, "formfeed", "error", ReadStats()):
            yield clean_text(raw)


def test_bundled_tasks_load_and_match_source_yaml():
    source = yaml.safe_load((EVAL / "SOURCE.yaml").read_text())
    for name in TASKS:
        task = load_task(EVAL / f"{name}.jsonl")
        meta = source["tasks"][name]
        assert task.kind == "mc" and len(task.items) + len(task.fewshot) == meta["items"] >= 100
        assert len(task.fewshot) == meta["fewshot"] == 5
        assert all(len(i.choices) == 4 and len(set(i.choices)) == 4 for i in task.items)
        answers = Counter(i.answer for i in task.items)
        assert min(answers.values()) > len(task.items) / 8  # the answer position is not a giveaway


def test_script_is_deterministic(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts/make_eval_tasks.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in TASKS + ("kjv-direct-answers",):
        assert (tmp_path / "eval" / f"{name}.jsonl").read_bytes() == (EVAL / f"{name}.jsonl").read_bytes()
    assert (tmp_path / "bakeoff/prompts.jsonl").read_bytes() == (REPO / "data/bakeoff/prompts.jsonl").read_bytes()


def test_kjv_items_come_from_the_validation_split_and_decontamination_catches_them():
    val = [c for c in _chapters() if in_validation(content_hash(c), 0.02)]
    val_text = "\n".join(val)
    items = [json.loads(line) for line in (EVAL / "kjv-continuation.jsonl").read_text().splitlines()]
    for item in items:
        prev_verse = item["context"].split("\n")[0]
        assert re.match(r"^\d+ ", prev_verse) and prev_verse in val_text
        true = item["choices"][item["answer"]]
        assert item["context"].split("\n")[1] + true in val_text
    decon = Decontaminator([str(EVAL / f"{t}.jsonl") for t in TASKS])
    flagged = [c for c in val if decon.is_contaminated(c)]
    assert len(flagged) >= len(val) * 0.8  # nearly every held-out chapter holds an item
    train_sample = [c for c in _chapters() if not in_validation(content_hash(c), 0.02)][::10]
    assert sum(decon.is_contaminated(c) for c in train_sample) <= len(train_sample) * 0.05


def test_bundled_bakeoff_rubric_and_prompts():
    criteria = load_rubric(REPO / "data/bakeoff/rubric.yaml", style_model="some/style/model")
    assert {c["type"] for c in criteria} == {"reference_similarity", "must_include", "must_not_include", "length",
                                             "style_perplexity", "human"}
    prompts = load_prompts(REPO / "data/bakeoff/prompts.jsonl", criteria)
    assert 20 <= len(prompts) <= 50 and all(p["reference"] and p["required"] for p in prompts)
    cfg = yaml.safe_load((REPO / "data/bakeoff/bakeoff.yaml").read_text())
    assert [m["name"] for m in cfg["models"]] == ["base_sft", "domain_sft", "served_dpo"]
    from foundry.config import load_config
    from foundry.eval.bakeoff.rubric import BakeoffConfig

    kinds = [m.kind for m in load_config(BakeoffConfig, REPO / "data/bakeoff/bakeoff.yaml").models]
    assert kinds == ["local", "local", "serve"]  # the quickstart's contender over HTTP


def _pydocs_documents():
    for path in sorted((REPO / "data/domain/pydocs").glob("*.txt")):
        for raw in read_txt(path, "formfeed", "error", ReadStats()):
            yield clean_text(raw)


def test_pydocs_items_are_held_out_domain_text_with_domain_distractors():
    # The quickstart prepares pydocs with --val-fraction 0.05: every item must come from that split.
    docs = list(_pydocs_documents())
    val = [d for d in docs if in_validation(content_hash(d), 0.05)]
    train = [d for d in docs if not in_validation(content_hash(d), 0.05)]
    task = load_task(EVAL / "pydocs-continuation.jsonl")
    items = task.fewshot + task.items
    assert len(task.items) >= 200
    for item in items:
        true = item.choices[item.answer]
        home = [d for d in val if item.context + true in d]
        assert home, item.id  # the context and its true next word are held-out text, verbatim
        assert not any(item.context in d for d in train)
        for other in item.choices:
            if other != true:  # a distractor is a word of another held-out pydocs document, never of the general corpus
                assert any(other in d for d in val if d not in home), (item.id, other)
                assert abs(len(other) - len(true)) <= max(3, len(true) // 3), (item.id, true, other)


def test_direct_answer_check_asks_only_held_out_questions_and_tells_direct_from_hedged():
    from foundry.eval.tasks import check_output

    task = load_task(EVAL / "kjv-direct-answers.jsonl")
    assert task.kind == "gen" and len(task.items) >= 40
    trained = set()
    for name in ("instructions.jsonl", "preferences.jsonl"):
        for line in (REPO / "data/post" / name).read_text().splitlines():
            rec = json.loads(line)
            trained.add(next(m["content"] for m in rec.get("messages", []) if m["role"] == "user")
                        if "messages" in rec else rec["prompt"])
    assert not {i.prompt for i in task.items} & trained
    for item in task.items:
        direct = "Ruth has 4 chapters." if item.prompt.startswith("How many") else "1 Samuel."
        assert check_output(direct, item.checkers)
        assert not check_output("I think it is " + direct.rstrip(".") + ", but I am not sure.", item.checkers)
        assert not check_output("", item.checkers)
    # the training preferences reward exactly this: the same answer direct over hedged
    prefs = [json.loads(line) for line in (REPO / "data/post/preferences.jsonl").read_text().splitlines()]
    style = [p for p in prefs if "not sure" in p["rejected"]]
    assert len(style) >= 100 and all("not sure" not in p["chosen"] for p in prefs)
    assert all(p["chosen"].rstrip(".") in p["rejected"] for p in style)
