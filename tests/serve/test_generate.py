"""Generation: cached == uncached (greedy and seeded sampling), stop tokens, seeds, the CLI."""

from __future__ import annotations

import pytest
import torch

from foundry.model.llama import Llama, config_from_preset
from foundry.serve.generate import generate, generate_text, sample_next

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Llama(config_from_preset("test", vocab_size=280, max_seq_len=64, init_std=0.2))  # peaky logits
    return m.eval()


def test_cached_equals_uncached_greedy_and_sampled(model, tokenizer):
    prompt = tokenizer.encode("the lord said unto")
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.9, "top_k": 20, "top_p": 0.9,
                                                                     "seed": 11}):
        cached = list(generate(model, tokenizer, prompt, max_new_tokens=30, stop_ids=[], use_cache=True, **kw))
        uncached = list(generate(model, tokenizer, prompt, max_new_tokens=30, stop_ids=[], use_cache=False, **kw))
        assert len(cached) == 30 and cached == uncached, kw


def test_seed_reproduces_and_different_seeds_differ(model, tokenizer):
    prompt = tokenizer.encode("and")
    a = list(generate(model, tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=1, stop_ids=[]))
    b = list(generate(model, tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=1, stop_ids=[]))
    c = list(generate(model, tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=2, stop_ids=[]))
    assert a == b and a != c


def test_stops_before_stop_token_and_at_context_limit(model, tokenizer):
    prompt = tokenizer.encode("the")
    free = list(generate(model, tokenizer, prompt, max_new_tokens=10, temperature=0, stop_ids=[]))
    stopped = list(generate(model, tokenizer, prompt, max_new_tokens=10, temperature=0, stop_ids=[free[3]]))
    assert stopped == free[:free.index(free[3])]
    long_prompt = list(range(10, 70))  # 60 tokens of a 64-token context
    assert len(list(generate(model, tokenizer, long_prompt, max_new_tokens=50, temperature=0, stop_ids=[]))) == 4
    assert isinstance(generate_text(model, tokenizer, "the", max_new_tokens=5, temperature=0), str)


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([5.0, 4.0, 1.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws_k = {sample_next(logits, 1.0, 2, None, gen) for _ in range(200)}
    assert draws_k == {0, 1}
    # p(0)=0.71, p(1)=0.26: top_p=0.5 keeps only the first token.
    assert {sample_next(logits, 1.0, None, 0.5, gen) for _ in range(50)} == {0}
    assert sample_next(logits, 0, None, None, None) == 0


def test_generate_cli_streams_from_a_checkpoint(tmp_path, model, tokenizer, capsys):
    from foundry.cli import main
    from foundry.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", "the lord", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    expected = generate_text(model, tokenizer, "the lord", max_new_tokens=12, temperature=0)
    assert out == "the lord" + expected + "\n"
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", "hi", "--chat", "--seed", "1",
                 "--max-new-tokens", "5"]) == 0
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert "foundry: error: " in capsys.readouterr().err


def test_generate_cli_grounds_the_prompt_in_retrieved_passages(tmp_path, model, tokenizer, capsys):
    from foundry.cli import main
    from foundry.serve.retrieval import Index, grounded_prompt
    from foundry.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "harbour.md").write_text("Copper is mined in the hills above the harbour of Lindqvist every summer.\n")
    (docs / "light.md").write_text("The lighthouse of Morrow Point was built from grey granite blocks.\n")
    assert main(["index", "build", str(docs), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    question = "What is mined near Lindqvist?"
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", question, "--index", str(tmp_path / "idx"),
                 "--passages", "1", "--max-new-tokens", "4", "--temperature", "0", "--no-stream"]) == 0
    out = capsys.readouterr().out
    prompt = grounded_prompt(Index.load(tmp_path / "idx"), question, 1)
    assert out.startswith(prompt) and "[harbour.md] Copper is mined" in out and "granite" not in out
    assert out == prompt + generate_text(model, tokenizer, prompt, max_new_tokens=4, temperature=0) + "\n"
