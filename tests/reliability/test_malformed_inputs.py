"""Malformed inputs at every entry point: each broken file, run through the CLI, must exit non-zero with
ONE line `foundry: error: ...` that names the offending file, print no traceback, and leave every output
untouched (an existing output directory keeps its bytes; no new, half-written output appears).

The broken inputs are built by `tests/helpers/make_malformed.py` (small, generated, so the table says
exactly what is wrong with each); the table below pairs each with the command that reads it. Most run
in-process through `foundry.cli.main`; a handful also run as real `foundry` subprocesses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.cli import main as cli

from tests.helpers.make_malformed import CASES, Built, build_context


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return build_context(tmp_path_factory.mktemp("malformed-context"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | \
        {str(p.relative_to(folder)) + "/": b"" for p in folder.rglob("*") if p.is_dir()}


def check_error(code: int, err: str, built: Built) -> str:
    assert code != 0, f"exit {code}: the broken input was accepted"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    line = lines[0]
    assert line.startswith("foundry: error: "), line
    assert built.names in line, f"the message does not name {built.names}: {line}"
    for word in built.mentions:
        assert word.lower() in line.lower(), f"the message does not say {word!r}: {line}"
    return line


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_fails_cleanly(name, context, tmp_path, capsys):
    built = CASES[name](tmp_path, context)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = cli(built.argv)
    err = capsys.readouterr().err
    check_error(code, err, built)
    assert snapshot(tmp_path) == before, "an output was written, changed or removed"
    if built.marker is not None:
        assert not built.marker.exists(), "a crafted pickle ran code"


# A handful through real processes: the console entry point, its exit status and its stderr.
SUBPROCESS_CASES = ["recipe_invalid_yaml", "corpus_missing_path", "pipeline_parent_not_run",
                    "tasks_answer_out_of_range", "chat_unknown_role"]


@pytest.mark.slow
def test_malformed_inputs_through_real_processes(context, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for name in SUBPROCESS_CASES:
        folder = tmp_path / name
        folder.mkdir()
        built = CASES[name](folder, context)
        before = snapshot(folder)
        proc = subprocess.Popen([sys.executable, "-m", "foundry.cli", *built.argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        runs.append((name, folder, built, before, proc))
    for name, folder, built, before, proc in runs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (name, proc.returncode, err)
        check_error(proc.returncode, err, built)
        assert snapshot(folder) == before, name


def test_fixture_table_is_large_and_covers_every_entry_point():
    assert len(CASES) >= 30
    kinds = {name.split("_")[0] for name in CASES}
    for kind in ("corpus", "chat", "prefs", "recipe", "pipeline", "rubric", "rating", "tasks", "ckpt", "tokenizer",
                 "hf"):
        assert kind in kinds, kind


@pytest.mark.slow
def test_fixture_script_writes_the_inputs_to_a_folder(tmp_path):
    """`python -m tests.helpers.make_malformed DIR` materialises every broken input for inspection."""
    out = tmp_path / "malformed"
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.make_malformed", str(out),
                           "--only", "corpus_non_utf8", "recipe_unknown_key"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["corpus_non_utf8", "recipe_unknown_key"]
    assert b"\xff" in (out / "corpus_non_utf8" / "corpus" / "bad.txt").read_bytes()
    shutil.rmtree(out)
