"""`foundry run`: stage order, placeholders, skipping unchanged stages, resuming after a failure."""

import json
import textwrap
from pathlib import Path

import pytest

from foundry import cli
from foundry.errors import ConfigError, FoundryError
from foundry.pipeline import load_recipe, run_recipe
from tests.helpers.fake_verbs import install_verb_module

FAKE_VERB = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from foundry.errors import FoundryError
    CALLS = []

    def main(argv):
        CALLS.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        if "--fail-if" in argv and Path(argv[argv.index("--fail-if") + 1]).exists():
            raise FoundryError("planted failure")
        text = ""
        if "--from" in argv:
            text = (Path(argv[argv.index("--from") + 1]) / "value.txt").read_text()
        out.mkdir(parents=True, exist_ok=True)
        (out / "value.txt").write_text(text + argv[argv.index("--value") + 1])
        if "--config" in argv:
            (out / "config.txt").write_text(Path(argv[argv.index("--config") + 1]).read_text())
''')


@pytest.fixture
def fake_verb(tmp_path, monkeypatch):
    return install_verb_module(tmp_path, monkeypatch, "fake_verb_mod", FAKE_VERB, {"fake": ("main", "test verb")})


def write_recipe(tmp_path, flag: Path, value_b="B", config=None):
    recipe = {
        "name": "t", "out_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "a", "verb": "fake", "args": ["--out", "{out}", "--value", "A"]},
            {"name": "b", "verb": "fake", "args": ["--out", "{out}", "--from", "{stage:a}", "--value", value_b,
                                                   "--fail-if", str(flag)], **({"config": config} if config else {})},
            {"name": "c", "verb": "fake", "args": ["--out", "{out}", "--from", "{stage:b}", "--value", "C"]},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


def test_stages_chain_and_rerun_skips_finished(tmp_path, fake_verb):
    path = write_recipe(tmp_path, tmp_path / "no-such-flag", config={"lr": 0.1})
    record = run_recipe(load_recipe(path), path)
    assert [s["status"] for s in record["stages"]] == ["ran", "ran", "ran"]
    assert (tmp_path / "run" / "c" / "value.txt").read_text() == "ABC"
    assert "lr: 0.1" in (tmp_path / "run" / "b" / "config.txt").read_text()
    calls = len(fake_verb.CALLS)
    record = run_recipe(load_recipe(path), path)
    assert [s["status"] for s in record["stages"]] == ["skipped", "skipped", "skipped"]
    assert len(fake_verb.CALLS) == calls
    # Changing b's input re-runs b and everything downstream, not a.
    path = write_recipe(tmp_path, tmp_path / "no-such-flag", value_b="X", config={"lr": 0.1})
    record = run_recipe(load_recipe(path), path)
    assert [s["status"] for s in record["stages"]] == ["skipped", "ran", "ran"]
    assert (tmp_path / "run" / "c" / "value.txt").read_text() == "AXC"
    # The replaced output is kept aside, not deleted.
    assert (tmp_path / "run" / ".pipeline" / "b.previous" / "value.txt").read_text() == "AB"


def test_failed_stage_resumes_there(tmp_path, fake_verb):
    flag = tmp_path / "fail"
    flag.touch()
    path = write_recipe(tmp_path, flag)
    with pytest.raises(FoundryError, match="stage 'b' failed"):
        run_recipe(load_recipe(path), path)
    pipeline = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert [s["status"] for s in pipeline["stages"]] == ["ran", "failed"]
    flag.unlink()
    record = run_recipe(load_recipe(path), path)
    assert [s["status"] for s in record["stages"]] == ["skipped", "ran", "ran"]


def test_stage_reading_a_stage_that_does_not_run_before_it(tmp_path, fake_verb):
    recipe = {"name": "t", "out_dir": str(tmp_path / "run"), "stages": [
        {"name": "a", "verb": "fake", "args": ["--out", "{out}", "--from", "{stage:b}", "--value", "A"]},
        {"name": "b", "verb": "fake", "args": ["--out", "{out}", "--value", "B"]}]}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="reads stage 'b', which does not run before it"):
        load_recipe(path)


def test_recipe_typo_and_unknown_verb(tmp_path, fake_verb):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nout_dir: x\nstagez: []\n")
    with pytest.raises(ConfigError, match="unknown key 'stagez'"):
        load_recipe(path)
    path.write_text("name: t\nout_dir: x\nstages:\n  - {name: a, verb: pretrian}\n")
    with pytest.raises(ConfigError, match="unknown verb 'pretrian'"):
        load_recipe(path)


def test_cli_one_line_error_for_missing_recipe(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.yaml: recipe not found" in err[0]


def test_stage_reading_the_run_directory_reruns_when_any_stage_changes(tmp_path, fake_verb):
    def recipe(value):
        return {"name": "t", "out_dir": str(tmp_path / "run"), "stages": [
            {"name": "a", "verb": "fake", "args": ["--out", "{out}", "--value", value]},
            {"name": "summary", "verb": "fake", "args": ["--out", "{out}", "--value", "{run}"]}]}

    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe("1")))
    run_recipe(load_recipe(path), path)
    path.write_text(json.dumps(recipe("2")))
    record = run_recipe(load_recipe(path), path)
    assert [s["status"] for s in record["stages"]] == ["ran", "ran"]


def test_until_stops_after_the_named_stage(tmp_path, fake_verb):
    path = write_recipe(tmp_path, tmp_path / "no-such-flag")
    record = run_recipe(load_recipe(path), path, until="b")
    assert [s["name"] for s in record["stages"]] == ["a", "b"]
    assert (tmp_path / "run" / "b" / "value.txt").is_file() and not (tmp_path / "run" / "c").exists()
    with pytest.raises(ConfigError, match="--until 'z' is not a stage"):
        run_recipe(load_recipe(path), path, until="z")


def test_recipe_variables_fill_placeholders_keep_their_types_and_are_required(tmp_path, fake_verb):
    recipe = {"name": "t", "out_dir": str(tmp_path / "run"),
              "vars": {"model": None, "steps": 3, "where": "{run}/shared"},
              "stages": [{"name": "a", "verb": "fake", "args": ["--out", "{out}", "--value", "{var:model}-{var:steps}"],
                          "config": {"train": {"max_steps": "{var:steps}"}, "data": "{var:where}/x"}}]}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"this recipe needs model=VALUE"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"'modle=m' sets nothing this recipe has.*out_dir, model, steps, where"):
        load_recipe(path, ["modle=m"])
    record = run_recipe(load_recipe(path, ["model=m1", "steps=7"]), path)
    assert (tmp_path / "run" / "a" / "value.txt").read_text() == "m1-7"
    config = (tmp_path / "run" / "a" / "config.txt").read_text()
    assert "max_steps: 7\n" in config and f"data: {tmp_path / 'run'}/shared/x" in config  # a number stays a number
    assert record["vars"]["model"] == "m1"
    # another value re-runs the stage; the same one skips it
    assert run_recipe(load_recipe(path, ["model=m1", "steps=7"]), path)["stages"][0]["status"] == "skipped"
    assert run_recipe(load_recipe(path, ["model=m2", "steps=7"]), path)["stages"][0]["status"] == "ran"
    recipe["stages"][0]["args"][-1] = "{var:nope}"
    path.write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"stage 'a' reads \{var:nope\}, which is not in the recipe's vars"):
        load_recipe(path, ["model=m"])


def test_a_kept_output_is_shared_between_runs_not_moved_aside(tmp_path, fake_verb):
    """Two runs writing one shared folder (a corpus): the second does not move the first's output away."""
    shared = tmp_path / "shared"
    for run in ("r1", "r2"):
        recipe = {"name": "t", "out_dir": str(tmp_path / run), "stages": [
            {"name": "data", "verb": "fake", "args": ["--out", str(shared / run), "--value", run],
             "output": str(shared), "keep_output": True}]}
        path = tmp_path / f"{run}.yaml"
        path.write_text(json.dumps(recipe))
        assert run_recipe(load_recipe(path), path)["stages"][0]["status"] == "ran"
    assert sorted(p.name for p in shared.iterdir()) == ["r1", "r2"]
    assert not (tmp_path / "r2" / ".pipeline" / "data.previous").exists()
