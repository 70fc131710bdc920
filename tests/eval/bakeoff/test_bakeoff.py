"""foundry bakeoff: generation + automatic criteria, blinding undone exactly, CI and ranking, bad inputs."""

import csv
import io
import json
import math

import pytest

from tests.helpers.eval_models import fresh_model, tokenizer, trained_model
from foundry.cli import main as cli
from foundry.errors import ConfigError, DataError
from foundry.eval.bakeoff.rubric import ModelEntry, load_rubric
from foundry.eval.bakeoff.scoring import chrf, token_f1
from foundry.eval.bakeoff.sheet import read_ratings
from foundry.eval.bakeoff.summary import summarise

RUBRIC = """\
name: test rubric
criteria:
  - name: facts
    type: must_include
    from_prompt: required
    weight: 1
  - name: no_claims
    type: must_not_include
    patterns: ["guaranteed", "cure"]
  - name: brief
    type: length
    max_words: 40
  - name: overlap
    type: reference_similarity
    metric: token_f1
  - name: voice
    type: style_perplexity
    model: style
    ppl_best: 2
    ppl_worst: 500
  - name: accuracy
    type: human
    scale: [1, 5]
    weight: 3
"""

PROMPTS = [
    {"id": "fox", "prompt": "the red fox eats", "reference": "apples in the garden.", "required": ["apples"]},
    {"id": "bird", "prompt": "the blue bird sings", "reference": "songs at the window."},
    {"id": "man", "prompt": "the tall man reads", "reference": "books by the fire.", "required": ["books", "fire"]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from foundry.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("bake")
    tok = tokenizer()
    save_checkpoint(root / "alpha", trained_model(), tok)
    save_checkpoint(root / "beta", fresh_model(5), tok)
    save_checkpoint(root / "style", trained_model(), tok)
    (root / "rubric.yaml").write_text(RUBRIC)
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (root / "bakeoff.yaml").write_text(
        "prompts: prompts.jsonl\nrubric: rubric.yaml\nseed: 7\nmax_new_tokens: 8\ntemperature: 0.7\nchat: false\n"
        "models:\n  - {name: alpha, path: alpha, price_per_1k_tokens: 2.0}\n"
        "  - {name: beta, path: beta, price_per_compute_second: 0.5}\n")
    out = root / "out"
    assert cli(["bakeoff", "--config", str(root / "bakeoff.yaml"), "--out", str(out)]) == 0
    return root, out


def _sheet(out):
    text = (out / "rating_sheet.csv").read_text()
    return list(csv.DictReader(io.StringIO(text))), text


def test_outputs_scores_and_blinded_sheet(setup):
    root, out = setup
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(outputs) == 6 and {o["model"] for o in outputs} == {"alpha", "beta"}
    rows, text = _sheet(out)
    assert list(rows[0]) == ["blind_id", "prompt_id", "prompt", "output", "accuracy", "comments"]
    assert "alpha" not in text and "beta" not in text  # nothing in the sheet names a model
    assert len({r["blind_id"] for r in rows}) == 6
    key = json.loads((out / "blind_key.json").read_text())["key"]
    assert set(key) == {r["blind_id"] for r in rows}
    summary = json.loads((out / "bakeoff.json").read_text())
    assert summary["human_pending"] == ["accuracy"]
    by = {m["name"]: m for m in summary["models"]}
    # The memorised model says "apples" for the fox and "books ... fire" for the man: facts = 1.0 on both.
    alpha = [o for o in outputs if o["model"] == "alpha"]
    assert "apples" in next(o for o in alpha if o["prompt_id"] == "fox")["output"]
    assert by["alpha"]["criteria"]["facts"]["n"] == 2  # the bird prompt requires nothing
    assert by["alpha"]["criteria"]["overlap"]["mean"] > by["beta"]["criteria"]["overlap"]["mean"]
    assert by["alpha"]["criteria"]["voice"]["mean"] > by["beta"]["criteria"]["voice"]["mean"]
    assert summary["ranking"][0] == "alpha"
    # Cost: alpha pays per token, beta per compute second.
    assert by["alpha"]["cost"] == pytest.approx(by["alpha"]["tokens"] / 1000 * 2.0)
    assert by["beta"]["cost"] == pytest.approx(by["beta"]["seconds"] * 0.5, rel=1e-3)
    assert by["alpha"]["tokens"] == sum(o["tokens"] for o in alpha)
    # Seeded: generating again gives the same answers.
    again = root / "again"
    assert cli(["bakeoff", "--config", str(root / "bakeoff.yaml"), "--out", str(again)]) == 0
    assert [json.loads(x)["output"] for x in (again / "outputs.jsonl").read_text().splitlines()] == \
        [o["output"] for o in outputs]
    # ...but not the same blinding: the ids come from a fresh secret kept only in the key, not the public seed
    first, second = (json.loads((d / "blind_key.json").read_text()) for d in (out, again))
    assert "seed" not in first and len(first["secret"]) >= 32 and first["secret"] != second["secret"]
    assert set(first["key"]).isdisjoint(second["key"])
    assert "secret" not in (out / "rating_sheet.csv").read_text() and first["secret"] not in (
        out / "bakeoff.json").read_text() + (out / "state.json").read_text()


def test_blinding_is_undone_exactly(setup, tmp_path):
    root, out = setup
    rows, _ = _sheet(out)
    key = json.loads((out / "blind_key.json").read_text())["key"]
    outputs = {(o["model"], o["prompt_id"]): o["output"]
               for o in map(json.loads, (out / "outputs.jsonl").read_text().splitlines())}
    # Each row's text is exactly the answer the key says it is.
    for r in rows:
        owner = key[r["blind_id"]]
        assert outputs[(owner["model"], owner["prompt_id"])] == r["output"] and owner["prompt_id"] == r["prompt_id"]
    # A rater who gives beta's answers 5 and alpha's 1 (per prompt: 1, 2, 3 for alpha).
    score_of = {("alpha", "fox"): 1, ("alpha", "bird"): 2, ("alpha", "man"): 3}
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            owner = key[r["blind_id"]]
            w.writerow({**r, "accuracy": score_of.get((owner["model"], owner["prompt_id"]), 5)})
    auto_before = {m["name"]: m["criteria"]["overlap"] for m in json.loads((out / "bakeoff.json").read_text())["models"]}
    # No config or model paths needed: the bake-off directory holds everything the ratings meet.
    assert cli(["bakeoff", "--out", str(out), "--ratings", str(filled)]) == 0
    summary = json.loads((out / "bakeoff.json").read_text())
    by = {m["name"]: m for m in summary["models"]}
    assert by["beta"]["criteria"]["accuracy"]["mean"] == 5.0 and by["beta"]["criteria"]["accuracy"]["n"] == 3
    assert by["alpha"]["criteria"]["accuracy"]["mean"] == 2.0
    assert {n: by[n]["criteria"]["overlap"] for n in by} == auto_before  # automatic scores kept as generated
    assert summary["human_pending"] == []
    assert "accuracy (w=3)" in (out / "bakeoff.md").read_text()


def test_confidence_interval_and_ranking_on_a_hand_made_sheet(tmp_path):
    rubric = tmp_path / "r.yaml"
    rubric.write_text("criteria:\n  - {name: acc, type: human, scale: [1, 5], weight: 3}\n"
                      "  - {name: brand, type: human, scale: [1, 5], weight: 1}\n")
    criteria = load_rubric(rubric)
    key = {"key": {f"b{i}": {"model": m, "prompt_id": f"p{i % 4}"} for i, m in
                   enumerate(["A"] * 4 + ["B"] * 4)}}
    # A: acc 4,5,3,4 brand 1,1,1,1   B: acc 3,3,3,3 brand 5,5,5,5
    sheet = tmp_path / "s.csv"
    sheet.write_text("blind_id,acc,brand,rater\n" + "".join(
        f"b{i},{a},{b},r1\n" for i, (a, b) in enumerate([(4, 1), (5, 1), (3, 1), (4, 1), (3, 5), (3, 5), (3, 5), (3, 5)])))
    human = read_ratings(sheet, key, criteria)
    assert human[("A", "p1")] == {"acc": 5.0, "brand": 1.0} and human[("B", "p0")] == {"acc": 3.0, "brand": 5.0}
    prompts = [{"id": f"p{i}"} for i in range(4)]
    models = [ModelEntry(name="A", path="a", price_per_1k_tokens=1.0), ModelEntry(name="B", path="b")]
    s = summarise(criteria, models, {"A": {"tokens": 2000, "seconds": 1.0}, "B": {"tokens": 10, "seconds": 9.0}},
                  {}, human, prompts)
    a = s["models"][0]["criteria"]["acc"]
    sd = math.sqrt(2 / 3)  # scores 4,5,3,4: mean 4, squared deviations 0,1,1,0
    assert a["mean"] == 4.0 and a["std"] == pytest.approx(sd)
    assert a["half_width"] == pytest.approx(3.182446305 * sd / 2, rel=1e-6)  # t(0.975, 3) = 3.1824
    assert s["models"][1]["criteria"]["acc"]["half_width"] == 0.0
    # Overall: A (3 * 0.75 + 1 * 0) / 4 = 0.5625; B (3 * 0.5 + 1 * 1) / 4 = 0.625 -> B first.
    assert s["models"][0]["overall"] == pytest.approx(0.5625) and s["models"][1]["overall"] == pytest.approx(0.625)
    assert s["ranking"] == ["B", "A"]
    assert s["models"][0]["cost"] == pytest.approx(2.0) and s["models"][1]["cost"] == 0.0
    # A second rater's scores of the same answer are averaged before the interval.
    sheet.write_text(sheet.read_text() + "b0,2,1,r2\n")
    assert read_ratings(sheet, key, criteria)[("A", "p0")]["acc"] == 3.0


def test_similarity_metrics():
    assert token_f1("Apples in the garden!", "apples in the garden.") == 1.0
    assert token_f1("pears", "apples") == 0.0
    assert token_f1("apples and pears", "apples") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert chrf("the garden", "the garden") == pytest.approx(1.0)
    assert 0 < chrf("the gardens", "the garden") < 1 and chrf("xyz", "abc") == 0.0


@pytest.mark.parametrize("body, message", [
    ("criteria:\n  - name: a\n    type: length\n    max_words: 3\n  - name: b\n    type: vibes\n",
     "r.yaml:6: unknown criterion type 'vibes'"),
    ("criteria:\n  - name: a\n    type: length\n    max_word: 3\n", "r.yaml:4: criterion 'a' (length) has unknown keys"),
    ("criteria:\n  - {name: a, type: human, scale: [5, 1]}\n", "r.yaml:2: criterion 'a': scale"),
    ("criteria:\n  - {name: a, type: must_include}\n", "needs 'patterns' and/or 'from_prompt'"),
])
def test_bad_rubrics(tmp_path, body, message):
    (tmp_path / "r.yaml").write_text(body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_rubric(tmp_path / "r.yaml")


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.append(["Rdeadbe", "fox", "x", "y", "3", ""]), "blind id 'Rdeadbe' is not in the blind key"),
    (lambda rows: rows[2].__setitem__(4, "6"), "'accuracy' score '6' is not an integer on the scale 1..5"),
    (lambda rows: rows[3].__setitem__(4, "good"), "'accuracy' score 'good' is not an integer"),
    (lambda rows: rows.append(list(rows[1])), "rated twice"),
])
def test_bad_rating_sheets_change_nothing(setup, tmp_path, capsys, edit, message):
    root, out = setup
    rows = list(csv.reader(io.StringIO((out / "rating_sheet.csv").read_text())))
    for r in rows[1:]:
        r[4] = "3"
    edit(rows)
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(["bakeoff", "--config", str(root / "bakeoff.yaml"), "--out", str(out), "--ratings", str(filled)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"foundry: error: {filled}:") and message in err and err.count("\n") == 1
    # The line number is the offending row's line in the file (answers may span lines).
    line = int(err.split(f"{filled}:")[1].split(":")[0])
    assert 2 <= line <= len(filled.read_text().splitlines())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_rerunning_asks_only_for_what_is_missing(setup, tmp_path, capsys):
    root, out = setup
    answers, key = (out / "answers.jsonl").read_text(), json.loads((out / "blind_key.json").read_text())
    capsys.readouterr()
    assert cli(["bakeoff", "--config", str(root / "bakeoff.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "alpha: 3 answers already on disk; asking for 0" in printed and "beta: 3 answers already" in printed
    assert (out / "answers.jsonl").read_text() == answers  # nothing asked, nothing appended
    assert json.loads((out / "blind_key.json").read_text()) == key  # ratings stay with their answers
    # A directory that holds something else is refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(["bakeoff", "--config", str(root / "bakeoff.yaml"), "--out", str(other)]) == 1
    assert "already holds a bake-off" in capsys.readouterr().err


def test_prompt_file_errors(tmp_path):
    from foundry.eval.bakeoff.rubric import load_prompts

    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: duplicate prompt id 'a'"):
        load_prompts(tmp_path / "p.jsonl", [])


def test_model_paths_from_the_command_line(setup, tmp_path, capsys):
    root, _ = setup
    cfg = root / "pathless.yaml"
    cfg.write_text("prompts: prompts.jsonl\nrubric: rubric.yaml\nmax_new_tokens: 4\nchat: false\n"
                   "models:\n  - {name: alpha, price_per_1k_tokens: 1.0}\n")
    out = tmp_path / "b"
    assert cli(["bakeoff", "--config", str(cfg), "--out", str(out)]) == 1
    assert "model 'alpha' has no path; pass --model alpha=PATH" in capsys.readouterr().err and not out.exists()
    assert cli(["bakeoff", "--config", str(cfg), "--out", str(out), "--model", f"alpha={root / 'alpha'}",
                "--model", f"gamma={root / 'beta'}", "temperature=0"]) == 0
    summary = json.loads((out / "bakeoff.json").read_text())
    assert {m["name"]: m["price_per_1k_tokens"] for m in summary["models"]} == {"alpha": 1.0, "gamma": 0.0}
