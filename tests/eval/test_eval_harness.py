"""foundry eval: log-likelihood multiple choice, generation checkers, perplexity/bpb, bad task files."""

import json
import math

import pytest

from tests.helpers.eval_models import FACTS, fresh_model, tokenizer, trained_model
from foundry.cli import main as cli
from foundry.eval.harness import score_generation, score_multiple_choice, split_continuation
from foundry.eval.perplexity import dataset_perplexity, stream_loss
from foundry.eval.tasks import MCItem, check_output, load_task

ENDINGS = [e for _, e in FACTS]


def mc_items(shift: int = 0) -> list[MCItem]:
    """Each fact's context with all four endings; `shift` moves the labelled answer off the truth."""
    return [MCItem(c, ENDINGS, (i + shift) % 4, f"q{i}") for i, (c, _) in enumerate(FACTS)]


def test_loglikelihood_picks_the_memorised_continuation():
    model, tok = trained_model(), tokenizer()
    right = score_multiple_choice(model, tok, mc_items())
    assert right["acc"] == 1.0 and right["acc_norm"] == 1.0 and right["n"] == 4
    wrong = score_multiple_choice(model, tok, mc_items(shift=1))
    assert wrong["acc"] == 0.0  # the labels moved, the model's choice did not
    assert right["chance"] == 0.25


def test_untrained_model_is_not_perfect_and_few_shot_prefix_is_used():
    tok = tokenizer()
    res = score_multiple_choice(fresh_model(3), tok, mc_items())
    assert res["acc"] < 1.0 or res["acc_norm"] < 1.0
    shots = score_multiple_choice(trained_model(), tok, mc_items()[2:], shots=mc_items()[:2])
    assert shots["shots"] == 2 and shots["n"] == 2


def test_split_continuation_moves_trailing_space_to_the_choice():
    tok = tokenizer()
    ctx, cont = split_continuation(tok, "the red fox eats ", "apples")
    assert tok.decode(ctx) == "the red fox eats" and tok.decode(cont) == " apples"


def test_generation_checkers_on_greedy_output():
    from foundry.eval.tasks import GenItem

    model, tok = trained_model(), tokenizer()
    items = [GenItem("the red fox eats", [{"type": "include", "values": ["apples"]}], "a", chat=False),
             GenItem("the red fox eats", [{"type": "exclude", "values": ["APPLES"]}], "b", chat=False),
             GenItem("the blue bird sings", [{"type": "regex", "pattern": r"^\s*songs\b"}], "c", chat=False)]
    res = score_generation(model, tok, items, max_new_tokens=8)
    assert [e["passed"] for e in res["examples"]] == [True, False, True]
    assert res["acc"] == pytest.approx(2 / 3)
    assert res["examples"][0]["output"].strip().startswith("apples")


def test_check_output_types():
    assert check_output(" Paris ", [{"type": "exact", "value": "paris"}])
    assert not check_output("Paris, France", [{"type": "exact", "value": "paris"}])
    assert check_output("a b", [{"type": "include", "values": ["a", "z"], "all": False}])
    assert not check_output("a b", [{"type": "include", "values": ["a", "z"]}])
    assert not check_output("Cures all", [{"type": "exclude", "values": ["cure"]}])
    assert check_output("Cures all", [{"type": "exclude", "values": ["cure"], "ignore_case": False}])


def test_perplexity_and_bits_per_byte(tmp_path):
    model, tok = trained_model(), tokenizer()
    ds = tmp_path / "facts"
    ds.mkdir()
    texts = [c + e for c, e in FACTS]
    (ds / "val.jsonl").write_text("".join(json.dumps({"id": str(i), "source": "t", "text": t}) + "\n"
                                          for i, t in enumerate(texts)))
    res = dataset_perplexity(model, tok, ds)
    nats, count = stream_loss(model, [0] + [t for x in texts for t in tok.encode(x) + [0]], 64)
    assert res["tokens"] == count == sum(len(tok.encode(t)) + 1 for t in texts)
    assert res["loss"] == pytest.approx(nats / count)
    assert res["bytes"] == sum(len(t.encode()) for t in texts)
    assert res["bpb"] == pytest.approx(nats / math.log(2) / res["bytes"])
    untrained = dataset_perplexity(fresh_model(3), tok, ds)
    assert res["ppl"] < untrained["ppl"] / 3
    # Window boundaries: a short block gives the same token count, every token predicted once.
    assert dataset_perplexity(model, tok, ds, block_size=5)["tokens"] == count


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lines, message", [
    (['{"context": "a", "choices": ["x", "y"], "answer": 0}', '{"context": "b", "choices": ["x", "y"], "answer": 2}'],
     ":2: answer index 2 is out of range for 2 choices"),
    (['{"context": "a", "choices": ["x", "y"], "answer": 0}', '{"context": "a", "choices": '],
     ":2: not valid JSON"),
    (['{"prompt": "q", "checker": {"type": "smells_right", "values": ["a"]}}'],
     ":1: unknown checker type 'smells_right'"),
    (['{"prompt": "q", "checker": {"type": "regex", "pattern": "(unclosed"}}'], ":1: checker regex"),
    (['{"context": "a", "choices": ["x", "y"], "answer": "0"}'], ":1: 'answer' must be an integer"),
    (['{"prompt": "q", "checker": {"type": "exact", "value": "a"}}', '{"context": "a", "choices": ["x","y"], "answer": 0}'],
     ":2: a mc item in a gen task file"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, capsys, lines, message):
    task = _write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "results.json"
    assert cli(["eval", str(tmp_path / "no-model"), "--tasks", str(task), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error: ") and f"bad.jsonl{message}" in err and err.count("\n") == 1
    assert not out.exists()


def test_fewshot_split_and_shots_bounds(tmp_path):
    task = load_task(_write(tmp_path / "t.jsonl", [
        '{"context": "a", "choices": ["x", "y"], "answer": 0, "split": "fewshot"}',
        '{"context": "b", "choices": ["x", "y"], "answer": 1}',
    ]))
    shots, items = task.split_shots(1)
    assert [s.context for s in shots] == ["a"] and [i.context for i in items] == ["b"]
    with pytest.raises(Exception, match="only 1 few-shot"):
        task.split_shots(2)


def test_cli_end_to_end_on_a_checkpoint(tmp_path, capsys):
    from foundry.checkpoints import save_checkpoint

    tok = tokenizer()
    ckpt = tmp_path / "run" / "checkpoints" / "best"
    save_checkpoint(ckpt, trained_model(), tok)
    ds = tmp_path / "facts"
    ds.mkdir()
    (ds / "val.jsonl").write_text("".join(json.dumps({"id": str(i), "source": "t", "text": c + e}) + "\n"
                                          for i, (c, e) in enumerate(FACTS)))
    mc = _write(tmp_path / "facts-mc.jsonl", [json.dumps({"context": c, "choices": ENDINGS, "answer": i})
                                               for i, (c, _) in enumerate(FACTS)])
    gen = _write(tmp_path / "facts-gen.jsonl", [json.dumps({"prompt": "the tall man reads", "chat": False,
                                                            "checker": {"type": "include", "values": ["books"]}})])
    out = tmp_path / "results.json"
    argv = ["eval", f"mine={ckpt}", str(tmp_path / "run"), "--data", str(ds), "--tasks", str(mc), str(gen),
            "--out", str(out), "--max-new-tokens", "6"]
    assert cli(argv) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "foundry.eval" and [m["name"] for m in res["models"]] == ["mine", "run"]
    for m in res["models"]:
        assert m["tasks"]["facts-mc"]["acc"] == 1.0 and m["tasks"]["facts-gen"]["acc"] == 1.0
        assert m["perplexity"]["facts"]["bpb"] > 0
    assert "facts-mc" in capsys.readouterr().out
    before = out.read_text()
    assert cli(argv) == 1 and "already exists" in capsys.readouterr().err and out.read_text() == before


def test_grounded_generation_reports_closed_book_and_grounded(tmp_path, monkeypatch):
    """With --index the prompt is built by retrieval; an echoing 'model' passes only when grounded."""
    import foundry.eval.harness as harness
    from foundry.checkpoints import save_checkpoint

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "boter.md").write_text("# Boter\n\nBoter is a market town on the river Dras. It was founded in 1805 by "
                                   "the cartographer Odile Harrow, who chose the site for its ford.\n")
    (docs / "novoult.md").write_text("# Novoult\n\nNovoult is a hill town above the river Keld. It was founded in "
                                     "1712 by a guild of weavers who built the first bridge over the gorge.\n")
    assert cli(["index", "build", str(docs), "--out", str(tmp_path / "idx")]) == 0
    task = _write(tmp_path / "towns.jsonl", [
        json.dumps({"prompt": "In which year was the town of Boter founded?",
                    "checker": {"type": "include", "values": ["1805"]}}),
        json.dumps({"prompt": "Who founded the town of Novoult?", "checker": {"type": "include", "values": ["weavers"]}}),
    ])
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, trained_model(), tokenizer())
    seen = []
    monkeypatch.setattr(harness, "greedy_answers", lambda m, t, prompts, chat, n: seen.extend(prompts) or list(prompts))
    out = tmp_path / "r.json"
    assert cli(["eval", str(ckpt), "--tasks", str(task), "--index", str(tmp_path / "idx"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["models"][0]["tasks"]["towns"]
    assert res["acc"] == 0.0 and res["grounded_acc"] == 1.0
    assert "[boter.md]" in seen[2] and "1805" in seen[2] and "1805" not in seen[0]
    assert res["grounded_examples"][0]["passed"] is True
