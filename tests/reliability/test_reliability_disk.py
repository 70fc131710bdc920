"""A full disk or a failing rename: checkpoint and dataset writes fail loudly (one-line FoundryError, exit 1,
no traceback) and leave the previous checkpoint or dataset intact and loadable.

The full disk is real at the OS level: RLIMIT_FSIZE makes every write past N bytes fail with EFBIG, in
Python, in safetensors' Rust writer and in torch.save alike (SIGXFSZ ignored), which is what a write
into a full filesystem looks like to the writer. A failing rename is `os.replace` raising ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers.reliability import pretrain_recipe, write_corpus

from foundry.cli import main as cli
from foundry.errors import FoundryError
from foundry.checkpoints import (
    latest_checkpoint, load_model, load_train_state, save_checkpoint, step_checkpoints, verify_checkpoint,
)


@contextlib.contextmanager
def disk_full_after(limit_bytes: int):
    """Every file write past `limit_bytes` fails (EFBIG) until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("foundry: error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(ws, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    recipe = pretrain_recipe(ws, root / "r.yaml", root / "run", max_steps=4, checkpoint_every=2, eval_every=2)
    assert cli(["pretrain", "--config", str(recipe)]) == 0
    return root / "run", recipe


def test_checkpoint_write_on_a_full_disk_fails_loudly_and_keeps_the_previous(trained_run, capsys):
    run, recipe = trained_run
    before = {p.name: snapshot(p) for p in step_checkpoints(run) + [run / "checkpoints" / "best"]}
    assert sorted(before) == ["best", "step_0000002", "step_0000004"]
    capsys.readouterr()
    with disk_full_after(200_000):  # the weights (~480 kB) and optimiser state no longer fit
        code = cli(["pretrain", "--config", str(recipe), "--resume", "train.max_steps=6"])
    assert code == 1
    line = one_line_error(capsys, str(run / "checkpoints"))
    assert "write" in line
    after = {p.name: snapshot(p) for p in step_checkpoints(run) + [run / "checkpoints" / "best"]}
    assert after == before  # nothing half-written where a checkpoint is expected, nothing lost
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith((".tmp", ".old"))]
    assert latest_checkpoint(run).name == "step_0000004"
    assert verify_checkpoint(run / "checkpoints" / "best") is None
    load_model(run)  # still loadable
    assert load_train_state(run / "checkpoints" / "step_0000004")["step"] == 4
    # and with room again the run resumes from step 4 and finishes
    assert cli(["pretrain", "--config", str(recipe), "--resume", "train.max_steps=6"]) == 0
    assert latest_checkpoint(run).name == "step_0000006"


def test_replacing_a_checkpoint_on_a_full_disk_keeps_the_old_one(trained_run):
    run, _ = trained_run
    best = run / "checkpoints" / "best"
    before = snapshot(best)
    model, tok = load_model(best)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with disk_full_after(200_000), pytest.raises(FoundryError, match=str(best)):
        save_checkpoint(best, model, tok, {"step": 99, "optimizer": {"big": torch.zeros(300_000)}}, {"step": 99})
    assert snapshot(best) == before
    assert not best.with_name("best.tmp").exists()


def test_failing_rename_of_a_checkpoint_keeps_the_old_one(trained_run, monkeypatch):
    run, _ = trained_run
    best = run / "checkpoints" / "best"
    before = snapshot(best)
    model, tok = load_model(best)
    real = os.replace
    failures = [1]

    def no_space(src, dst, **kw):  # the rename that puts the new checkpoint in place fails, once
        if Path(dst).name == "best" and failures:
            failures.pop()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(FoundryError, match="No space left on device"):
        save_checkpoint(best, model, tok, None, {"step": 100})
    monkeypatch.undo()
    assert best.is_dir() and snapshot(best) == before, "the old checkpoint must be back in place"
    assert not best.with_name("best.tmp").exists()


def test_dataset_rewrite_on_a_full_disk_keeps_the_previous_dataset(ws, tmp_path, capsys):
    out = tmp_path / "dataset"
    corpus = write_corpus(tmp_path / "corpus", n_docs=40, seed=1)
    assert cli(["data", "prepare", str(corpus), "--out", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    bigger = write_corpus(tmp_path / "corpus2", n_docs=120, seed=2)
    capsys.readouterr()
    with disk_full_after(8_000):
        code = cli(["data", "prepare", str(bigger), "--out", str(out), "--overwrite", "--no-progress"])
    assert code == 1
    one_line_error(capsys, str(out))
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "corpus2", "dataset"]  # no temp dir left


def test_token_shards_rewrite_on_a_full_disk_keeps_the_previous_shards(ws, capsys):
    tokens = ws["dataset"] / "tokens"
    before = snapshot(tokens)
    capsys.readouterr()
    with disk_full_after(4_000):  # the 16k-token train shard (32 kB) does not fit
        code = cli(["data", "tokenize", str(ws["dataset"]), "--tokenizer", str(ws["tokenizer"]), "--workers", "1",
                    "--overwrite", "--no-progress"])
    assert code == 1
    one_line_error(capsys, str(tokens))
    assert snapshot(tokens) == before
    assert not [p for p in ws["dataset"].iterdir() if p.name.startswith(".tokens")]
