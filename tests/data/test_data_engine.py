"""`foundry data prepare` on the datatrove engine: the same dataset as the single-process path at 1 and 2
workers, a resume after the run is killed, and bad input refused with the single-process path's message."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.cli import main as cli

VOCAB = [f"w{i}x" for i in range(5000)]


def doc(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


def near_copy(text: str, seed: int) -> str:
    """One word changed: word 3-gram Jaccard about 0.94, well above the 0.8 threshold."""
    words = text.split()
    words[random.Random(seed).randrange(len(words))] = "changed"
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four sources with exact copies (also case/space variants) and near copies across files, eval
    contamination, short lines and a chain of near copies (A~B~C, A!~C) whose outcome depends on order."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "c").mkdir()
    (root / "c" / "SOURCE.yaml").write_text("license: CC0-1.0\ncollected: 2024-01-02\ntxt_split: blankline\n")
    eval_item = doc(999)
    chain_a = doc(500, 60)
    chain_b = " ".join(chain_a.split()[:54] + [f"b{i}" for i in range(6)])
    chain_c = " ".join(chain_b.split()[:48] + [f"c{i}" for i in range(12)])
    for f in range(3):
        docs = []
        for i in range(30):
            seed = f * 100 + i
            text = doc(seed)
            if i % 7 == 0:
                text = doc(7)  # exact copy in every file
            elif i % 7 == 1 and f:
                text = doc(8).upper().replace(" ", "  ")  # the same after case and space folding
            elif i % 7 == 2:
                text = near_copy(doc(9), seed)
            elif i % 7 == 3:
                text = doc(seed) + " " + eval_item  # contaminated when it lands in train
            elif i % 7 == 4:
                text = "too short"
            docs.append(text)
        docs.insert(5, [chain_a, chain_b, chain_c][f])
        (root / "c" / f"part{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (root / "c" / "notes.txt").write_text("\n\n".join([doc(8), doc(50), near_copy(doc(50), 1)]))
    (root / "eval.txt").write_text(eval_item)
    return root


def prepare(corpus, out, *extra):
    args = ["data", "prepare", str(corpus / "c"), "--out", str(out), "--eval", str(corpus / "eval.txt"),
            "--val-fraction", "0.2", "--no-progress", *map(str, extra)]
    assert cli(args) == 0
    return json.loads((out / "manifest.json").read_text())


def test_engine_at_one_and_two_workers_writes_the_single_process_dataset(corpus, tmp_path):
    inline = prepare(corpus, tmp_path / "inline", "--executor", "inline")
    d = inline["totals"]["documents"]
    # the fixture plants every kind of drop, so an engine that skipped one would differ below
    assert all(d["dropped"][r] > 0 for r in ("too_short", "exact_duplicate", "contaminated", "near_duplicate"))
    for workers, buckets in ((1, 1), (2, 3)):
        out = tmp_path / f"w{workers}"
        m = prepare(corpus, out, "--workers", workers, "--buckets", buckets)
        for split in ("train", "val"):  # same documents, and even the same bytes in the same order
            assert (out / f"{split}.jsonl").read_bytes() == (tmp_path / "inline" / f"{split}.jsonl").read_bytes()
        assert m["totals"] == inline["totals"]
        assert m["sources"] == inline["sources"]  # per-source counts by reason, sha256, license, dates
        assert m["eval_files"] == inline["eval_files"] and m["fingerprint"] == inline["fingerprint"]
        assert not (tmp_path / f"w{workers}.prepare-work").exists()  # scratch removed after a local run


def _run_killed(corpus, out, fault):
    """A real process, killed (with its engine processes) as the named task starts."""
    cmd = [sys.executable, "-m", "foundry.cli", "data", "prepare", str(corpus / "c"), "--out", str(out),
           "--eval", str(corpus / "eval.txt"), "--val-fraction", "0.2", "--no-progress", "--workers", "1"]
    env = {**os.environ, "FOUNDRY_DATA_FAULT": fault, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, start_new_session=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_a_killed_run_resumes_from_finished_tasks_and_a_finished_run_is_a_no_op(corpus, tmp_path, capsys):
    work = tmp_path / "out.prepare-work"
    _run_killed(corpus, tmp_path / "out", "read:2")
    done = sorted(p.name for p in (work / "logs" / "read" / "completions").iterdir())
    assert done == ["00000", "00001"] and not (tmp_path / "out").exists()
    first = {r: (work / "read" / r / "docs.jsonl").stat().st_mtime_ns for r in done}
    _run_killed(corpus, tmp_path / "out", "merge:0")  # the resume gets as far as the last stage
    assert {r: (work / "read" / r / "docs.jsonl").stat().st_mtime_ns for r in done} == first  # not redone
    assert len(list((work / "logs" / "write" / "completions").iterdir())) == 4
    resumed = prepare(corpus, tmp_path / "out", "--workers", "2")
    inline = prepare(corpus, tmp_path / "inline", "--executor", "inline")
    assert resumed["totals"] == inline["totals"]
    for split in ("train", "val"):
        assert (tmp_path / "out" / f"{split}.jsonl").read_bytes() == (tmp_path / "inline" / f"{split}.jsonl").read_bytes()
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    prepare(corpus, tmp_path / "out", "--workers", "2")
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


BAD = {
    "broken_json": ('{"text": "ok ok ok"}\n{"text": "unterminated\n', "b.jsonl:2: not valid JSON"),
    "missing_field": ('{"body": "x"}\n', "b.jsonl:1: record has no 'text' field"),
    "non_utf8": (b'{"text": "caf\xe9"}\n', "b.jsonl:1: not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_the_single_process_message_on_the_engine(case, tmp_path, capsys):
    content, needle = BAD[case]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"text": doc(1)}) + "\n")
    (src / "b.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
    (src / "c.jsonl").write_text(json.dumps({"text": doc(2)}) + "\n")
    errors = []
    for extra in (["--executor", "inline"], ["--workers", "2"]):
        out = tmp_path / f"out{len(errors)}"
        assert cli(["data", "prepare", str(src), "--out", str(out), "--no-progress", *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("foundry: error: ") and err.count("\n") == 1 and needle in err, err
        errors.append(err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no work directory left
    assert errors[0] == errors[1]


def test_tokenize_on_the_engine_writes_the_single_process_shards(corpus, tmp_path, monkeypatch):
    import shutil

    import numpy as np

    from foundry.data.engine import tokenize as engine
    from foundry.data.shards import TokenStream, load_token_index

    prepare(corpus, tmp_path / "a", "--executor", "inline")
    assert cli(["tokenizer", "train", str(tmp_path / "a"), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    monkeypatch.setattr(engine, "MIN_PART_BYTES", 4096)  # several encode tasks per split even on tiny data
    base = ["--tokenizer", str(tmp_path / "tok"), "--shard-tokens", "997", "--no-progress"]
    assert cli(["data", "tokenize", str(tmp_path / "a"), *base, "--executor", "inline", "--workers", "1"]) == 0
    assert cli(["data", "tokenize", str(tmp_path / "b"), *base, "--workers", "2"]) == 0
    a, b = load_token_index(tmp_path / "a"), load_token_index(tmp_path / "b")
    assert len(a["splits"]["train"]["shards"]) > 3  # documents straddle shard boundaries
    assert {k: v for k, v in a.items() if k not in ("seconds", "dir")} == \
        {k: v for k, v in b.items() if k not in ("seconds", "dir")}
    assert Path(a["dir"]).name == Path(b["dir"]).name  # the tokenizer's keyed folder, DATASET/tokens/<sha256[:16]>
    for shard in Path(a["dir"]).glob("*.bin"):
        assert (Path(b["dir"]) / shard.name).read_bytes() == shard.read_bytes()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    stream = TokenStream(tmp_path / "b", "train")
    eos = int(np.count_nonzero(stream.read(0, stream.num_tokens) == b["eos_id"]))
    assert eos == b["splits"]["train"]["documents"] == manifest["totals"]["documents"]["train"]
    assert sorted(p.name for p in (tmp_path / "b" / "tokens").iterdir()) == [Path(b["dir"]).name]  # no work dir left


def _prepare_on_ray(src, out, *extra):
    """The user's command in a fresh process (Ray starts a local cluster for it and stops it at exit)."""
    cmd = [sys.executable, "-m", "foundry.cli", "data", "prepare", str(src), "--out", str(out), "--no-progress",
           "--executor", "ray", "--workers", "2", *map(str, extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a Ray cluster's start-up and per-task cost grow with the machine's load
def test_ray_executor_writes_the_local_dataset_and_names_the_broken_input(corpus, tmp_path):
    """`--executor ray` on a local Ray cluster: the single-process dataset byte for byte, and a broken line
    refused with the same one-line message (Ray only logs a failed task; foundry reads its error back)."""
    pytest.importorskip("ray")
    inline = prepare(corpus, tmp_path / "inline", "--executor", "inline")
    proc = _prepare_on_ray(corpus / "c", tmp_path / "ray", "--eval", corpus / "eval.txt", "--val-fraction", "0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted" not in proc.stdout  # Ray's executor blocks: the dataset is there when it returns
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["totals"] == inline["totals"] and m["sources"] == inline["sources"]
    for split in ("train", "val"):
        assert (tmp_path / "ray" / f"{split}.jsonl").read_bytes() == (tmp_path / "inline" / f"{split}.jsonl").read_bytes()

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"text": doc(1)}) + "\n")
    (src / "b.jsonl").write_text('{"text": "ok ok ok"}\n{"text": "unterminated\n')
    proc = _prepare_on_ray(src, tmp_path / "bad")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith("foundry: error: ") and "b.jsonl:2: not valid JSON" in err[-1]
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.prepare-work").exists()


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found |= {int(x) for x in f.read().split()}
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_a_killed_driver_leaves_no_engine_helper_alive(corpus, tmp_path):
    """Only the driver is killed (not its process group): the engine's manager and workers end with it."""
    import time

    cmd = [sys.executable, "-m", "foundry.cli", "data", "prepare", str(corpus / "c"), "--out", str(tmp_path / "out"),
           "--eval", str(corpus / "eval.txt"), "--no-progress", "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 2 and proc.poll() is None and time.monotonic() < deadline:
            seen |= _children(proc.pid)
            time.sleep(0.005)
    except FileNotFoundError:  # the run finished meanwhile
        pass
    assert len(seen) >= 2, "the engine forked no helpers before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = set(seen)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().split()[2] != "Z"}
        time.sleep(0.05)
    for pid in alive:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"helpers {sorted(alive)} outlived their killed driver"
