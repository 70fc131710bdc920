"""foundry continue: the mixture sampler, exact resume, per-dataset evaluation, the with/without-replay
experiment on tiny generated data, and every bad input as one line with nothing written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from foundry.cli import main as cli
from foundry.config import config_from_dict
from foundry.data.shards import TokenBlocks
from foundry.errors import ConfigError, DataError
from foundry.train.continual import ContinueConfig, MixtureSource, before_after_rows, format_table
from tests.helpers.continual_corpora import LANGUAGES, write_dataset

TRAIN = {"max_steps": 40, "micro_batch_size": 8, "block_size": 64, "lr": 2e-3, "warmup_steps": 4,
         "eval_every": 20, "eval_batches": 4, "checkpoint_every": 20, "log_every": 10, "device": "cpu",
         "progress": False, "threads": 1, "seed": 5}


def recipe(path, b, out, mixture, **train):
    path.write_text(yaml.safe_dump({"init": str(b["base"]), "out_dir": str(out),
                                    "mixture": mixture, "train": {**TRAIN, **train}}))
    return path


def mix(b, fr=0.75, en=0.25):
    return [{"name": "fr", "data": str(b["fr"]), "weight": fr}, {"name": "en", "data": str(b["en"]), "weight": en}]


# ---- the sampler ---------------------------------------------------------------------------------------
def blocks(b, seed=0):
    return {"fr": TokenBlocks(b["fr"], "train", 16, seed), "en": TokenBlocks(b["en"], "train", 16, seed + 1)}


def test_mixture_follows_the_weights_and_is_deterministic(base):
    a = MixtureSource(blocks(base), {"fr": 0.8, "en": 0.2}, seed=3)
    c = MixtureSource(blocks(base), {"fr": 0.8, "en": 0.2}, seed=3)
    for _ in range(100):
        x, y = a.next_batch(8), c.next_batch(8)
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["targets"], y["targets"])
        assert torch.equal(x["input_ids"][:, 1:], x["targets"][:, :-1])
    assert a.drawn["fr"] + a.drawn["en"] == 800
    assert abs(a.drawn["fr"] / 800 - 0.8) < 0.04
    other = MixtureSource(blocks(base), {"fr": 0.8, "en": 0.2}, seed=4)
    assert not torch.equal(other.next_batch(8)["input_ids"], MixtureSource(blocks(base), {"fr": 0.8, "en": 0.2},
                                                                           seed=3).next_batch(8)["input_ids"])


def test_each_row_comes_from_the_dataset_the_draw_chose(base):
    from foundry.data.tokenizer import Tokenizer

    vocab = {lang: {w for words in LANGUAGES[lang].values() for w in words} for lang in LANGUAGES}
    only = {"en": vocab["en"] - vocab["fr"], "fr": vocab["fr"] - vocab["en"]}
    tok = Tokenizer.load(base["tok"])
    src = MixtureSource({"fr": TokenBlocks(base["fr"], "train", 64, 0), "en": TokenBlocks(base["en"], "train", 64, 1)},
                        {"fr": 0.5, "en": 0.5}, seed=1)
    choice = src.choose(16)
    assert 0 < choice.sum() < 16  # both datasets appear in this draw
    batch = src.next_batch(16)
    for row, c in zip(batch["input_ids"].tolist(), choice):
        words = set(tok.decode(row).lower().replace(".", " ").split())
        lang = "fr" if len(words & only["fr"]) > len(words & only["en"]) else "en"
        assert lang == src.names[c], words


def test_zero_weight_dataset_is_never_drawn(base):
    src = MixtureSource(blocks(base), {"fr": 1.0, "en": 0.0}, seed=0)
    for _ in range(20):
        src.next_batch(4)
    assert src.names == ["fr"] and src.drawn == {"fr": 80}


def test_mixture_resume_is_exact_and_refuses_a_changed_mixture(base):
    a = MixtureSource(blocks(base), {"fr": 0.7, "en": 0.3}, seed=9)
    for _ in range(23):  # past an epoch of the smaller dataset's windows? no matter: positions are exact
        a.next_batch(8)
    state = json.loads(json.dumps(a.state_dict()))  # survives serialisation
    expected = [a.next_batch(8)["input_ids"] for _ in range(10)]
    b = MixtureSource(blocks(base), {"fr": 0.7, "en": 0.3}, seed=9)
    b.load_state_dict(state)
    assert all(torch.equal(e, b.next_batch(8)["input_ids"]) for e in expected)
    changed = MixtureSource(blocks(base), {"fr": 0.5, "en": 0.5}, seed=9)
    with pytest.raises(DataError, match="mixture"):
        changed.load_state_dict(state)


# ---- config validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mixture,message", [
    ([{"name": "a", "data": "x", "weight": -0.1}], "greater than or equal to 0"),
    ([{"name": "a", "data": "x", "weight": 0}, {"name": "b", "data": "y", "weight": 0.0}], "sum to 0"),
    ([{"name": "a", "data": "x", "weight": 1}, {"name": "a", "data": "y", "weight": 1}], "used twice"),
    ([], "empty"),
])
def test_bad_mixtures_are_config_errors(mixture, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(ContinueConfig, {"init": "x", "out_dir": "y", "mixture": mixture}, "r.yaml")


def test_continued_training_defaults_differ_from_pretraining():
    from foundry.config import TrainConfig

    cfg = config_from_dict(ContinueConfig, {"init": "x", "out_dir": "y",
                                            "mixture": [{"name": "a", "data": "x", "weight": 1}]})
    assert cfg.train.lr < TrainConfig().lr and cfg.train.min_lr_ratio < TrainConfig().min_lr_ratio
    assert cfg.train.warmup_steps < TrainConfig().warmup_steps
    over = config_from_dict(ContinueConfig, {"init": "x", "out_dir": "y", "train": {"max_steps": 7},
                                             "mixture": [{"name": "a", "data": "x", "weight": 1}]})
    assert over.train.max_steps == 7 and over.train.lr == cfg.train.lr  # a partial train: keeps the defaults


def run_cli_error(capsys, argv):
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("foundry: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_weights_on_the_command_line_name_the_recipe(base, tmp_path, capsys):
    out = tmp_path / "out"
    r = recipe(tmp_path / "r.yaml", base, out, mix(base, fr=-1.0))
    err = run_cli_error(capsys, ["continue", "--config", str(r)])
    assert str(r) in err and "weight" in err
    err = run_cli_error(capsys, ["continue", "--config", str(r), "mixture=[]"])
    assert "empty" in err
    r = recipe(tmp_path / "r0.yaml", base, out, mix(base, fr=0, en=0))
    assert "sum to 0" in run_cli_error(capsys, ["continue", "--config", str(r)])
    assert not out.exists()


def test_not_a_checkpoint_is_one_line(base, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.bin").write_bytes(b"\0" * 10)
    out = tmp_path / "out"
    for init, expect in ((junk, "not a foundry checkpoint"), (tmp_path / "missing", "not found"),
                         (junk / "weights.bin", "not a file")):
        r = tmp_path / "r.yaml"
        r.write_text(yaml.safe_dump({"init": str(init), "out_dir": str(out), "mixture": mix(base),
                                     "train": TRAIN}))
        err = run_cli_error(capsys, ["continue", "--config", str(r)])
        assert str(init) in err and expect in err
    assert not out.exists()


def test_dataset_from_another_tokenizer_is_refused(base, tmp_path, capsys):
    from foundry.data.tokenizer import Tokenizer, iter_split_texts

    other = write_dataset(tmp_path / "fr_other", "fr", n_train=40, n_val=10)
    Tokenizer.train(iter_split_texts(other, "train"), vocab_size=300).save(tmp_path / "tok_fr")
    assert cli(["data", "tokenize", str(other), "--tokenizer", str(tmp_path / "tok_fr"), "--workers", "1",
                "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    r = recipe(tmp_path / "r.yaml", base, out, [{"name": "fr", "data": str(other), "weight": 1.0}])
    err = run_cli_error(capsys, ["continue", "--config", str(r)])
    assert str(other) in err and "tokenizer" in err
    assert not out.exists()


def test_existing_out_dir_is_not_overwritten(base, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = recipe(tmp_path / "r.yaml", base, out, mix(base))
    assert "already holds a run" in run_cli_error(capsys, ["continue", "--config", str(r)])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_overwrite_starts_over_and_records_the_recipe(base, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an old run")
    r = recipe(tmp_path / "r.yaml", base, out, mix(base), max_steps=2, eval_every=2, checkpoint_every=2)
    assert cli(["continue", "--config", str(r), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["overwrite"] is True and saved["mixture"] == mix(base) and saved["train"]["max_steps"] == 2
    assert json.loads((out / "run.json").read_text())["results"]["step"] == 2


# ---- training: gain, forgetting, replay, records, resume -----------------------------------------------
@pytest.fixture(scope="module")
def experiment(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for label, mixture in (("replay", mix(base, 0.75, 0.25)), ("no_replay", mix(base, 1.0, 0.0))):
        r = recipe(root / f"{label}.yaml", base, root / label, mixture)
        assert cli(["continue", "--config", str(r)]) == 0
        results[label] = json.loads((root / label / "run.json").read_text())
    return root, results


def test_continual_pretraining_gains_domain_and_replay_limits_forgetting(experiment):
    _, runs = experiment
    for label, record in runs.items():
        before, after = record["results"]["before"], record["results"]["after"]
        assert after["fr"]["loss"] < before["fr"]["loss"] - 1.0, label  # the domain is learned
        assert after["en"]["loss"] > before["en"]["loss"], label  # and English suffers a little
    rise = {k: r["results"]["after"]["en"]["loss"] - r["results"]["before"]["en"]["loss"] for k, r in runs.items()}
    print("general loss rise", rise)
    assert rise["replay"] < 0.5 * rise["no_replay"], rise
    # the same parent and the same step-0 numbers for both
    assert runs["replay"]["results"]["before"] == runs["no_replay"]["results"]["before"]


def test_run_record_names_parent_and_both_manifests(experiment, base):
    from foundry.utils.io import sha256_file

    root, runs = experiment
    rec = runs["replay"]
    assert rec["stage"] == "continue" and rec["results"]["status"] == "finished"
    # the resolved start (the base run's checkpoint the run loaded), as every stage records it, and its tokenizer
    from foundry.checkpoints import load_start
    start = load_start(base["base"])
    assert rec["parents"]["checkpoint"] == str(start.path.resolve())
    assert rec["parents"]["tokenizer_sha256"] == start.tokenizer.sha256
    assert rec["data_manifests"] == {"fr": sha256_file(base["fr"] / "manifest.json"),
                                     "en": sha256_file(base["en"] / "manifest.json")}
    drawn = rec["results"]["sequences_drawn"]
    assert drawn["fr"] + drawn["en"] == TRAIN["max_steps"] * TRAIN["micro_batch_size"]
    assert 0.15 < drawn["en"] / (drawn["fr"] + drawn["en"]) < 0.35
    assert runs["no_replay"]["results"]["sequences_drawn"] == {"fr": 320}
    # curves: step 0 and every evaluation log both datasets side by side
    lines = [json.loads(x) for x in (root / "replay" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "val/fr/loss" in x]
    assert [x["step"] for x in evals] == [0, 20, 40]
    assert all({"val/en/loss", "val/en/ppl", "val/en/bpb", "val/fr/ppl", "val/fr/bpb"} <= set(x) for x in evals)
    assert evals[0]["val/fr/loss"] == rec["results"]["before"]["fr"]["loss"]
    assert evals[-1]["val/en/loss"] == rec["results"]["after"]["en"]["loss"]


def test_step_zero_evaluation_reaches_tensorboard(experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, runs = experiment
    events = EventAccumulator(str(root / "replay" / "tb"))
    events.Reload()
    curve = {e.step: e.value for e in events.Scalars("val/fr/loss")}
    assert sorted(curve) == [0, 20, 40]
    assert curve[0] == pytest.approx(runs["replay"]["results"]["before"]["fr"]["loss"], rel=1e-6)


def test_run_record_is_created_when_the_run_starts(experiment):
    import calendar
    import time

    root, runs = experiment
    created = calendar.timegm(time.strptime(runs["replay"]["created"], "%Y-%m-%dT%H:%M:%SZ"))
    started = (root / "replay" / "config.yaml").stat().st_mtime  # written as the run directory opens
    assert started - 1 <= created <= started


def test_run_record_keeps_its_start_time_through_every_write(tmp_path, monkeypatch):
    """`created` is taken once, when the record is made (the run's start), never at a later write; a
    resumed run keeps the `created` of the run it continues. A fake clock makes this independent of how
    fast the machine is."""
    import foundry.utils.io as io

    clock = iter(f"2026-01-01T00:00:0{i}Z" for i in range(10))
    monkeypatch.setattr(io, "utc_now", lambda: next(clock))
    record = io.RunRecord(tmp_path, "continue", {"x": 1})
    record.write({"status": "running"})
    record.write({"status": "finished"})
    assert json.loads((tmp_path / "run.json").read_text())["created"] == "2026-01-01T00:00:00Z"
    resumed = io.RunRecord(tmp_path, "continue", {"x": 1}, resume=True)
    resumed.write({"status": "finished"})
    assert json.loads((tmp_path / "run.json").read_text())["created"] == "2026-01-01T00:00:00Z"
    assert io.RunRecord(tmp_path, "continue", {"x": 1}).created != "2026-01-01T00:00:00Z"  # a new run starts anew


def test_resume_after_a_crash_reproduces_the_run(experiment, base, tmp_path, capsys):
    root, runs = experiment
    run = tmp_path / "replay"
    shutil.copytree(root / "replay", run)
    shutil.rmtree(run / "checkpoints" / "step_0000040")  # as if killed between step 20 and the end
    shutil.rmtree(run / "checkpoints" / "best")
    r = recipe(tmp_path / "r.yaml", base, run, mix(base, 0.75, 0.25))
    assert cli(["continue", "--config", str(r), "--resume"]) == 0
    rec = json.loads((run / "run.json").read_text())
    for name in ("fr", "en"):
        assert rec["results"]["after"][name]["loss"] == pytest.approx(runs["replay"]["results"]["after"][name]["loss"],
                                                                       abs=1e-6)
    assert rec["results"]["before"] == runs["replay"]["results"]["before"]
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["checkpoint"].rsplit("/", 1)[-1] for e in events if e.get("event") == "resume"] == ["step_0000020"]


def test_table_rows_and_markdown():
    rows = before_after_rows({"fr": {"loss": 2.0, "ppl": 8.0, "bpb": 1.0}},
                             {"fr": {"loss": 1.0, "ppl": 2.0, "bpb": 0.5}}, {"fr": 1.0})
    assert rows[0]["ppl_change"] == pytest.approx(-0.75)
    md = format_table(rows, [("dataset", "dataset", ""), ("ppl_before", "before", ".1f"),
                             ("ppl_change", "change", "+.0%")])
    assert md.splitlines() == ["| dataset | before | change |", "|---|---:|---:|", "| fr | 8.0 | -75% |"]
    assert np.isclose(rows[0]["bpb_after"], 0.5)


def test_compare_tabulates_runs_of_one_parent(experiment, tmp_path, capsys):
    root, runs = experiment
    out = tmp_path / "results"
    assert cli(["continue", "--compare", str(root / "replay"), str(root / "no_replay"), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"] == ["fr", "en"]
    parent, replay, no_replay = results["rows"]
    assert parent["model"] == "parent (before)" and replay["model"] == "replay" and no_replay["mixture"] == "fr 100%"
    assert replay["mixture"] == "fr 75% + en 25%"
    assert parent["en_ppl"] == pytest.approx(runs["replay"]["results"]["before"]["en"]["ppl"])
    assert no_replay["en_ppl"] == pytest.approx(runs["no_replay"]["results"]["after"]["en"]["ppl"])
    assert no_replay["en_change"] > replay["en_change"] > 0 > replay["fr_change"]
    md = (out / "results.md").read_text()
    assert "| model | trained on | steps | fr ppl | change | en ppl | change |" in md
    assert json.loads((out / "run.json").read_text())["stage"] == "compare"
    capsys.readouterr()
    assert cli(["continue", "--compare", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "not a finished 'foundry continue' run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_continues_from_a_hugging_face_checkpoint(base, tmp_path):
    from foundry.model.hf import export_hf
    from foundry.checkpoints import load_model

    model, tok = load_model(base["base"])
    export_hf(model, tok, tmp_path / "hf")
    out = tmp_path / "out"
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"init": str(tmp_path / "hf"), "out_dir": str(out), "mixture": mix(base),
                                 "train": {**TRAIN, "max_steps": 3, "eval_every": 3, "checkpoint_every": 3}}))
    assert cli(["continue", "--config", str(r)]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["parents"]["checkpoint_kind"] == "huggingface" and rec["results"]["step"] == 3
    # the same weights as the foundry checkpoint: the same step-0 numbers as a run from it
    from foundry.train.continual import dataset_evaluator

    evaluate = dataset_evaluator(base["fr"], TRAIN["block_size"], TRAIN["micro_batch_size"], TRAIN["eval_batches"])
    with torch.no_grad():
        expected = evaluate(model)
    assert rec["results"]["before"]["fr"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_bundled_recipes_validate():
    from foundry.config import load_config
    from foundry.pipeline import _substitute, load_recipe
    from foundry.utils.bundled import bundled_root

    recipe = load_recipe(bundled_root() / "recipes" / "domain-experiment.yaml")
    stages = {s.name: s for s in recipe.stages}
    mapping = {"out": "/r/x", "run": "/r", "repo": str(bundled_root()), **{f"stage:{n}": f"/r/{n}" for n in stages}}
    continues = [s for s in recipe.stages if s.verb == "continue" and s.config]
    assert len(continues) == 4
    for stage in continues:
        cfg = config_from_dict(ContinueConfig, _substitute(stage.config, mapping), stage.name)
        assert cfg.init == "/r/base" and {m.name for m in cfg.mixture} == {"general", "pydocs", "french"}
        replay = {m.name: m.weight for m in cfg.mixture}["general"]
        assert (replay > 0) == (not stage.name.endswith("no-replay")), stage.name
    compare = stages["results"].args
    assert compare[0] == "--compare" and all(f"{{stage:{s.name}}}" in compare for s in continues)
    standalone = load_config(ContinueConfig, bundled_root() / "recipes" / "continue-pydocs.yaml")
    assert sum(m.weight for m in standalone.mixture if m.name == "general") == 0.2


@pytest.mark.parametrize("name", ["quickstart.yaml", "study.yaml", "domain-experiment.yaml"])
def test_every_stage_config_of_the_bundled_pipelines_validates(name):
    """A typo in a bundled recipe's stage config (a key, a type, a finding's arm) fails here, not an hour in."""
    from foundry.pipeline import _substitute, load_recipe
    from foundry.train.dpo import DPOConfig
    from foundry.train.pretrain import PretrainConfig
    from foundry.train.sft import SFTConfig
    from foundry.utils.bundled import bundled_root

    classes = {"pretrain": PretrainConfig, "continue": ContinueConfig, "sft": SFTConfig, "dpo": DPOConfig}
    recipe = load_recipe(bundled_root() / "recipes" / name)
    mapping = {"out": "/r/x", "run": "/r", "repo": str(bundled_root()), **{f"stage:{s.name}": f"/r/{s.name}" for s in recipe.stages}}
    for stage in recipe.stages:
        if stage.config is not None:
            config_from_dict(classes[stage.verb], _substitute(stage.config, mapping), f"{name}: {stage.name}")
        for arg in _substitute(stage.args, mapping):
            if arg.startswith(str(bundled_root())):  # every bundled file a stage reads exists
                assert Path(arg).exists(), f"{name}: {stage.name} reads {arg}"
