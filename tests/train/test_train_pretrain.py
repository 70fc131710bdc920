"""`foundry pretrain`: loss falls on generated data, exact resume after SIGKILL, and each bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry.cli import main
from foundry.data.shards import load_token_index
from foundry.utils.io import read_metrics

from tests.helpers.train_data import make_dataset, write_recipe

FOUNDRY = [sys.executable, "-m", "foundry.cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("kjv-like"))


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r and "event" not in r}


def test_pretrain_loss_falls_and_writes_a_complete_run(tmp_path, data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", max_steps=30, eval_every=10)
    assert main(["pretrain", "--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "val/loss" in out and "val/bpb" in out
    run = tmp_path / "run"
    curve = losses(run)
    assert len(curve) == 30 and sum(list(curve.values())[-5:]) / 5 < list(curve.values())[0] - 1.0
    evals = [r for r in read_metrics(run) if "val/loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["val/loss"] < evals[0]["val/loss"]
    assert evals[-1]["val/bpb"] > 0
    record = json.loads((run / "run.json").read_text())
    assert record["stage"] == "pretrain" and record["results"]["status"] == "finished"
    assert record["config"]["train"]["max_steps"] == 30 and record["parents"]["tokenizer_sha256"]
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step_0000027", "step_0000030"]
    assert any((run / "tb").iterdir())


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path, data):
    steps = dict(max_steps=60, checkpoint_every=7, eval_every=20, micro_batch_size=8)
    whole = write_recipe(tmp_path / "whole.yaml", data, tmp_path / "whole", **steps)
    killed = write_recipe(tmp_path / "killed.yaml", data, tmp_path / "killed", **steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(FOUNDRY + ["pretrain", "--config", str(whole)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(FOUNDRY + ["pretrain", "--config", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if max(losses(tmp_path / "killed"), default=0) >= 17:  # past the step-14 checkpoint
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(losses(tmp_path / "killed"))
    assert killed_at < 60

    subprocess.run(FOUNDRY + ["pretrain", "--config", str(killed), "--resume"], check=True, env=env,
                   capture_output=True)
    a, b = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(a) == list(range(1, 61)) and a == b  # every step's loss, bit for bit
    evals = lambda run: [(r["step"], r["val/loss"]) for r in read_metrics(run) if "val/loss" in r]  # noqa: E731
    assert evals(tmp_path / "whole") == evals(tmp_path / "killed")
    final = "checkpoints/step_0000060/model.safetensors"
    assert (tmp_path / "whole" / final).read_bytes() == (tmp_path / "killed" / final).read_bytes()
    events = [r for r in read_metrics(tmp_path / "killed") if r.get("event") == "resume"]
    assert len(events) == 1 and events[0]["step"] % 7 == 0


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_then_exits(tmp_path, data):
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", max_steps=100000, checkpoint_every=100000)
    proc = subprocess.Popen(FOUNDRY + ["pretrain", "--config", str(recipe)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not losses(tmp_path / "run"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    saved = list((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and (saved[0] / "train_state.pt").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["results"]["status"] == "interrupted"


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["pretrain", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_inputs_are_one_line_errors_and_overwrite_nothing(tmp_path, data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", max_steps=3)
    code, err = run_cli(capsys, "--config", str(recipe), "train.lrr=1")
    assert code == 1 and "unknown key 'train.lrr'" in err and "did you mean 'train.lr'" in err
    code, err = run_cli(capsys, "--config", str(recipe), "train.max_steps=lots")
    assert code == 1 and "'train.max_steps'" in err
    code, err = run_cli(capsys, "--config", str(recipe), "train.block_size=100000")
    assert code == 1 and "fewer than one block of 100000" in err
    code, err = run_cli(capsys, "--config", str(recipe), "--resume")
    assert code == 1 and "no run to resume" in err

    assert main(["pretrain", "--config", str(recipe)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, err = run_cli(capsys, "--config", str(recipe))
    assert code == 1 and "already holds a run" in err
    code, err = run_cli(capsys, "--config", str(recipe), "--resume", "model.n_layer=3", "train.max_steps=6")
    assert code == 1 and "model shape differs from the recipe (n_layer 2 vs 3)" in err
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before
    assert "\n" not in err and "Traceback" not in err


def test_bundled_pretrain_recipes_validate():
    from foundry.config import load_config
    from foundry.train.pretrain import PretrainConfig

    recipes = sorted((Path(__file__).parents[2] / "recipes").glob("pretrain-*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_config(PretrainConfig, recipe)
        assert cfg.train.max_seconds is None or cfg.train.max_seconds <= 300


def test_loss_falls_on_the_bundled_bible(tmp_path, capsys):
    genesis = Path(__file__).parents[2] / "data" / "general" / "kjv" / "01_Genesis.txt"
    if not genesis.is_file():
        pytest.skip("bundled KJV corpus not extracted")
    chapters = [c for c in genesis.read_text(encoding="utf-8").split("\f") if c.strip()]
    data = make_dataset(tmp_path, vocab_size=512, texts=(chapters[:-3], chapters[-3:]))
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", max_steps=40, eval_every=20, block_size=64,
                          micro_batch_size=8, lr=5e-3, checkpoint_every=40)
    assert main(["pretrain", "--config", str(recipe)]) == 0
    evals = [r["val/bpb"] for r in read_metrics(tmp_path / "run") if "val/bpb" in r]
    val = load_token_index(data["dataset"])["splits"]["val"]
    uniform_bpb = math.log2(512) * val["tokens"] / val["bytes"]  # what an untrained model scores
    assert len(evals) == 2 and evals[1] < evals[0] < uniform_bpb, (evals, uniform_bpb)
    assert evals[1] < 0.85 * uniform_bpb  # 40 small steps already learn the corpus's common words
    capsys.readouterr()
