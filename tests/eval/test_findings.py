"""Findings: claims computed from evaluation results with paired intervals and verdicts, never typed."""

import json

import pytest
import yaml

from tests.helpers.eval_models import fresh_model, tokenizer, trained_model
from foundry.cli import main as cli
from foundry.errors import ConfigError
from foundry.eval.findings import CONTRADICTED, HOLDS, NOT_MEASURED, NOT_SHOWN, Claim, evaluate_claim
from foundry.eval.harness import score_preferences
from foundry.eval.stats import mean_ci, paired_proportions_ci
from foundry.eval.tasks import PrefItem, load_task


def _task(scores: dict) -> dict:
    return {"kind": "gen", "n": len(scores["acc"]), "acc": sum(scores["acc"]) / len(scores["acc"]), "scores": scores}


def _results(path, models: dict) -> None:
    """models: name -> {"tasks": {...}} or {"perplexity": {...}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "foundry.eval", "models": [{"name": n, **m} for n, m in models.items()]}))


def _claim(**kw) -> Claim:
    return Claim(**{"id": "c", "lesson": "l", "results": "eval/results.json", "metric": "task:qa", **kw})


def test_paired_effect_interval_and_verdicts(tmp_path):
    a = [1, 1, 1, 0, 1, 1, 1, 1, 0, 1] * 3
    b = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0] * 3
    _results(tmp_path / "eval/results.json", {"grounded": {"tasks": {"qa": _task({"acc": b, "grounded_acc": a})}},
                                              "other": {"tasks": {"qa": _task({"acc": b})}}})
    f = evaluate_claim(_claim(better=["grounded@grounded_acc"], than=["other"]), tmp_path)
    expected = mean_ci([x - y for x, y in zip(a, b)])
    assert f["verdict"] == HOLDS and f["paired"] and f["n"] == 30
    # Right/wrong scores, one arm a side: the Agresti-Min interval for matched proportions.
    assert f["effect"] == pytest.approx(expected["mean"])
    assert (f["ci_low"], f["ci_high"]) == pytest.approx(paired_proportions_ci(a, b))
    assert f["arm_means"] == {"better": [pytest.approx(0.8)], "than": [pytest.approx(0.2)]}
    # The same comparison the other way round is contradicted; a model against itself shows nothing.
    assert evaluate_claim(_claim(better=["other"], than=["grounded@grounded_acc"]), tmp_path)["verdict"] == CONTRADICTED
    assert evaluate_claim(_claim(better=["other"], than=["grounded"]), tmp_path)["verdict"] == NOT_SHOWN
    # Stated as a price, the same measurements read as a cost, a gain, or no cost shown.
    cost = evaluate_claim(_claim(better=["other"], than=["grounded@grounded_acc"], cost=True), tmp_path)
    assert cost["verdict"] == "a cost" and cost["effect"] < 0
    assert evaluate_claim(_claim(better=["grounded@grounded_acc"], than=["other"], cost=True), tmp_path)["verdict"] == "a gain"
    assert evaluate_claim(_claim(better=["other"], than=["grounded"], cost=True), tmp_path)["verdict"] == "no cost shown"


def test_all_or_nothing_comparison_keeps_a_real_interval():
    # 60 of 60 against 0 of 60: every difference is 1, so the t interval is the point [1, 1]; the
    # matched-proportions interval (Agresti & Min 2005) is not.
    low, high = paired_proportions_ci([1.0] * 60, [0.0] * 60)
    assert 0.85 < low < 0.95 and high == 1.0
    t = mean_ci([1.0] * 60)
    assert t["ci_low"] == t["ci_high"] == 1.0
    # No difference at all: a symmetric interval around zero; an interval always holds the observed effect.
    low, high = paired_proportions_ci([1.0, 0.0] * 30, [1.0, 0.0] * 30)
    assert low == pytest.approx(-high) and low < 0 < high
    a, b = [1.0] * 20 + [0.0] * 40, [1.0] * 5 + [0.0] * 55
    low, high = paired_proportions_ci(a, b)
    assert low < 0.25 < high


def test_bits_per_byte_points_down_and_globs_average_seeds(tmp_path):
    def ppl(blocks):
        return {"perplexity": {"domain": {"bpb": sum(blocks) / len(blocks), "block_bpb": blocks}}}

    _results(tmp_path / "eval/results.json", {"adapted_s1": ppl([1.0, 1.1, 0.9, 1.0]), "adapted_s2": ppl([1.2, 1.1, 1.1, 1.0]),
                                              "base": ppl([2.0, 2.2, 1.9, 2.1])})
    f = evaluate_claim(_claim(metric="bpb:domain", better=["adapted_*"], than=["base"]), tmp_path)
    assert f["verdict"] == HOLDS and f["effect"] == pytest.approx(2.05 - 1.05)  # improvement is positive
    assert f["arm_means"]["better"] == [pytest.approx(1.05)]


def test_contrast_of_two_drops(tmp_path):
    # dpo falls from 0.9 to 0.5 with noise, cdpo from 0.9 to 0.8: "cdpo falls less" holds.
    n = 40
    arms = {"dpo_f0": [1] * 36 + [0] * 4, "dpo_f40": [1] * 20 + [0] * 20,
            "cdpo_f0": [1] * 36 + [0] * 4, "cdpo_f40": [1] * 32 + [0] * 8}
    _results(tmp_path / "eval/results.json", {k: {"tasks": {"qa": _task({"acc": v})}} for k, v in arms.items()})
    f = evaluate_claim(_claim(better=["dpo_f0", "cdpo_f40"], than=["dpo_f40", "cdpo_f0"]), tmp_path)
    assert f["n"] == n and f["effect"] == pytest.approx((0.9 - 0.5) - (0.9 - 0.8)) and f["verdict"] == HOLDS


def test_missing_results_or_model_is_not_measured(tmp_path):
    assert evaluate_claim(_claim(better=["a"], than=["b"]), tmp_path)["verdict"] == NOT_MEASURED
    _results(tmp_path / "eval/results.json", {"a": {"tasks": {"qa": _task({"acc": [1, 0]})}}})
    f = evaluate_claim(_claim(better=["a"], than=["b"]), tmp_path)
    assert f["verdict"] == NOT_MEASURED and "'b'" in f["reason"]


def test_unpaired_when_items_differ(tmp_path):
    _results(tmp_path / "eval/results.json", {"a": {"tasks": {"qa": _task({"acc": [1] * 18 + [0] * 2})}},
                                              "b": {"tasks": {"qa": _task({"acc": [1] * 3 + [0] * 27})}}})
    f = evaluate_claim(_claim(better=["a"], than=["b"]), tmp_path)
    assert not f["paired"] and f["verdict"] == HOLDS and f["effect"] == pytest.approx(0.9 - 0.1)


def test_preference_task_accuracy_matches_summed_logprobs(tmp_path):
    from foundry.data.prefs import encode_preference
    from foundry.eval.harness import loglikelihoods

    tok = tokenizer()
    path = tmp_path / "prefs.jsonl"
    pairs = [{"prompt": "the red fox eats", "chosen": "apples in the garden.", "rejected": "songs at the window."},
             {"prompt": "the blue bird sings", "chosen": "books by the fire.", "rejected": "over the old stone."}]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    task = load_task(path)
    assert task.kind == "pref" and isinstance(task.items[0], PrefItem)
    model = fresh_model(1)
    res = score_preferences(model, tok, task.items)
    for item, correct, margin in zip(task.items, res["scores"]["acc"], res["scores"]["margin"]):
        prompt, chosen, rejected = encode_preference(tok, item.messages, item.chosen, item.rejected)
        lc, lr = loglikelihoods(model, [(prompt, chosen), (prompt, rejected)])
        assert margin == pytest.approx(lc - lr, abs=1e-4) and correct == float(lc > lr)
    assert res["n"] == 2 and res["acc"] == sum(res["scores"]["acc"]) / 2


def test_eval_cli_stores_per_item_scores_and_per_window_bpb(tmp_path):
    from foundry.checkpoints import save_checkpoint

    tok = tokenizer()
    save_checkpoint(tmp_path / "m", trained_model(), tok)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "val.jsonl").write_text("".join(json.dumps({"id": str(i), "source": "t", "text": "the red fox eats apples " * 9})
                                          + "\n" for i in range(4)))
    task = tmp_path / "mc.jsonl"
    task.write_text(json.dumps({"context": "the red fox eats", "choices": [" apples", " songs"], "answer": 0}) + "\n")
    assert cli(["eval", f"m={tmp_path / 'm'}", "--data", str(ds), "--tasks", str(task),
                "--out", str(tmp_path / "r.json")]) == 0
    model = json.loads((tmp_path / "r.json").read_text())["models"][0]
    blocks = model["perplexity"]["ds"]["block_bpb"]
    assert len(blocks) >= 2 and min(blocks) > 0
    assert model["tasks"]["mc"]["scores"]["acc"] == [1.0] and model["tasks"]["mc"]["ids"]


def _recipe(tmp_path, findings) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "out_dir": str(tmp_path / "run"), "findings": findings,
                                    "stages": [{"name": "eval", "verb": "report", "args": ["{run}"]}]}))
    return str(path)


def test_recipe_findings_are_validated(tmp_path):
    from foundry.pipeline import load_recipe

    good = {"id": "g", "lesson": "l", "results": "eval/results.json", "metric": "task:qa", "better": ["a"], "than": ["b"]}
    assert load_recipe(_recipe(tmp_path, [good])).findings[0].id == "g"
    with pytest.raises(ConfigError, match="unknown key 'findings.0.beter'"):
        load_recipe(_recipe(tmp_path, [{**good, "beter": ["a"]}]))
    with pytest.raises(ConfigError, match="no stage writes"):
        load_recipe(_recipe(tmp_path, [{**good, "results": "evall/results.json"}]))
    with pytest.raises(ConfigError, match="unique"):
        load_recipe(_recipe(tmp_path, [good, good]))


def test_report_opens_with_computed_findings(tmp_path, capsys):
    run = tmp_path / "run"
    a, b = [1.0] * 25 + [0.0] * 5, [0.0] * 25 + [1.0] * 5
    _results(run / "eval/results.json", {"x": {"tasks": {"qa": _task({"acc": a})}}, "y": {"tasks": {"qa": _task({"acc": b})}}})
    (run / "findings.yaml").write_text(yaml.safe_dump({"findings": [
        {"id": "one", "lesson": "x beats y", "claim": "on qa", "results": "eval/results.json", "metric": "task:qa",
         "better": ["x"], "than": ["y"]},
        {"id": "two", "lesson": "z was measured", "results": "eval/results.json", "metric": "task:qa",
         "better": ["z"], "than": ["y"]}]}))
    assert cli(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    findings = report.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert report.index("## Findings") < report.index("## Evaluation")
    assert "x beats y" in findings and "**holds**" in findings and "+0.667 [" in findings
    assert "not measured" in findings and "'z'" in findings
    saved = json.loads((run / "findings.json").read_text())
    assert saved["kind"] == "foundry.findings" and [f["verdict"] for f in saved["findings"]] == [HOLDS, NOT_MEASURED]
    assert "Findings" in capsys.readouterr().out
