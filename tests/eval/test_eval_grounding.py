"""`foundry eval --index`: every task, generation and multiple choice, is scored closed-book and grounded,
with the number of retrieved passages the user asked for."""

import json
from pathlib import Path

import pytest

from tests.helpers.serve_fixtures import tiny_checkpoint

FACTS = Path(__file__).resolve().parents[2] / "data" / "facts"


@pytest.fixture
def index_dir(tmp_path):
    from foundry.cli import main

    assert main(["index", "build", str(FACTS / "docs"), "--out", str(tmp_path / "idx")]) == 0
    return tmp_path / "idx"


def test_k_reaches_every_task_and_mc_is_scored_grounded(tmp_path, index_dir, monkeypatch):
    import foundry.serve.retrieval as retrieval
    from foundry.cli import main

    seen_k, real = [], retrieval.grounded_prompt

    def recording(index, question, k=3):
        seen_k.append(k)
        return real(index, question, k)

    monkeypatch.setattr(retrieval, "grounded_prompt", recording)
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(ckpt)
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join((FACTS / "questions.jsonl").read_text().splitlines(keepends=True)[:4]))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join((FACTS / "questions_mc.jsonl").read_text().splitlines(keepends=True)[:6]))
    out = tmp_path / "results.json"
    assert main(["eval", str(ckpt), "--tasks", str(gen), str(mc), "--index", str(index_dir), "--k", "1",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    assert len(seen_k) == 4 + 6 and set(seen_k) == {1}
    tasks = json.loads(out.read_text())["models"][0]["tasks"]
    for name in ("gen", "mc"):
        assert 0 <= tasks[name]["acc"] <= 1 and 0 <= tasks[name]["grounded_acc"] <= 1
    assert tasks["mc"]["chance"] == pytest.approx(0.25)


def test_mc_fact_set_is_answerable_only_from_the_documents():
    from foundry.eval.tasks import load_task
    from foundry.serve.retrieval import Index, collect_passages, grounded_prompt

    task = load_task(FACTS / "questions_mc.jsonl")
    index = Index.build(collect_passages(FACTS / "docs"))
    assert len(task.items) == len(load_task(FACTS / "questions.jsonl").items) >= 50
    for item in task.items:
        assert len(set(item.choices)) == 4
        right = item.choices[item.answer].strip()
        prompt = grounded_prompt(index, item.context, 1)
        assert right in prompt  # the top passage holds the answer...
        assert right not in item.context  # ...the question alone does not
