"""Retrieval grounding: passages with sources, a pickle-free BM25 index, and on the bundled fact set the
grounded prompt carries the answer that the closed-book prompt lacks."""

import json
from pathlib import Path

import numpy as np
import pytest

from foundry.cli import main as cli
from foundry.errors import DataError
from foundry.eval.tasks import check_output, load_task
from foundry.serve.retrieval import Index, collect_passages, grounded_prompt, split_passages

FACTS = Path(__file__).resolve().parents[2] / "data" / "facts"


def test_split_passages_joins_headings_and_windows_long_paragraphs():
    text = "# Title\n\n" + " ".join(f"w{i}" for i in range(25)) + "\n\n\n" + " ".join(f"x{i}" for i in range(7))
    passages = split_passages(text, min_words=5, max_words=10)
    assert passages[0].startswith("# Title w0 w1") and len(passages[0].split()) == 10
    assert passages[1].split()[0] == "w8"
    assert " ".join(passages).split() == text.split()  # nothing lost, nothing repeated


def test_index_build_load_search(tmp_path, capsys):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("Copper is mined in the hills above the harbour of Lindqvist every summer.\n")
    (docs / "sub" / "b.txt").write_text("The lighthouse of Morrow Point was built from grey granite blocks.\n")
    (docs / "ignored.bin").write_bytes(b"\x00\x01")
    out = tmp_path / "idx"
    assert cli(["index", "build", str(docs), "--out", str(out)]) == 0
    # no pickle anywhere: numpy arrays load with allow_pickle=False, the rest is JSON
    for f in out.rglob("*"):
        if f.suffix == ".npy":
            np.load(f, allow_pickle=False)
        elif f.is_file():
            assert f.suffix in (".json", ".jsonl"), f
    index = Index.load(out)
    hits = index.search("what was the lighthouse built from?", k=2)
    assert hits[0]["source"] == "sub/b.txt" and "granite" in hits[0]["text"] and hits[0]["score"] > 0
    assert all(h["score"] > 0 for h in hits)
    assert index.search("zzzz qqqq", k=3) == []
    prompt = grounded_prompt(index, "What is mined near Lindqvist?", k=1)
    assert "[a.md] Copper is mined" in prompt and prompt.rstrip().endswith("Answer:") and "[source]" in prompt
    # refusals: existing target, empty folder, not an index
    assert cli(["index", "build", str(docs), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["index", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "i2")]) == 1
    assert "no .txt or .md files" in capsys.readouterr().err and not (tmp_path / "i2").exists()
    with pytest.raises(DataError, match="not a retrieval index"):
        Index.load(docs)


def test_bundled_fact_set_grounding(tmp_path):
    """Retrieval half of grounded accuracy on data/facts: the right document is found (hit rate) and
    the grounded prompt contains every answer, while no closed-book prompt does. Whether a model then
    copies the answer is measured by `foundry eval --tasks data/facts/questions.jsonl --index ...`."""
    task = load_task(FACTS / "questions.jsonl")
    assert task.kind == "gen" and 50 <= len(task.items) <= 100
    index = Index.build(collect_passages(FACTS / "docs"))
    index.save(tmp_path / "idx")
    index = Index.load(tmp_path / "idx")
    hit_at_1 = answer_in_grounded = answer_in_closed = 0
    for item in task.items:
        town = item.prompt.split("town of ")[1].split()[0].rstrip("?")
        hits = index.search(item.prompt, k=1)
        hit_at_1 += hits[0]["source"] == f"{town.lower()}.md"
        answer_in_grounded += _states_fact(grounded_prompt(index, item.prompt, k=3), item)
        answer_in_closed += _states_fact(item.prompt, item)
    n = len(task.items)
    assert hit_at_1 / n >= 0.95, hit_at_1
    assert answer_in_grounded / n >= 0.95, answer_in_grounded
    assert answer_in_closed == 0
    # every question's answer is in exactly the document its town names
    for item in task.items:
        town = item.prompt.split("town of ")[1].split()[0].rstrip("?")
        doc = (FACTS / "docs" / f"{town.lower()}.md").read_text()
        assert _states_fact(doc, item)
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["passages"] == len(index.passages)


def _states_fact(text: str, item) -> bool:
    """Whether `text` states the fact the item's checker wants an answer to start with."""
    (checker,) = item.checkers
    return check_output(text, [{**checker, "pattern": checker["pattern"].removeprefix("^")}])


def test_eval_harness_reports_closed_book_and_grounded(tmp_path):
    """The fact set and index plug into `foundry eval`'s generation scoring (closed-book and grounded)."""
    from foundry.eval.harness import score_generation

    from tests.helpers.serve_fixtures import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    task = load_task(FACTS / "questions.jsonl")
    index = Index.build(collect_passages(FACTS / "docs"))
    result = score_generation(tiny_model(tok), tok, task.items[:3], max_new_tokens=2, index=index, k=1)
    assert result["n"] == 3 and 0 <= result["acc"] <= 1 and 0 <= result["grounded_acc"] <= 1
    assert len(result["grounded_examples"]) == 3
