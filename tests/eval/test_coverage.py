"""foundry coverage: the statistics on hand-made inputs, the verdict rule, and the ranking that matters:
a model trained on English finds more English well covered and French poorly covered."""

import json
from collections import Counter

import pytest

from foundry.cli import main as cli
from foundry.eval.coverage import THRESHOLDS, discover_base_dataset, unseen_share, verdict, vocabulary_counts, words
from tests.helpers.continual_corpora import write_dataset


def test_words_keep_accents_and_ignore_case():
    assert words("Déjà vu, THE fenêtre's 3 cats.") == ["déjà", "vu", "the", "fenêtre", "s", "3", "cats"]


def test_bigrams_stay_inside_documents():
    uni, bi = vocabulary_counts(["a b a", "b c"])
    assert uni == Counter({"a": 2, "b": 2, "c": 1})
    assert bi == Counter({("a", "b"): 1, ("b", "a"): 1, ("b", "c"): 1})  # no ("a", "b") across the boundary


def test_unseen_share_of_top_items():
    domain = Counter({"x": 10, "y": 5, "z": 3, "w": 1})
    u = unseen_share(domain, {"y", "w"}, top_n=3)  # top 3: x, y, z; unseen: x, z
    assert u["top_n"] == 3 and u["unseen"] == 2
    assert u["share"] == pytest.approx(2 / 3)
    assert u["weighted"] == pytest.approx(13 / 18)
    assert u["examples"] == ["x", "z"]
    assert unseen_share(Counter({("a", "b"): 2}), set(), 5)["examples"] == ["a b"]


def test_verdict_rule():
    good = {k: g for k, (g, _) in THRESHOLDS.items()}  # exactly on the "good" bounds
    assert verdict(good)[0] == "well covered"
    one_fair = {**good, "unseen_words": 0.2}
    assert verdict(one_fair)[0] == "well covered"
    assert verdict({**one_fair, "bpb_ratio": 1.5})[0] == "partly covered"
    assert verdict({**good, "fertility_ratio": 2.0})[0] == "partly covered"  # one poor signal alone
    label, grades = verdict({**good, "fertility_ratio": 2.0, "unseen_bigrams": 0.9})
    assert label == "poorly covered" and grades["fertility_ratio"] == grades["unseen_bigrams"] == "poor"


def coverage_json(capsys, *argv):
    assert cli(["coverage", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_own_language_is_better_covered_than_another(base, capsys):
    assert discover_base_dataset(base["base"]) == base["en"]  # from the pretraining run's run.json
    en = coverage_json(capsys, base["base"], "--domain", base["en2"])
    fr = coverage_json(capsys, base["base"], "--domain", base["fr"], "--base", base["en"])
    assert en["base"] == fr["base"] == str(base["en"])
    assert en["verdict"] == "well covered" and fr["verdict"] == "poorly covered"
    for signal in ("fertility_ratio", "bpb_ratio", "unseen_words", "unseen_bigrams"):
        assert en["signals"][signal] < fr["signals"][signal], signal
    # the numbers behind the signals
    assert fr["fertility"]["domain"]["tokens_per_word"] > 2 * fr["fertility"]["base"]["tokens_per_word"]
    assert fr["model"]["domain"]["ppl"] > 10 * en["model"]["domain"]["ppl"]
    assert en["signals"]["unseen_words"] == 0.0


def test_table_output_ends_with_the_verdict_line(base, capsys, tmp_path):
    out = tmp_path / "cov.json"
    assert cli(["coverage", str(base["base"]), "--domain", str(base["fr"]), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("poorly covered: fertility x")
    assert json.loads(out.read_text())["verdict"] == "poorly covered"


def test_bad_inputs_are_one_line(base, tmp_path, capsys):
    orphan = tmp_path / "orphan"
    (orphan / "checkpoints").mkdir(parents=True)
    cases = [
        (["coverage", str(tmp_path / "nope"), "--domain", str(base["fr"]), "--base", str(base["en"])], "nope"),
        (["coverage", str(base["base"]), "--domain", str(tmp_path)], "not a dataset directory"),
        (["coverage", str(orphan), "--domain", str(base["fr"])], "pass --base"),
        (["coverage", str(base["base"]), "--domain", str(base["fr"]), "--top", "0"], "--top"),
    ]
    for argv, expect in cases:
        assert cli(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("foundry: error: ") and "\n" not in err and expect in err, err


def test_empty_domain_is_an_error(base, tmp_path, capsys):
    empty = write_dataset(tmp_path / "empty", "fr", n_train=0, n_val=0)
    assert cli(["coverage", str(base["base"]), "--domain", str(empty)]) == 1
    assert "no documents" in capsys.readouterr().err
