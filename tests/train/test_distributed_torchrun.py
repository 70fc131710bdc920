"""Pretraining under `torchrun --nproc_per_node 2` on CPU (gloo): DDP equals one process with twice the
accumulation, FSDP's loss curve equals DDP's, a killed run resumes where it left off, and bad input
fails on every rank with a one-line message instead of hanging.

The recipe fixes `global_batch_size` = 8 sequences with micro-batches of 2: one process accumulates 4
micro-batches, each of 2 ranks accumulates 2. TokenBlocks hands rank r of N the slice r of each global
draw, so rank r's micro-batch a is the one-process run's micro-batch a * N + r: the same 8 sequences
make up every step in both runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.train_data import make_dataset, write_recipe
from foundry.cli import main as cli_main

pytestmark = pytest.mark.slow

STEPS = 24
TRAIN = dict(max_steps=STEPS, micro_batch_size=2, global_batch_size=8, block_size=32, eval_every=1000,
             checkpoint_every=4, keep_last=2, warmup_steps=2)


def torchrun(nproc: int, *args: str, timeout: float = 240, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "foundry.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (torchrun starts its workers in their own sessions)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def final_weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference 2-process DDP run (used by several tests)."""
    root = tmp_path_factory.mktemp("dist")
    data = make_dataset(root / "data")

    def recipe(name: str, **train) -> Path:
        return write_recipe(root / f"{name}.yaml", data, root / name, **{**TRAIN, **train})

    ddp = recipe("ddp")
    out = torchrun(2, "pretrain", "--config", str(ddp))
    assert out.returncode == 0, out.stdout + out.stderr
    return {"root": root, "recipe": recipe, "ddp": root / "ddp", "ddp_log": out.stdout + out.stderr}


def test_two_process_ddp_equals_one_process_with_twice_the_accumulation(runs):
    one = runs["recipe"]("one")
    assert cli_main(["pretrain", "--config", str(one)]) == 0
    assert "2 processes, DDP, backend gloo, 2 x 2 sequences per rank per step" in runs["ddp_log"]
    assert_same_weights(final_weights(runs["ddp"]), final_weights(runs["root"] / "one"), atol=2e-5)
    ddp_loss, one_loss = losses(runs["ddp"]), losses(runs["root"] / "one")
    assert sorted(ddp_loss) == list(range(1, STEPS + 1))
    for step in ddp_loss:
        assert ddp_loss[step] == pytest.approx(one_loss[step], rel=1e-5)
    assert ddp_loss[STEPS] < ddp_loss[1] - 0.5  # it learned
    # metrics are logged once (rank 0), not once per rank
    records = [json.loads(line) for line in (runs["ddp"] / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == STEPS


def test_fsdp_loss_curve_matches_ddp_and_checkpoints_consolidate(runs):
    fsdp = runs["recipe"]("fsdp", distributed="fsdp")
    out = torchrun(2, "pretrain", "--config", str(fsdp))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 processes, FSDP" in out.stderr + out.stdout
    run = runs["root"] / "fsdp"
    ddp_loss, fsdp_loss = losses(runs["ddp"]), losses(run)
    assert sorted(fsdp_loss) == sorted(ddp_loss)
    for step in ddp_loss:
        assert fsdp_loss[step] == pytest.approx(ddp_loss[step], rel=1e-5)
    # weights gathered into one ordinary safetensors file; the optimiser state stays sharded (DCP)
    ckpt = run / "checkpoints" / f"step_{STEPS:07d}"
    assert_same_weights(final_weights(run), final_weights(runs["ddp"]), atol=2e-5)
    assert sorted(p.name for p in (ckpt / "optimizer").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert "optimizer/.metadata" in meta["sha256"]  # the shards are checksummed with the rest
    from foundry.checkpoints import load_model

    model, _ = load_model(run)  # a plain single-process load of the consolidated weights
    assert_same_weights(model.state_dict(), {**final_weights(run), "lm_head.weight": model.lm_head.weight}, 0)

    # resume from the step-20 checkpoint in ONE process: DCP reshards the two optimiser shards into one
    import shutil

    copy = runs["root"] / "fsdp_resumed"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / f"step_{STEPS:07d}")
    recipe = runs["recipe"]("fsdp_resumed", distributed="fsdp")
    assert cli_main(["pretrain", "--config", str(recipe), "--resume"]) == 0
    assert_same_weights(final_weights(copy), final_weights(runs["ddp"]), atol=2e-5)
    assert losses(copy)[STEPS] == pytest.approx(ddp_loss[STEPS], rel=1e-5)


def test_killed_two_process_run_resumes_to_the_same_weights(runs):
    recipe = runs["recipe"]("killed")
    run = runs["root"] / "killed"
    proc = torchrun(2, "pretrain", "--config", str(recipe), wait=False)

    def saved_steps() -> list[int]:
        return [int(p.parent.name[5:]) for p in run.glob("checkpoints/step_???????/meta.json")]

    deadline = time.time() + 180
    while not saved_steps() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    for pid in [*descendants(proc.pid), proc.pid]:  # both ranks and torchrun, mid-run, no chance to save
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    log = proc.communicate(timeout=60)[0]
    assert saved_steps(), "the run never wrote a checkpoint:\n" + log
    killed_at = json.loads((run / "run.json").read_text())
    assert killed_at["results"]["status"] == "running"
    assert not (run / "checkpoints" / f"step_{STEPS:07d}").exists(), "killed too late: the run had finished"

    out = torchrun(2, "pretrain", "--config", str(recipe), "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_same_weights(final_weights(run), final_weights(runs["ddp"]), atol=1e-6)
    resumed, reference = losses(run), losses(runs["ddp"])
    assert sorted(resumed) == sorted(reference)  # every step logged once, the re-run ones replaced
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6)


def test_resume_with_another_world_size_fails_with_a_clear_message(runs, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["ddp"], copy)
    recipe = runs["recipe"]("copy")
    recipe.write_text(recipe.read_text().replace(str(runs["root"] / "copy"), str(copy)))
    assert cli_main(["pretrain", "--config", str(recipe), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "saved by 2 process(es) but this run has 1" in err and "Traceback" not in err


def test_batch_the_world_size_does_not_divide_fails_on_every_rank(runs):
    bad = runs["recipe"]("bad", micro_batch_size=3)  # global 8 is not a multiple of 3 x 2
    start = time.time()
    out = torchrun(2, "pretrain", "--config", str(bad), timeout=120)
    assert out.returncode != 0
    message = "foundry: error: train.global_batch_size=8 is not divisible by micro_batch_size (3) x world size (2)"
    assert (out.stdout + out.stderr).count(message) == 2, out.stdout + out.stderr  # one per rank
    assert time.time() - start < 110
