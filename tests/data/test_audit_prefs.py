"""`foundry audit prefs`: every planted problem is found, --fix cleans without losing anything, bad input fails."""

from __future__ import annotations

import json

import pytest

from tests.helpers.files import write_jsonl

from foundry.cli import main as cli
from foundry.data.prefs import audit_pairs, read_preferences
from foundry.errors import DataError

GOOD = [
    {"prompt": "Quote Genesis 1:3", "chosen": "And God said, Let there be light: and there was light.",
     "rejected": "In the beginning God created the heaven and the earth."},
    {"prompt": "Which book follows Ruth?", "chosen": "1 Samuel", "rejected": "Judges"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which book follows Ruth?"}],
     "chosen": [{"role": "assistant", "content": "1 Samuel"}], "rejected": "Esther"},
    {"prompt": "How many chapters has Jonah?", "chosen": "4", "rejected": "Jonah has forty-eight chapters."},
]
PLANTED = [
    GOOD[0],  # line 5: exact duplicate of line 1
    {"prompt": "Name a colour", "chosen": "Blue", "rejected": "Blue"},  # 6: chosen == rejected
    {"prompt": "Which book follows Ruth?", "chosen": "Judges", "rejected": "1 Samuel"},  # 7: contradicts line 2
    {"prompt": "Quote John 11:35", "chosen": "Jesus wept, and the people saw it.",
     "rejected": "Jesus wept, and the people saw it!"},  # 8: near-duplicate
    {"prompt": "Say hi", "chosen": "", "rejected": "hello"},  # 9: empty field
    {"prompt": "  ", "chosen": "a", "rejected": "b"},  # 10: empty prompt
]


def test_every_planted_problem_found(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", GOOD + PLANTED)
    result = audit_pairs(read_preferences(path, allow_empty=True))
    flags = result["flags"]
    assert flags[5] == ["exact_duplicate"] and 1 not in flags  # the first copy is kept
    assert flags[6] == ["chosen_equals_rejected"]
    assert "contradictory" in flags[7] and "contradictory" in flags[2]
    assert flags[8] == ["near_duplicate"]
    assert flags[9] == ["empty_field"] and flags[10] == ["empty_field"]
    assert set(flags) == {2, 5, 6, 7, 8, 9, 10}  # nothing clean is flagged
    assert result["counts"] == {"empty_field": 2, "chosen_equals_rejected": 1, "exact_duplicate": 1,
                                "contradictory": 2, "near_duplicate": 1}
    # length bias over the 8 usable pairs (lines 6 and 9 left out): chosen longer in lines 2 and 3;
    # ties (equal length) in lines 1, 5, 8, 10 -> share 2/8, length-rule accuracy (2 + 4/2)/8
    lb = result["length_bias"]
    assert lb["pairs"] == 8
    assert lb["chosen_longer_share"] == pytest.approx(0.25) and lb["length_rule_accuracy"] == pytest.approx(0.5)


def test_length_bias_rule_accuracy():
    path_pairs = [{"prompt": f"q{i}", "chosen": "long answer " * 3, "rejected": "short"} for i in range(3)]
    path_pairs.append({"prompt": "q", "chosen": "ab", "rejected": "cd"})  # tie counts half
    from foundry.data.prefs import parse_preference
    pairs = [parse_preference(r, "x", i + 1) for i, r in enumerate(path_pairs)]
    lb = audit_pairs(pairs)["length_bias"]
    assert lb["chosen_longer_share"] == pytest.approx(0.75) and lb["length_rule_accuracy"] == pytest.approx(0.875)


def test_cli_table_and_fix(tmp_path, capsys):
    src = write_jsonl(tmp_path / "prefs.jsonl", GOOD + PLANTED)
    out = tmp_path / "clean.jsonl"
    assert cli(["audit", "prefs", str(src), "--fix", str(out)]) == 0
    table = capsys.readouterr().out
    assert "contradictory" in table and "length-only rule accuracy" in table
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [GOOD[0], GOOD[2], GOOD[3]]
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["removed"] == 7 and sorted(r["line"] for r in report["removed_records"]) == [2, 5, 6, 7, 8, 9, 10]
    # the cleaned file audits clean
    assert audit_pairs(read_preferences(out))["flags"] == {}
    # refuses to overwrite, and leaves the existing output untouched
    out.write_text("precious\n")
    assert cli(["audit", "prefs", str(src), "--fix", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert cli(["audit", "prefs", str(src), "--fix", str(out), "--overwrite"]) == 0


def test_cli_writes_the_audit_as_json(tmp_path, capsys):
    src = write_jsonl(tmp_path / "prefs.jsonl", GOOD + PLANTED)
    out = tmp_path / "stage" / "audit.json"
    assert cli(["audit", "prefs", str(src), "--out", str(out)]) == 0
    audit = json.loads(out.read_text())
    assert audit["kind"] == "foundry.audit" and sorted(map(int, audit["flags"])) == [2, 5, 6, 7, 8, 9, 10]
    out.write_text("precious\n")
    assert cli(["audit", "prefs", str(src), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"


def test_model_flags_the_pairs_it_confidently_reverses(tmp_path, monkeypatch, capsys):
    """With --model, a flipped pair (one prompt, so no structural check can see it) is flagged when the
    model scores the rejected answer well above the chosen one; a small disagreement is not."""
    import foundry.eval.harness as harness
    from foundry.checkpoints import save_checkpoint
    from tests.helpers.eval_models import fresh_model, tokenizer

    pairs = [GOOD[1], GOOD[3], {"prompt": "Which book follows Genesis?", "chosen": "Leviticus", "rejected": "Exodus"}]
    src = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    save_checkpoint(tmp_path / "m", fresh_model(0), tokenizer())
    margins = {"1": 0.5, "2": -0.4, "3": -6.0}  # line -> log p(chosen) - log p(rejected)

    def fake_scores(model, tok, items, batch_size=16):
        return {"scores": {"margin": [margins[i.id] for i in items]}}

    monkeypatch.setattr(harness, "score_preferences", fake_scores)
    out = tmp_path / "audit.json"
    assert cli(["audit", "prefs", str(src), "--model", str(tmp_path / "m"), "--out", str(out)]) == 0
    audit = json.loads(out.read_text())
    assert audit["flags"] == {"3": ["model_disagrees"]} and audit["counts"]["model_disagrees"] == 1
    assert "model disagrees" in capsys.readouterr().out
    assert cli(["audit", "prefs", str(src), "--model", str(tmp_path / "m"), "--disagree-margin", "0.1",
                "--out", str(out), "--overwrite"]) == 0
    assert sorted(json.loads(out.read_text())["flags"]) == ["2", "3"]


@pytest.mark.parametrize("record,needle", [
    ({"prompt": "p", "rejected": "r"}, "missing 'chosen'"),
    ({"prompt": "p", "chosen": "c"}, "missing 'rejected'"),
    ({"chosen": "c", "rejected": "r"}, "exactly one of 'prompt'"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "'prompt' must be a string"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": "c", "rejected": "r"}, "must end with a user turn"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "'chosen' is empty"),
])
def test_bad_records_name_file_and_line(tmp_path, capsys, record, needle):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD[1], record])
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert str(e.value).startswith(f"{path}:2: ") and needle in str(e.value)


def test_cli_bad_file_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "rejected": "r"}])
    assert cli(["audit", "prefs", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"foundry: error: {path}:1: missing 'chosen'\n"


def test_bundled_post_training_data_is_valid_clean_and_reproducible(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from foundry.data.chat import read_chat_jsonl

    root = Path(__file__).resolve().parents[2]
    post = root / "data" / "post"
    chats = read_chat_jsonl(post / "instructions.jsonl")
    assert 200 <= len(chats) <= 500 and len(read_chat_jsonl(post / "instructions_val.jsonl")) >= 20
    prefs = read_preferences(post / "preferences.jsonl")
    assert 200 <= len(prefs) <= 500
    assert audit_pairs(prefs)["flags"] == {}  # the bundled set audits clean
    train_prompts = {p.prompt_key() for p in prefs}
    assert not train_prompts & {p.prompt_key() for p in read_preferences(post / "preferences_val.jsonl")}
    assert "license: public-domain" in (post / "SOURCE.yaml").read_text()
    if not (root / "data" / "general" / "kjv" / "01_Genesis.txt").is_file():
        pytest.skip("KJV text not present; cannot regenerate")
    subprocess.run([sys.executable, str(root / "scripts" / "make_post_training_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("instructions.jsonl", "instructions_val.jsonl", "preferences.jsonl", "preferences_val.jsonl",
                 "SOURCE.yaml"):
        assert (tmp_path / name).read_bytes() == (post / name).read_bytes(), name
