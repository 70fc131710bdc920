"""The bundled fact set (data/facts, written by scripts/make_fact_set.py) can teach and test grounding:
every grounded training answer is copyable from its own passage, training and evaluation towns are
disjoint, and the changed documents differ from the originals in exactly the fact that is asked."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from foundry.data.chat import read_chat_jsonl, render_chat
from foundry.eval.tasks import check_output, load_task
from foundry.serve.retrieval import Index, collect_passages, grounded_prompt

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts"
PASSAGE = re.compile(r"^\[(?P<source>[^\]]+)\] (?P<text>.*)$", re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("make_fact_set", ROOT / "scripts" / "make_fact_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def grounded_train():
    return read_chat_jsonl(FACTS / "grounded_train.jsonl")


def _town(item_id: str) -> str:
    return item_id.split("-")[0]


def test_every_grounded_answer_is_copied_from_its_own_passage(grounded_train):
    towns = set()
    for messages in grounded_train:
        user, answer = messages[0]["content"], messages[1]["content"]
        (source, text), = PASSAGE.findall(user)  # one passage, as --k 1 retrieves
        fact, cited = re.fullmatch(r" (.+) \[([^\]]+)\]", answer).groups()
        assert cited == source
        assert f" {fact}" in f" {text}".replace(",", " ").replace(".", " ")  # verbatim, a whole word
        town = source.removesuffix(".md")
        question = user.split("Question: ")[1]
        assert town in question.lower()  # the passage is the asked town's own
        towns.add(town)
    assert len(towns) >= 2000  # many towns, each asked rarely: memorising cannot lower the loss
    assert len(grounded_train) <= 4 * len(towns)


def test_answer_tokens_match_the_passage_tokens(grounded_train):
    """The answer starts with a space, so after `<|assistant|>` its tokens are the passage's tokens: the
    model can learn to copy. Without the space the first word tokenises differently."""
    from foundry.data.tokenizer import Tokenizer

    sample = grounded_train[:300]
    texts = [m["content"] for chat in sample for m in chat]
    tok = Tokenizer.train(texts, vocab_size=600, min_frequency=2)
    mismatched_without_space = 0
    for messages in sample:
        ids, mask = render_chat(tok, messages)
        answer_ids = [i for i, m in zip(ids, mask) if m][:-1]  # drop <|end|>
        prompt_ids = ids[:mask.index(True)]
        fact = messages[1]["content"].split(" [")[0]
        fact_ids = tok.encode(fact)
        assert answer_ids[:len(fact_ids)] == fact_ids
        assert any(prompt_ids[k:k + len(fact_ids)] == fact_ids for k in range(len(prompt_ids)))
        bare = tok.encode(fact.lstrip())
        mismatched_without_space += not any(prompt_ids[k:k + len(bare)] == bare for k in range(len(prompt_ids)))
    assert mismatched_without_space > len(sample) // 2


@pytest.mark.slow
def test_training_and_evaluation_towns_are_disjoint(grounded_train):
    eval_towns = {p.stem for p in (FACTS / "docs").glob("*.md")}
    assert len(eval_towns) >= 50
    train_text = (FACTS / "grounded_train.jsonl").read_text(encoding="utf-8").lower()
    assert not {t for t in eval_towns if re.search(rf"\b{t}\b", train_text)}
    for name in ("questions", "questions_reworded", "questions_changed"):
        task = load_task(FACTS / f"{name}.jsonl")
        assert len(task.items) >= 50 and {_town(i.id) for i in task.items} == eval_towns


def test_questions_are_answered_by_their_documents_only():
    index = Index.build(collect_passages(FACTS / "docs"))
    questions, reworded = (load_task(FACTS / f"{n}.jsonl").items for n in ("questions", "questions_reworded"))
    facts = read_chat_jsonl(FACTS / "facts_sft.jsonl")
    assert len(facts) == len(questions) == len(reworded)
    for q, r, chat in zip(questions, reworded, facts):
        assert r.prompt != q.prompt and r.checkers == q.checkers  # the same fact, asked differently
        for item in (q, r):
            prompt = grounded_prompt(index, item.prompt, 1)
            # the one retrieved paragraph is the town's own and holds the answer
            assert f"[{_town(item.id)}.md]" in prompt and _fact_in(prompt, item), prompt
            assert not check_output(item.prompt, item.checkers)
        # the post-training arm teaches exactly the asked fact, in the original wording
        assert chat[0]["content"] == q.prompt and check_output(chat[1]["content"], q.checkers)
        # checkers want the answer to START with the fact: reciting the passage does not pass
        doc = (FACTS / "docs" / f"{_town(q.id)}.md").read_text()
        assert not check_output(doc, q.checkers)
        assert check_output(chat[1]["content"] + f" [{_town(q.id)}.md]", q.checkers)


def test_changed_documents_change_exactly_the_asked_fact():
    make = _generator()
    questions = {_town(i.id): i for i in load_task(FACTS / "questions.jsonl").items}
    changed = {_town(i.id): i for i in load_task(FACTS / "questions_changed.jsonl").items}
    words = re.compile(r"[\w']+")
    for town, q in questions.items():
        old = (FACTS / "docs" / f"{town}.md").read_text()
        new = (FACTS / "docs_changed" / f"{town}.md").read_text()
        diff = [(a, b) for a, b in zip(words.findall(old), words.findall(new)) if a != b]
        assert len(words.findall(old)) == len(words.findall(new))
        old_fact, new_fact = _fact(q), _fact(changed[town])
        assert old_fact != new_fact and changed[town].prompt == q.prompt
        # the only differing words are the old fact's and the new fact's (one fact, maybe of two words)
        assert 1 <= len(diff) <= 2
        assert all(a in old_fact.split() and b in new_fact.split() for a, b in diff)
        # each document answers its own version of the question, not the other
        assert _fact_in(old, q) and not _fact_in(new, q)
        assert _fact_in(new, changed[town]) and not _fact_in(old, changed[town])
    assert sorted(questions) == sorted(p.stem for p in (FACTS / "docs_changed").glob("*.md"))
    index = Index.build(collect_passages(FACTS / "docs_changed"))  # what eval_changed retrieves from
    assert all(_fact_in(grounded_prompt(index, item.prompt, 1), item) for item in changed.values())
    assert make.N_EVAL_TOWNS == len(questions)


def _fact(item) -> str:
    """The fact a question's checker wants at the start of the answer."""
    pattern = item.checkers[0]["pattern"]
    assert pattern.startswith(r"^\s*") and pattern.endswith(r"(?![\w])")
    return pattern.removeprefix(r"^\s*").removesuffix(r"(?![\w])").replace("\\", "")


def _fact_in(doc: str, item) -> bool:
    """Whether the document states the item's fact as a whole word or phrase."""
    return re.search(rf"(?<![\w]){re.escape(_fact(item))}(?![\w])", doc) is not None


@pytest.mark.slow
def test_the_bundled_files_are_what_the_generator_writes(tmp_path):
    """data/facts is reproducible from scripts/make_fact_set.py (its provenance), byte for byte."""
    _generator().main(tmp_path)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(FACTS).as_posix() for p in FACTS.rglob("*") if p.is_file())
    assert written == bundled
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (FACTS / rel).read_bytes(), rel


def test_multiple_choice_form_matches_the_questions():
    questions = load_task(FACTS / "questions.jsonl").items
    mc = [json.loads(line) for line in (FACTS / "questions_mc.jsonl").read_text().splitlines()]
    assert [m["id"] for m in mc] == [q.id for q in questions]
    for m, q in zip(mc, questions):
        assert m["context"] == q.prompt and check_output(m["choices"][m["answer"]], q.checkers)
        assert sum(check_output(c, q.checkers) for c in m["choices"]) == 1
