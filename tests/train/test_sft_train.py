"""`foundry sft` end to end on a tiny model: it learns the format and stops by itself; LoRA merges into a
normal checkpoint; bad input fails in one line and writes nothing."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, book_chats, tiny_tokenizer

from foundry.cli import main as cli
from foundry.data.chat import render_chat
from foundry.serve.generate import generate
from foundry.checkpoints import load_model

TRAIN = dict(max_steps=150, micro_batch_size=4, block_size=64, lr=3e-3, warmup_steps=5, eval_every=50,
             eval_batches=4, log_every=25, checkpoint_every=1000, threads=1, progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tok = tiny_tokenizer()
    base_checkpoint(root / "base", tok)
    write_jsonl(root / "train.jsonl", book_chats())
    write_jsonl(root / "val.jsonl", book_chats()[:4])
    return root, tok


def _recipe(root, name, **extra):
    data = {"init": str(root / "base"), "data": str(root / "train.jsonl"), "out_dir": str(root / name),
            "train": TRAIN, **extra}
    return write_yaml(root / f"{name}.yaml", data)


def test_sft_learns_format_and_stops(workdir, capsys):
    root, tok = workdir
    assert cli(["sft", "--config", str(_recipe(root, "run", val_data=str(root / "val.jsonl")))]) == 0
    out = capsys.readouterr().out
    assert "truncated: 0 lost early turns, 0 cut at the tail, 0 skipped" in out
    model, tok2 = load_model(root / "run")
    for a, b in list(zip(BOOKS, BOOKS[1:]))[::3]:
        prompt, _ = render_chat(tok2, [{"role": "user", "content": f"Which book follows {a}?"}],
                                add_generation_prompt=True)
        expected = tok2.encode(b) + [tok2.eot_id]
        # stop only at <|endoftext|>, so we see that the model itself emits <|end|> right after the answer
        got = list(generate(model, tok2, prompt, max_new_tokens=len(expected), temperature=0,
                            stop_ids=[tok2.eos_id]))
        assert got == expected, (a, tok2.decode(got))
        # with the default stops it ends on its own, well before the token budget
        assert len(list(generate(model, tok2, prompt, max_new_tokens=30, temperature=0))) == len(expected) - 1
    # the base model does not: the behaviour came from SFT
    base, _ = load_model(root / "base")
    assert list(generate(base, tok2, prompt, max_new_tokens=len(expected), temperature=0,
                         stop_ids=[tok2.eos_id])) != expected


def test_lora_sft_saves_merged_normal_checkpoint(workdir):
    root, tok = workdir
    train = {**TRAIN, "max_steps": 20}
    recipe = write_yaml(root / "lora.yaml", {"init": str(root / "base"), "data": str(root / "train.jsonl"),
                                             "out_dir": str(root / "lora"), "train": train,
                                             "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}})
    assert cli(["sft", "--config", str(recipe)]) == 0
    tuned, _ = load_model(root / "lora")  # plain foundry keys: load_model would refuse LoRA-shaped weights
    base, _ = load_model(root / "base")
    t, b = tuned.state_dict(), base.state_dict()
    assert set(t) == set(b)
    changed = {k for k in t if not torch.equal(t[k], b[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


@pytest.mark.parametrize("problem,needle", [
    ("role", "train.jsonl:2: message 1 has unknown role 'robot'"),
    ("no_assistant", "train.jsonl:2: conversation has no assistant turn"),
    ("lora", "lora: target module 'qkv_proj' not found"),
    ("exists", "already holds a run"),
])
def test_bad_input_one_line_nothing_written(tmp_path, workdir, capsys, problem, needle):
    root, tok = workdir
    chats = book_chats()[:3]
    if problem == "role":
        chats[1] = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    if problem == "no_assistant":
        chats[1] = {"messages": [{"role": "user", "content": "x"}]}
    write_jsonl(tmp_path / "train.jsonl", chats)
    out = tmp_path / "out"
    extra = {"lora": {"targets": ["qkv_proj"]}} if problem == "lora" else {}
    if problem == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    recipe = write_yaml(tmp_path / "r.yaml", {"init": str(root / "base"), "data": str(tmp_path / "train.jsonl"),
                                              "out_dir": str(out), "train": {**TRAIN, "max_steps": 1}, **extra})
    assert cli(["sft", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error: ") and needle in err and err.count("\n") == 1
    if problem == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.mark.slow
def test_sft_on_bundled_set_ends_answers_by_itself(tmp_path):
    """The bundled instruction set (data/post) teaches a tiny random model to stop: on held-out short-answer
    prompts it emits <|end|> by itself (the content is beyond a 130k-parameter model without pretraining)."""
    import re
    from pathlib import Path

    from foundry.data.chat import read_chat_jsonl
    from foundry.data.tokenizer import Tokenizer

    post = Path(__file__).resolve().parents[2] / "data" / "post"
    # Without the hedged demonstrations (there for the preference check, see make_post_training_data.py):
    # a 130k model without pretraining loops inside the hedge's template instead of learning to stop.
    lines = [line for line in (post / "instructions.jsonl").read_text().splitlines() if "not sure" not in line]
    (tmp_path / "direct.jsonl").write_text("\n".join(lines) + "\n")
    chats = read_chat_jsonl(tmp_path / "direct.jsonl")
    tok = Tokenizer.train([m["content"] for c in chats for m in c] * 3, vocab_size=512, min_frequency=2)
    base_checkpoint(tmp_path / "base", tok, vocab_size=tok.vocab_size)
    recipe = write_yaml(tmp_path / "r.yaml", {
        "init": str(tmp_path / "base"), "data": str(tmp_path / "direct.jsonl"), "out_dir": str(tmp_path / "run"),
        "train": {**TRAIN, "max_steps": 300, "micro_batch_size": 8, "block_size": 128}})
    assert cli(["sft", "--config", str(recipe)]) == 0

    def ended_share(model) -> float:
        ended = total = 0
        for msgs in read_chat_jsonl(post / "instructions_val.jsonl"):
            k = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            if not re.match(r"(Which book|How many chapters)", msgs[k - 1]["content"]):
                continue
            prompt, _ = render_chat(tok, msgs[:k], add_generation_prompt=True)
            out = list(generate(model, tok, prompt, max_new_tokens=24, temperature=0, stop_ids=[tok.eos_id]))
            total += 1
            ended += tok.eot_id in out and tok.decode(out[:out.index(tok.eot_id)]).endswith(".")
        assert total >= 10
        return ended / total

    tuned, _ = load_model(tmp_path / "run")
    base, _ = load_model(tmp_path / "base")
    assert ended_share(base) == 0.0
    assert ended_share(tuned) >= 0.8


def test_sft_resume_continues_exactly(workdir):
    """Stopping after 4 steps and resuming gives the same losses as one uninterrupted run (data position
    restored with the weights, accelerate #2016)."""
    import json

    root, tok = workdir
    # constant lr: the schedule does not depend on max_steps, so the two runs see the same lr at every step
    train = {**TRAIN, "max_steps": 8, "checkpoint_every": 4, "log_every": 1, "eval_every": 1000, "schedule": "constant"}

    def losses(run):
        return [m["loss"] for m in map(json.loads, (root / run / "metrics.jsonl").read_text().splitlines())
                if "loss" in m and m["step"] > 4]

    straight = write_yaml(root / "straight.yaml", {"init": str(root / "base"), "data": str(root / "train.jsonl"),
                                                   "out_dir": str(root / "straight"), "train": train})
    assert cli(["sft", "--config", str(straight)]) == 0
    halted = write_yaml(root / "halted.yaml", {"init": str(root / "base"), "data": str(root / "train.jsonl"),
                                               "out_dir": str(root / "halted"), "train": {**train, "max_steps": 4}})
    assert cli(["sft", "--config", str(halted)]) == 0
    assert cli(["sft", "--config", str(halted), "--resume", "train.max_steps=8"]) == 0
    assert len(losses("straight")) == 4 and losses("halted") == losses("straight")
