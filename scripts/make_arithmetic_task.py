"""Generate the bundled RL task: small-number addition and subtraction with checkable answers.

    python scripts/make_arithmetic_task.py [--out data/rl/arithmetic]

Problems are `a + b` (0 <= a, b <= 12) and `a - b` (0 <= b <= a <= 12): 260 in all. A fixed-seed shuffle
splits them into held-out (80) and train (180) problems. The pretraining text states every fact, as a
language model's pretraining does; held-out problems are never ASKED in training (not in SFT, not among
the RL prompts), so held-out accuracy measures whether what SFT and RL teach about answering carries over
to questions they never rewarded. Files:

- corpus/worked.txt      every problem written out ("7 + 5 = 12"), the pretraining text
- sft.jsonl               chat pairs teaching the answer FORMAT (the bare number), on 60 train problems
- prompts.jsonl           RL prompts {"prompt", "answer"}: every train problem
- heldout.jsonl           held-out prompts {"prompt", "answer"} (foundry rl's pass@1 and pass@G)
- heldout_task.jsonl      the same as a `foundry eval` generation task (exact checker), for Findings
- prompts_task.jsonl      the RL prompts as a `foundry eval` task (in-distribution accuracy)
- heldout_sft_val.jsonl   held-out problems as chats, for SFT's validation loss

Deterministic: the same files every run (seed 17).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 17
MAX = 12
N_HELDOUT = 80
N_SFT = 60
N_CORPUS_REPEATS = 8  # every problem written this many times, in shuffled order


def problems() -> list[tuple[str, int]]:
    out = [(f"{a} + {b}", a + b) for a in range(MAX + 1) for b in range(MAX + 1)]
    out += [(f"{a} - {b}", a - b) for a in range(MAX + 1) for b in range(a + 1)]
    return out


def question(expr: str) -> str:
    return f"{expr} ="


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "rl" / "arithmetic"))
    args = p.parse_args()
    out = Path(args.out)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    items = problems()
    rng.shuffle(items)
    heldout, train = items[:N_HELDOUT], items[N_HELDOUT:]

    lines = [f"{expr} = {ans}" for expr, ans in items] * N_CORPUS_REPEATS
    rng.shuffle(lines)
    paragraphs = [". ".join(lines[i:i + 8]) + "." for i in range(0, len(lines), 8)]
    (out / "corpus" / "worked.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")

    chat = lambda expr, ans: {"messages": [{"role": "user", "content": question(expr)},  # noqa: E731
                                           {"role": "assistant", "content": str(ans)}]}
    write_jsonl(out / "sft.jsonl", [chat(e, a) for e, a in train[:N_SFT]])
    write_jsonl(out / "heldout_sft_val.jsonl", [chat(e, a) for e, a in heldout])
    write_jsonl(out / "prompts.jsonl", [{"prompt": question(e), "answer": a} for e, a in train])
    write_jsonl(out / "heldout.jsonl", [{"prompt": question(e), "answer": a} for e, a in heldout])
    write_jsonl(out / "heldout_task.jsonl", [{"prompt": question(e), "checker": {"type": "exact", "value": str(a)}}
                                             for e, a in heldout])
    write_jsonl(out / "prompts_task.jsonl", [{"prompt": question(e), "checker": {"type": "exact", "value": str(a)}}
                                             for e, a in train])
    print(f"{len(train)} train problems ({N_SFT} in SFT), {len(heldout)} held out -> {out}")


if __name__ == "__main__":
    main()
