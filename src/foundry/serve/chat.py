"""`foundry chat`: an interactive terminal chat with history, streaming, `/reset` and `/exit`.

Design choices:
- The conversation is rendered by `render_chat(..., add_generation_prompt=True)`, the template SFT
  trained on, and the reply streams token by token (`stream_text` holds back split characters).
- History that no longer fits the context loses its oldest exchanges first (the system prompt stays).
- With `--index`, the latest question is replaced in the prompt (not in the kept history) by a grounded
  prompt holding the top passages and their sources; the sources are listed after the answer.
- Reads lines from stdin, so it works piped (tests, scripts) as well as at a terminal.
"""

from __future__ import annotations

import sys

HELP = "commands: /reset (forget the conversation), /exit (quit), /help"


def conversation_ids(tokenizer, system: str | None, history: list[dict], budget: int) -> list[int]:
    """The prompt for the next reply, dropping the oldest exchanges until it fits in `budget` tokens."""
    from foundry.data.chat import render_chat

    head = [{"role": "system", "content": system}] if system else []
    turns = list(history)
    while True:
        ids, _ = render_chat(tokenizer, head + turns, add_generation_prompt=True)
        if len(ids) <= budget or len(turns) <= 1:
            return ids[-budget:]
        turns = turns[2:] if len(turns) > 2 else turns[-1:]  # drop one user/assistant exchange


def chat_loop(model, tokenizer, system: str | None = None, index=None, passages: int = 3,
              max_new_tokens: int = 256, temperature: float = 0.7, top_k: int | None = None,
              top_p: float | None = None, seed: int | None = None, stdin=None, out=None) -> list[dict]:
    """Run the chat until /exit or end of input; returns the history."""
    from foundry.serve.generate import generate, stream_text

    stdin = stdin or sys.stdin
    out = out or sys.stdout
    history: list[dict] = []
    context = model.config.max_seq_len
    budget = max(1, context - max_new_tokens)
    interactive = stdin.isatty()
    out.write(f"foundry chat ({HELP})\n")
    out.flush()
    turn = 0
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = stdin.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history.clear()
            out.write("(conversation reset)\n")
            out.flush()
            continue
        if command == "/help":
            out.write(HELP + "\n")
            continue
        prompt_turn = {"role": "user", "content": text}
        hits = []
        if index is not None:
            from foundry.serve.retrieval import grounded_prompt

            hits = index.search(text, passages)
            prompt_turn = {"role": "user", "content": grounded_prompt(index, text, passages)}
        ids = conversation_ids(tokenizer, system, history + [prompt_turn], budget)
        out.write("assistant> ")
        out.flush()
        tokens = generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=None if seed is None else seed + turn)
        reply = stream_text(tokenizer, tokens, out=out)
        if hits:
            out.write("sources: " + ", ".join(dict.fromkeys(h["source"] for h in hits)) + "\n")
            out.flush()
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        turn += 1
    return history
