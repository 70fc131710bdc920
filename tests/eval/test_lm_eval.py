"""foundry eval --lm-eval: lm-evaluation-harness tasks on foundry models, beside foundry's own numbers."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from tests.helpers.eval_models import FACTS, fresh_model, tokenizer, trained_model  # noqa: E402
from foundry.cli import main as cli  # noqa: E402
from foundry.eval.harness import loglikelihoods, split_continuation  # noqa: E402
from foundry.eval.lm_eval import FoundryLM  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "eval" / "lm_eval"
KJV_BOOK = ROOT / "data" / "eval" / "kjv-book.jsonl"


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def summed_logprob(model, ids: list[int], n_predicted: int) -> float:
    """log p of the last `n_predicted` tokens of `ids`, from one plain forward pass."""
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids[:-1]])).float(), dim=-1)[0]
    targets = torch.tensor(ids[1:])
    return logprobs[torch.arange(len(ids) - 1), targets][-n_predicted:].sum().item()


def test_loglikelihood_equals_foundrys_own_scoring():
    model, tok = trained_model(), tokenizer()
    pairs = [(c, e) for c, e in FACTS] + [(FACTS[0][0] + " ", FACTS[0][1].lstrip())]  # trailing space moves
    pairs += [(FACTS[0][0], FACTS[1][1])]  # a wrong ending: not what greedy decoding would give
    got = FoundryLM(model, tok, batch_size=3).loglikelihood(requests("loglikelihood", pairs))
    own = []
    for context, ending in pairs:
        ctx, cont = split_continuation(tok, context, ending)
        own.append(([tok.eos_id] + ctx, cont))
    assert [g[0] for g in got] == pytest.approx(loglikelihoods(model, own))
    for (ll, _), (ctx, cont) in zip(got, own):
        assert ll == pytest.approx(summed_logprob(model, ctx + cont, len(cont)), abs=1e-4)
    assert [g[1] for g in got] == [True] * 5 + [False]  # memorised endings are the model's greedy choice
    assert got[4] == got[0]  # "eats " + "apples" is scored as "eats" + " apples"


def test_rolling_loglikelihood_and_generation_with_stop_strings():
    model, tok = trained_model(), tokenizer()
    lm = FoundryLM(model, tok)
    text = "".join(FACTS[2])
    (rolling,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    ids = [tok.eos_id] + tok.encode(text)
    assert rolling == pytest.approx(summed_logprob(model, ids, len(ids) - 1), abs=1e-4)
    out = lm.generate_until(requests("generate_until", [
        ("the red fox eats", {"until": ["."], "max_gen_toks": 12}),
        ("the blue bird sings", {"until": ["window"], "max_gen_toks": 12}),
        ("the tall man reads", {"until": [], "max_gen_toks": 2}),
    ]))
    assert out[0] == " apples in the garden"  # cut before the stop string
    assert out[1] == " songs at the "
    assert len(tok.encode(out[2])) <= 2 and " books by the fire.".startswith(out[2])


def test_bundled_task_agrees_with_foundrys_kjv_book(tmp_path, monkeypatch, capsys):
    from foundry.eval.harness import task_rows
    from foundry.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", fresh_model(3), tokenizer())
    monkeypatch.chdir(tmp_path)  # the bundled YAML finds its data from any working directory
    out = tmp_path / "results.json"
    assert cli(["eval", f"tiny={tmp_path / 'ckpt'}", "--tasks", str(KJV_BOOK), "--lm-eval", "kjv-book",
                "--lm-eval-include", str(BUNDLED), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["lm_eval"]["tasks"] == ["kjv-book"] and res["lm_eval"]["version"]
    (m,) = res["models"]
    own, outside = m["tasks"]["kjv-book"], m["lm_eval"]["kjv-book"]
    assert outside["n"] == own["n"] == 145 and outside["shots"] == own["shots"] == 0
    assert 0 < own["acc"] < 1 and own["acc"] != own["acc_norm"]  # an untrained model: not a degenerate score
    # Same prompts, same scoring: identical. foundry's acc_norm divides by UTF-8 bytes, which is lm-eval's
    # acc_bytes; lm-eval's acc_norm divides by characters, the same on this ASCII text.
    assert outside["acc"] == pytest.approx(own["acc"]) and outside["acc_stderr"] == pytest.approx(own["acc_stderr"])
    assert outside["acc_bytes"] == pytest.approx(own["acc_norm"]) == outside["acc_norm"]
    assert f"lm-eval kjv-book: {own['acc']:.3f}" in capsys.readouterr().out
    rows = task_rows(res)
    assert [r[0] for r in rows] == ["kjv-book", "kjv-book (lm-eval)"] and rows[0][2:] == rows[1][2:]


def test_few_shot_prompts_agree(tmp_path):
    """With shots, lm-eval builds its prompt from the file's fewshot items as foundry does."""
    from foundry.eval.harness import score_multiple_choice
    from foundry.eval.lm_eval import run_lm_eval
    from foundry.eval.tasks import load_task
    from foundry.model.llama import Llama, config_from_preset

    torch.manual_seed(3)
    tok = tokenizer()
    model = Llama(config_from_preset("test", vocab_size=tok.vocab_size, max_seq_len=512))  # room for the shots
    shots, items = load_task(KJV_BOOK).split_shots(2)
    own = score_multiple_choice(model, tok, items[:24], shots)
    outside = run_lm_eval(model, tok, ["kjv-book"], BUNDLED, limit=24, num_fewshot=2)["kjv-book"]
    assert outside["n"] == 24 and outside["shots"] == 2
    assert (outside["acc"], outside["acc_bytes"]) == pytest.approx((own["acc"], own["acc_norm"]))
    zero_shot = run_lm_eval(model, tok, ["kjv-book"], BUNDLED, limit=24, num_fewshot=0)["kjv-book"]
    assert zero_shot["acc"] == pytest.approx(score_multiple_choice(model, tok, items[:24])["acc"])


@pytest.mark.slow
def test_unknown_task_is_a_one_line_error_before_any_model_loads(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert cli(["eval", str(tmp_path / "no-model"), "--lm-eval", "kjv-bok", "--lm-eval-include", str(BUNDLED),
                "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kjv-bok: no such lm-eval task" in err and "kjv-book" in err
    assert not out.exists()


def test_task_whose_data_is_not_local_fails_offline_naming_it(tmp_path, capsys):
    from foundry.checkpoints import save_checkpoint

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "remote.yaml").write_text(
        "task: needs-download\noutput_type: multiple_choice\ndataset_path: foundry-test/not-in-any-cache\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: answer\n")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, fresh_model(0), tokenizer())
    assert cli(["eval", str(ckpt), "--lm-eval", "needs-download", "--lm-eval-include", str(tasks)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs-download" in err and "offline" in err


def test_local_generation_task_runs_through_lm_eval(tmp_path):
    from foundry.eval.lm_eval import run_lm_eval

    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"q": c, "a": e.rstrip(".")}) + "\n" for c, e in FACTS))
    (tmp_path / "facts_gen.yaml").write_text(
        f"task: facts-gen\noutput_type: generate_until\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {data}}}\ntest_split: test\n"
        "doc_to_text: q\ndoc_to_target: a\ntarget_delimiter: ''\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    trained = run_lm_eval(trained_model(), tokenizer(), ["facts-gen"], tmp_path)["facts-gen"]
    assert trained["exact_match"] == 1.0 and trained["n"] == 4
    assert run_lm_eval(fresh_model(3), tokenizer(), ["facts-gen"], tmp_path)["facts-gen"]["exact_match"] == 0.0
