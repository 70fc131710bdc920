"""`foundry chat` driven through a pipe: replies stream, history carries over, /reset forgets, /exit quits."""

import subprocess
import sys

import pytest

from foundry.data.chat import render_chat
from foundry.serve.generate import generate
from foundry.checkpoints import load_model

from tests.helpers.serve_fixtures import tiny_checkpoint


def _run(args, stdin):
    return subprocess.run([sys.executable, "-m", "foundry.cli", "chat", *args], input=stdin, text=True,
                          capture_output=True, timeout=120)


def _greedy(model, tok, messages, n=8):
    ids, _ = render_chat(tok, messages, add_generation_prompt=True)
    return tok.decode(list(generate(model, tok, ids, max_new_tokens=n, temperature=0)))


@pytest.mark.slow
def test_chat_history_reset_exit(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(ckpt)
    model, tok = load_model(ckpt)
    system = "be brief"
    sys_msg = [{"role": "system", "content": system}]
    r1 = _greedy(model, tok, sys_msg + [{"role": "user", "content": "hello world"}])
    r2 = _greedy(model, tok, sys_msg + [{"role": "user", "content": "hello world"},
                                        {"role": "assistant", "content": r1},
                                        {"role": "user", "content": "the river"}])
    r3 = _greedy(model, tok, sys_msg + [{"role": "user", "content": "the river"}])
    fresh_r2 = r3  # what turn 2 would say without history
    proc = _run([str(ckpt), "--system", system, "--temperature", "0", "--max-new-tokens", "8"],
                "hello world\nthe river\n/reset\nthe river\n/exit\nnot read\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n", 1)
    assert lines[0].startswith("foundry chat")
    assert lines[1] == (f"assistant> {r1}\nassistant> {r2}\n(conversation reset)\nassistant> {r3}\n")
    assert r2 != fresh_r2, "history should change the reply for this model and prompt"


def test_chat_grounded_lists_sources_and_bad_index(tmp_path, capsys):
    import io

    from foundry.cli import main as cli
    from foundry.serve.chat import chat_loop
    from foundry.serve.retrieval import Index

    ckpt = tmp_path / "ckpt"
    model, tok = tiny_checkpoint(ckpt)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "osk.md").write_text("The river Osk runs past the town of Varnholt, which exports copper and salt.\n")
    (docs / "other.txt").write_text("Cheese and wool are carried on barges to the market in spring time.\n")
    assert cli(["index", "build", str(docs), "--out", str(tmp_path / "idx"), "--min-words", "1"]) == 0
    out = io.StringIO()
    history = chat_loop(model, tok, index=Index.load(tmp_path / "idx"), passages=1, max_new_tokens=4,
                        temperature=0, stdin=io.StringIO("Which river runs past Varnholt?\n"), out=out)
    assert out.getvalue().rstrip().endswith("sources: osk.md")
    # the kept history holds the question as asked, not the grounded prompt
    assert history[0] == {"role": "user", "content": "Which river runs past Varnholt?"}
    capsys.readouterr()
    assert cli(["chat", str(ckpt), "--index", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error:") and err.count("\n") == 1 and "not a retrieval index" in err
