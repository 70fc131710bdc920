"""Kill -9 and resume: pretrain, SFT and DPO runs are SIGKILLed at random moments and at chosen points
inside a checkpoint write, resumed with `--resume`, and must end with the uninterrupted run's weights.

Runs are real processes: a "zygote" subprocess imports torch and foundry once, then forks one child per
run that calls `foundry.cli.main(argv)` (importing torch costs seconds on a loaded 2-core machine; a
fork costs milliseconds). The test SIGKILLs the child. To kill *inside* a checkpoint write, the child
wraps a function the writer calls at that point so it stops itself (SIGSTOP) right there; the test sees
it stopped and kills it, so the kill lands at exactly that moment (inside the first checkpoint write,
after the weights but before meta.json, after meta.json but before the rename, while the old `best` is
moved aside, while an old checkpoint is being deleted). Other kills land at a seeded random moment.
After every kill: every checkpoint directory present passes its sha256 check and `latest_checkpoint`
returns the newest one. After the last resume: losses and final weights equal the uninterrupted run's
bit for bit. A `foundry run` pipeline killed inside its training stage resumes on re-run the same way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.reliability import dpo_recipe, losses, pretrain_recipe, sft_recipe

from foundry.checkpoints import (
    MODEL_FILE, latest_checkpoint, load_train_state, step_checkpoints, verify_checkpoint,
)

pytestmark = pytest.mark.slow

ZYGOTE = r'''
import json, os, re, shutil, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # before any op: no thread pool exists when we fork
import foundry.cli, foundry.train.pretrain, foundry.train.sft, foundry.train.dpo
import foundry.checkpoints.files as ck  # the checkpoint format: the writes a kill lands between
import foundry.train.loop, foundry.data.shards, foundry.data.tokenizer, foundry.data.chat, foundry.data.prefs
import safetensors.torch, tokenizers, yaml, tqdm.auto, numpy
import torch._dynamo, torch.distributed.fsdp  # the optimiser imports these lazily (seconds)
try:
    import torch.utils.tensorboard
except ImportError:
    pass
# measured once here, inherited by every child (else each run spends a second timing a matmul)
foundry.train.loop.peak_flops(torch.device("cpu"), torch.float32)

def stop_here():
    os.kill(os.getpid(), signal.SIGSTOP)

def install(point, nth):
    """Make this process stop itself the nth time it reaches `point` of a checkpoint write."""
    seen = [0]
    def hit():
        seen[0] += 1
        return seen[0] == nth
    if point == "weights_written":  # model.safetensors in NAME.tmp, no meta.json yet
        orig = ck._fsync_file
        def wrapped(path):
            orig(path)
            if path.name == ck.MODEL_FILE and path.parent.name.endswith(".tmp") and hit():
                stop_here()
        ck._fsync_file = wrapped
    elif point == "meta_written":  # NAME.tmp complete, not yet renamed into place
        orig = ck.fsync_dir
        def wrapped(path):
            orig(path)
            if Path(path).name.endswith(".tmp") and hit():
                stop_here()
        ck.fsync_dir = wrapped
    elif point == "best_swapped_out":  # the old `best` moved aside, the new one not yet in place
        orig = os.replace
        def wrapped(src, dst, **kw):
            orig(src, dst, **kw)
            if Path(dst).name == "best.old" and hit():
                stop_here()
        os.replace = wrapped
    elif point == "pruning":  # deleting an old step_* checkpoint: one file gone, the rest not yet
        orig = shutil.rmtree
        def wrapped(path, *a, **kw):
            p = Path(path)
            # step_N (or step_N.deleting, if the writer renames it first); not a leftover step_N.tmp
            if p.parent.name == "checkpoints" and re.fullmatch(r"step_[0-9]+(\.deleting)?", p.name) and hit():
                first = next(e for e in os.scandir(p) if e.is_file())
                os.unlink(first.path)
                stop_here()
            return orig(path, *a, **kw)
        shutil.rmtree = wrapped

print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                if cmd.get("point"):
                    install(cmd["point"], cmd["nth"])
                code = foundry.cli.main(cmd["argv"])
            except BaseException as exc:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
'''


class Zygote:
    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, cmd: dict) -> str:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def start(self, argv: list[str], log: Path, point: str | None = None, nth: int = 1) -> int:
        return int(self._ask({"op": "run", "argv": argv, "log": str(log), "point": point, "nth": nth}))

    def wait(self, pid: int) -> dict:
        return json.loads(self._ask({"op": "wait", "pid": pid}))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def proc_state(pid: int) -> str:
    """'R', 'S', 'T' (stopped), 'Z' (exited, not yet reaped), ... from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def wait_state(pid: int, states: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (state := proc_state(pid)) not in states:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"child {pid} stuck in state {state}")
        time.sleep(0.002)
    return state


def checkpoint_dirs(run: Path) -> list[Path]:
    """Every directory that claims to be a checkpoint: step_N and best (not NAME.tmp / NAME.old leftovers)."""
    ckpts = run / "checkpoints"
    named = [p for p in ckpts.iterdir() if p.name == "best"] if ckpts.is_dir() else []
    return step_checkpoints(run) + named


def check_invariants(run: Path, what: str) -> None:
    for ckpt in checkpoint_dirs(run):
        problem = verify_checkpoint(ckpt)
        assert problem is None, f"{what}: {ckpt} is unreadable: {problem}"
    steps = step_checkpoints(run)
    if steps:
        assert latest_checkpoint(run) == steps[-1], f"{what}: latest_checkpoint missed {steps[-1]}"
        state = load_train_state(steps[-1])
        assert int(state["step"]) == int(steps[-1].name[5:])


# kill plan per stage: chosen points inside checkpoint writes (with which occurrence), then random moments.
# The first kill lands inside the very first checkpoint write: `--resume` must then start over (with a
# warning), since `foundry run` passes --resume to any stage that left output behind.
PLAN = [("weights_written", 1), ("weights_written", 2), ("meta_written", 1), ("pruning", 1),
        ("best_swapped_out", 1), (None, None), (None, None), (None, None), (None, None)]
STEPS = 16


def step_seconds(run: Path) -> float:
    """Wall time of one step (with its checkpoint write) in a finished run, from its metrics."""
    from foundry.utils.io import read_metrics

    times = [r["elapsed_s"] for r in read_metrics(run) if "loss" in r and "elapsed_s" in r]
    return max((times[-1] - times[0]) / max(len(times) - 1, 1), 0.001)


def kill_and_resume(zygote: Zygote, verb: str, recipe: Path, run: Path, rng: random.Random, log: Path,
                    step_s: float) -> list[str]:
    """Run `verb` under the kill plan, resuming after each kill; returns where each kill landed.

    A random kill picks a step after the checkpoint the run resumes from (at least 3 before the end),
    waits until the run logs it, then up to 1.5 steps more; a step here takes about as long as its
    checkpoint write, so many of these land inside a write."""
    kills: list[str] = []
    argv = [verb, "--config", str(recipe)]
    for point, nth in PLAN:
        started = time.time()
        pid = zygote.start(argv + (["--resume"] if run.exists() else []), log, point, nth or 1)
        if point is None:
            # metrics.jsonl is rewritten (cut back to the checkpoint) when the child starts: wait for that,
            # then for the target step, then a random fraction of a step
            steps = step_checkpoints(run)
            resumed_from = int(steps[-1].name[5:]) if steps else 0
            target = rng.randint(min(resumed_from + 1, STEPS - 3), STEPS - 3)
            metrics = run / "metrics.jsonl"
            deadline = time.monotonic() + 60
            while proc_state(pid) != "Z" and time.monotonic() < deadline and not (
                    metrics.exists() and metrics.stat().st_mtime >= started and max(losses(run), default=0) >= target):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, (1.5 if target > resumed_from else 0.3) * step_s))
            state = proc_state(pid)
        else:
            state = wait_state(pid, "TZ")  # stopped at the point, or finished without reaching it
        if state != "Z":
            os.kill(pid, signal.SIGKILL)
        status = zygote.wait(pid)
        if status["signal"] == signal.SIGKILL:
            # a NAME.tmp this child wrote to means the random kill landed inside a checkpoint write
            tmp = [p.name for p in (run / "checkpoints").glob("*.tmp") if p.stat().st_mtime >= started]
            kills.append(point or f"random{' (inside ' + tmp[0] + ')' if tmp else ''}")
            check_invariants(run, f"{verb} after kill {len(kills)} ({kills[-1]})")
        else:
            assert status["code"] == 0, f"{verb} failed: {log.read_text()[-3000:]}"
            check_invariants(run, f"{verb} finished")
            return kills
    pid = zygote.start(argv + ["--resume"], log)
    status = zygote.wait(pid)
    assert status == {"signal": 0, "code": 0}, f"{verb} --resume failed: {log.read_text()[-3000:]}"
    check_invariants(run, f"{verb} final")
    return kills


def final_weights(run: Path) -> bytes:
    return (step_checkpoints(run)[-1] / MODEL_FILE).read_bytes()


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_kill_and_resume_pretrain_sft_dpo(ws, zygote, tmp_path):
    rng = random.Random(9)
    root = tmp_path
    log = root / "runs.log"
    total = 0
    stages = [("pretrain", lambda name: pretrain_recipe(ws, root / f"{name}.yaml", root / name, max_steps=STEPS)),
              ("sft", lambda name: sft_recipe(ws, root / f"{name}.yaml", root / "pretrain-ref", root / name,
                                              max_steps=STEPS)),
              ("dpo", lambda name: dpo_recipe(ws, root / f"{name}.yaml", root / "pretrain-ref", root / name,
                                              max_steps=STEPS))]
    for verb, recipe in stages:
        ref = root / f"{verb}-ref"
        pid = zygote.start([verb, "--config", str(recipe(f"{verb}-ref"))], log)
        assert zygote.wait(pid) == {"signal": 0, "code": 0}, log.read_text()[-3000:]
        killed = root / f"{verb}-killed"
        kills = kill_and_resume(zygote, verb, recipe(f"{verb}-killed"), killed, rng, log, step_seconds(ref))
        assert len(kills) >= 7, f"{verb}: only {len(kills)} kills landed: {kills}"
        print(f"\n{verb}: {len(kills)} kills: {', '.join(kills)}")
        total += len(kills)
        assert losses(killed) == losses(ref) and len(losses(ref)) == STEPS, verb
        assert final_weights(killed) == final_weights(ref), f"{verb}: resumed weights differ"
        assert "Traceback" not in log.read_text()
    print(f"\nkill-and-resume: {total} SIGKILLs survived across pretrain, sft, dpo")
    assert total >= 20


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(ws, zygote, tmp_path, capfd):
    log = tmp_path / "runs.log"
    ref = tmp_path / "ref"
    pid = zygote.start(["pretrain", "--config", str(pretrain_recipe(ws, tmp_path / "ref.yaml", ref))], log)
    assert zygote.wait(pid) == {"signal": 0, "code": 0}, log.read_text()[-3000:]
    for damage in ("flip", "truncate"):
        run = tmp_path / damage
        shutil.copytree(ref, run)
        previous, newest = step_checkpoints(run)[-2:]
        weights = newest / MODEL_FILE
        data = bytearray(weights.read_bytes())
        if damage == "flip":
            data[-40:-30] = bytes(b ^ 0xFF for b in data[-40:-30])  # tensor bytes: the header still parses
        else:
            data = data[: len(data) // 2]
        weights.write_bytes(bytes(data))
        capfd.readouterr()
        assert latest_checkpoint(run) == previous
        err = capfd.readouterr().err
        assert "warning" in err and str(newest) in err and "checksum" in err
        # --resume warns, continues from the previous checkpoint and still ends on the reference weights
        run_log = tmp_path / f"{damage}.log"
        recipe = pretrain_recipe(ws, tmp_path / f"{damage}.yaml", run)
        pid = zygote.start(["pretrain", "--config", str(recipe), "--resume"], run_log)
        assert zygote.wait(pid) == {"signal": 0, "code": 0}, run_log.read_text()[-3000:]
        assert "skipping damaged checkpoint" in run_log.read_text()
        assert final_weights(run) == final_weights(ref)
        assert losses(run) == losses(ref)


def test_killed_pipeline_stage_resumes_on_rerun(ws, zygote, tmp_path):
    """`foundry run` after a kill: finished stages are skipped and the training stage continues, including
    when it died before its first checkpoint; the result equals an uninterrupted pipeline's."""
    from tests.helpers.reliability import TRAIN, write_yaml

    def recipe(name: str) -> Path:
        return write_yaml(tmp_path / f"{name}.yaml", {"name": name, "out_dir": str(tmp_path / name), "stages": [
            {"name": "data", "verb": "data prepare",
             "args": [str(ws["corpus"]), "--out", "{out}", "--val-fraction", "0.15", "--no-progress"]},
            {"name": "tokenizer", "verb": "tokenizer train",
             "args": ["{stage:data}", "--out", "{out}", "--vocab-size", "300", "--min-frequency", "1"]},
            {"name": "tokenize", "verb": "data tokenize", "output": "{stage:data}/tokens",
             "args": ["{stage:data}", "--tokenizer", "{stage:tokenizer}", "--workers", "1", "--no-progress"]},
            {"name": "base", "verb": "pretrain", "resume": ["--resume"],
             "config": {"out_dir": "{out}", "data": "{stage:data}", "tokenizer": "{stage:tokenizer}",
                        "model": {"preset": "test"}, "train": {**TRAIN, "max_steps": 6}}}]})

    log = tmp_path / "runs.log"
    pid = zygote.start(["run", str(recipe("whole"))], log)
    assert zygote.wait(pid) == {"signal": 0, "code": 0}, log.read_text()[-3000:]
    killed = recipe("killed")
    for nth in (1, 4):  # inside the first checkpoint write, then inside the fourth
        pid = zygote.start(["run", str(killed)], log, "weights_written", nth)
        assert wait_state(pid, "TZ") == "T"
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid)["signal"] == signal.SIGKILL
        check_invariants(tmp_path / "killed" / "base", f"pipeline kill {nth}")
    pid = zygote.start(["run", str(killed)], log)
    assert zygote.wait(pid) == {"signal": 0, "code": 0}, log.read_text()[-3000:]
    text = log.read_text()
    assert "data: unchanged, skipped" in text and "Traceback" not in text
    assert losses(tmp_path / "killed" / "base") == losses(tmp_path / "whole" / "base")
    assert final_weights(tmp_path / "killed" / "base") == final_weights(tmp_path / "whole" / "base")
