"""Verifiers for `foundry rl`: each built-in on right and wrong answers, user functions by import path, and
the failures a user can cause (a raising verifier names the prompt; a missing answer names the line)."""

from __future__ import annotations

import pytest

from foundry.errors import ConfigError, DataError
from foundry.train.verifiers import (
    RewardFunction, VerifierSpec, exact_match, json_schema_match, length_penalty, numeric_match, one_of, regex_match,
)


def test_builtins_score_right_and_wrong_answers():
    assert exact_match(" Paris ", "Paris") == 1.0 and exact_match("paris", "Paris") == 0.0
    assert exact_match("paris", "Paris", ignore_case=True) == 1.0
    assert numeric_match("the answer is 12", 12) == 1.0 and numeric_match("12 or 13", 12) == 0.0  # the LAST number
    assert numeric_match("-3.5", -3.5) == 1.0 and numeric_match("no number", 0) == 0.0
    assert numeric_match("0.1001", 0.1, tolerance=1e-3) == 1.0
    assert regex_match("42", r"^-?\d+$") == 1.0 and regex_match("42 apples", r"^-?\d+$") == 0.0
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert json_schema_match('{"n": 3}', schema) == 1.0
    assert json_schema_match('{"n": "3"}', schema) == 0.0 and json_schema_match("not json", schema) == 0.0
    assert one_of("Exodus", ["Genesis", "Exodus"]) == 1.0 and one_of("Ruth", ["Genesis"]) == 0.0
    assert length_penalty(10, free_tokens=4, per_token=0.5) == -3.0 and length_penalty(3, 4, 0.5) == 0.0


def test_reward_is_the_weighted_sum_and_the_first_verifier_decides_solved():
    reward = RewardFunction([VerifierSpec(type="numeric"), VerifierSpec(type="regex", pattern=r"^\d+$", weight=0.1),
                             VerifierSpec(type="length_penalty", free_tokens=1, per_token=0.05)])
    assert reward.score("12", {"answer": 12, "n_tokens": 3}, "p") == (pytest.approx(1.0 + 0.1 - 0.1), True)
    assert reward.score("it is 7", {"answer": 12, "n_tokens": 1}, "p") == (pytest.approx(0.0), False)
    spec = VerifierSpec.model_validate({"type": "json_schema", "schema": {"type": "integer"}})
    assert RewardFunction([spec]).score("5", {}, "p") == (1.0, True)


def test_user_verifier_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shorter_is_better(completion, item):\n    return 1.0 / (1 + len(completion))\n"
        "def broken(completion, item):\n    return {}['missing']\n"
        "def nan(completion, item):\n    return float('nan')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = RewardFunction([VerifierSpec(type="python", function="my_rewards:shorter_is_better")])
    assert reward.score("abc", {}, "p")[0] == 0.25
    with pytest.raises(DataError, match=r"prompts.jsonl:3 \(prompt 'What'\): verifier my_rewards:broken raised KeyError"):
        RewardFunction([VerifierSpec(type="python", function="my_rewards:broken")]).score(
            "x", {}, "prompts.jsonl:3 (prompt 'What')")
    with pytest.raises(DataError, match="returned nan"):
        RewardFunction([VerifierSpec(type="python", function="my_rewards:nan")]).score("x", {}, "p")
    with pytest.raises(ConfigError, match="cannot import 'nowhere_xyz'"):
        RewardFunction([VerifierSpec(type="python", function="nowhere_xyz:f")])
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        RewardFunction([VerifierSpec(type="python", function="my_rewards:missing")])
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        RewardFunction([VerifierSpec(type="python", function="my_rewards.shorter_is_better")])


def test_bad_specs_and_missing_answers_are_one_line_errors():
    with pytest.raises(ConfigError, match="does not compile"):
        RewardFunction([VerifierSpec(type="regex", pattern="(")])
    with pytest.raises(ConfigError, match="not a valid schema"):
        RewardFunction([VerifierSpec.model_validate({"type": "json_schema", "schema": {"type": 12}})])
    reward = RewardFunction([VerifierSpec(type="exact")])
    with pytest.raises(DataError, match=r"p.jsonl:7: no 'answer', which verifier exact needs"):
        reward.check_items([{"prompt": "a", "answer": 1, "_line": 1}, {"prompt": "b", "_line": 7}], "p.jsonl")
    RewardFunction([VerifierSpec(type="one_of", values=["a"])]).check_items([{"prompt": "x", "_line": 1}], "p")
