"""Hostile verifiers on `foundry rl` (issue 30): a verifier that hangs (or a catastrophic regex) ends the run in
one line within its timeout, one that exits or kills its process cannot take the run with it, a string
reward is refused, and Ctrl-C stops a run stuck in a verifier at once, leaving no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, tiny_tokenizer

from foundry.cli import main as cli
from foundry.errors import DataError
from foundry.train.verifiers import RewardFunction, VerifierSpec

TRAIN = dict(max_steps=1, micro_batch_size=2, block_size=64, lr=1e-3, log_every=1, eval_every=100,
             checkpoint_every=100, threads=1, progress=False, seed=3)

VERIFIERS = '''
import os, sys, time

def hangs(completion, item):
    open(os.environ["HOSTILE_MARK"], "w").write(str(os.getpid()))
    time.sleep(3600)

def exits(completion, item):
    sys.exit(0)

def dies(completion, item):
    os._exit(3)

def stringly(completion, item):
    return "0.75"
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_rl")
    base_checkpoint(root / "base", tiny_tokenizer(), max_seq_len=64)
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"Which book follows {a}?", "answer": b}
                                         for a, b in zip(BOOKS[:4], BOOKS[1:5])])
    (root / "hostile_verifiers.py").write_text(VERIFIERS)
    return root


def recipe(root, name: str, function: str, timeout: float = 10.0):
    return write_yaml(root / f"{name}.yaml", {
        "init": str(root / "base"), "prompts": str(root / "prompts.jsonl"), "out_dir": str(root / name),
        "group_size": 2, "max_new_tokens": 4, "kl_beta": 0.0, "verifier_timeout": timeout,
        "verifiers": [{"type": "python", "function": f"hostile_verifiers:{function}"}], "train": TRAIN})


def run_rl(root, config, env_extra: dict | None = None, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", "import sys, foundry.cli; sys.exit(foundry.cli.main(sys.argv[1:]))",
                             "rl", "--config", str(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_hanging_verifier_ends_the_run_in_one_line_within_its_timeout(workdir, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setenv("HOSTILE_MARK", str(workdir / "hang.pid"))
    start = time.monotonic()
    assert cli(["rl", "--config", str(recipe(workdir, "hang", "hangs", timeout=1.0))]) == 1
    took = time.monotonic() - start
    err = one_line(capsys.readouterr().err)
    assert "hostile_verifiers:hangs did not return within 1s" in err and "prompts.jsonl:" in err, err
    assert took < 30, took  # model load + one batch's sampling + the 1 s timeout
    pid = int((workdir / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the worker was killed with its verifier
        os.kill(pid, 0)


@pytest.mark.parametrize("function, needles", [
    ("exits", ("hostile_verifiers:exits called sys.exit(0)",)),
    ("dies", ("hostile_verifiers:dies ended its process (exit code 3)",)),
    ("stringly", ("hostile_verifiers:stringly returned str '0.75', not a number",)),
])
def test_exiting_dying_and_string_verifiers_are_one_line_errors(workdir, monkeypatch, capsys, function, needles):
    monkeypatch.syspath_prepend(str(workdir))
    assert cli(["rl", "--config", str(recipe(workdir, function, function))]) == 1  # was 0 for sys.exit(0)
    err = one_line(capsys.readouterr().err)
    for needle in needles:
        assert needle in err, err


def test_catastrophic_regex_is_cut_by_the_timeout():
    reward = RewardFunction([VerifierSpec(type="regex", pattern=r"^(.+)+#$")])
    assert reward.score_many([("ab#", {}, "p.jsonl:1")], timeout=5) == [(1.0, True)]
    start = time.monotonic()
    with pytest.raises(DataError, match=r"p.jsonl:2: verifier regex did not return within 1s"):
        reward.score_many([("ab#", {}, "p.jsonl:1"), ("a" * 60, {}, "p.jsonl:2")], timeout=1)
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_first_ctrl_c_stops_a_run_stuck_in_a_verifier(workdir):
    mark = workdir / "ctrl_c.pid"
    proc = run_rl(workdir, recipe(workdir, "ctrl_c", "hangs", timeout=600), {"HOSTILE_MARK": str(mark)})
    deadline = time.monotonic() + 60
    while not mark.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert mark.is_file(), proc.communicate()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("one Ctrl-C did not stop the run")
    assert proc.returncode == 130 and "foundry: interrupted" in err and "Traceback" not in err, err
    pid = int(mark.read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_rl_sampling_is_numerically_safe_at_the_extremes():
    import torch

    from foundry.model.sampling import sample_rows

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1).tolist()
    assert sample_rows(logits, 1e-45, None, None).tolist() == best  # was: inf/nan -> multinomial raised
    assert sample_rows(logits * 1e30, 1.0, 5, torch.Generator().manual_seed(1)).tolist() == best
