"""The "SFT alone" arm of the language-coverage study (recipes/study.yaml, lesson f): French text as chats.

    python scripts/make_french_chats.py          # writes data/post/fr/

Each French handbook section (data/domain/debian-handbook-fr) that `foundry data prepare` would put in
the TRAINING split at the study's --val-fraction is cut into passages; each passage becomes one chat in
which the user gives its first half and asks for the rest, and the assistant writes the second half.
The arm sees the same French training text as continual pretraining on that corpus, but the way
instruction tuning sees text: in the chat template, with the loss on the assistant's half only. The
held-out sections (the validation split every arm is scored on) never appear here. Deterministic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from foundry.data.clean import clean_text, content_hash
from foundry.data.prepare import in_validation

REPO = Path(__file__).resolve().parents[1]
ASK = "Continue ce passage du manuel de l'administrateur Debian :\n\n"


def passages(text: str, chars: int) -> list[str]:
    """Consecutive passages of about `chars` characters, cut at paragraph or sentence ends."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + chars)
        if end < len(text):
            cut = max(text.rfind("\n", start + chars // 2, end), text.rfind(". ", start + chars // 2, end))
            end = cut + 1 if cut > 0 else end
        piece = text[start:end].strip()
        if len(piece) > chars // 4:
            out.append(piece)
        start = end
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(REPO / "data/domain/debian-handbook-fr/debian-handbook-fr.txt"))
    p.add_argument("--out", default=str(REPO / "data/post/fr"))
    p.add_argument("--val-fraction", type=float, default=0.1, help="as given to 'foundry data prepare' in the study")
    p.add_argument("--min-chars", type=int, default=100, help="as 'foundry data prepare' (shorter sections are dropped)")
    p.add_argument("--passage-chars", type=int, default=600)
    args = p.parse_args()
    sections = Path(args.source).read_text(encoding="utf-8").split("\f")
    chats, held_out = [], 0
    for raw in sections:
        text = clean_text(raw)
        if len(text) < args.min_chars:
            continue
        if in_validation(content_hash(text), args.val_fraction):
            held_out += 1
            continue
        for piece in passages(text, args.passage_chars):
            half = piece.rfind(" ", 0, len(piece) // 2)
            if half <= 0:
                continue
            chats.append({"messages": [{"role": "user", "content": ASK + piece[:half]},
                                       {"role": "assistant", "content": piece[half + 1:]}]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "french_chats.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats),
                                            encoding="utf-8")
    meta = {"name": "French handbook passages as continuation chats (SFT arm of the coverage study)",
            "license": "GPL-2.0-or-later OR CC-BY-SA-3.0",
            "origin": "data/domain/debian-handbook-fr (see its SOURCE.yaml and LICENSE)",
            "generator": f"scripts/make_french_chats.py --val-fraction {args.val_fraction} "
                         f"--passage-chars {args.passage_chars}",
            "language": "fr",
            "files": {"french_chats.jsonl": f"{len(chats)} chats from the training sections; "
                                            f"{held_out} held-out sections left out"}}
    (out / "SOURCE.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=110),
                                     encoding="utf-8")
    print(f"{len(chats)} chats ({held_out} held-out sections left out) -> {out}")


if __name__ == "__main__":
    main()
