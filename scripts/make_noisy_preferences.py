"""Noisy copies of the bundled preference set, for the study of label noise (recipes/study.yaml, lesson e).

    python scripts/make_noisy_preferences.py            # writes data/post/noisy/

For each rate in --rates (default 20% and 40%), a seeded random share of the pairs in
data/post/preferences.jsonl has chosen and rejected swapped, as a careless or adversarial annotator
would; every other pair and the held-out validation file are untouched, so DPO, conservative DPO and
IPO trained on each copy can be scored on the same clean held-out pairs. `flips.json` lists the swapped
line numbers (1-based), so an audit's flags can be checked against the truth. Deterministic: the same
input and seed give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def flip(records: list[dict], rate: float, seed: int) -> tuple[list[dict], list[int]]:
    rng = random.Random(f"{seed}:{rate}")
    chosen = sorted(rng.sample(range(len(records)), round(rate * len(records))))
    out = [dict(r) for r in records]
    for i in chosen:
        out[i]["chosen"], out[i]["rejected"] = out[i]["rejected"], out[i]["chosen"]
    return out, [i + 1 for i in chosen]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(REPO / "data/post/preferences.jsonl"))
    p.add_argument("--out", default=str(REPO / "data/post/noisy"))
    p.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    source, out = Path(args.source), Path(args.out)
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    flips, files = {}, {}
    for rate in args.rates:
        name = f"preferences_flip{round(rate * 100)}.jsonl"
        noisy, lines = flip(records, rate, args.seed)
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in noisy), encoding="utf-8")
        flips[name] = lines
        files[name] = f"{len(noisy)} pairs, {len(lines)} with chosen and rejected swapped"
    (out / "flips.json").write_text(json.dumps(flips) + "\n", encoding="utf-8")
    source_rel = source.resolve().relative_to(REPO).as_posix() if source.resolve().is_relative_to(REPO) else str(source)
    meta = {"name": "noisy copies of the bundled preference pairs (label-noise study)", "license": "public-domain",
            "origin": f"{source_rel} (see data/post/SOURCE.yaml)",
            "generator": f"scripts/make_noisy_preferences.py --seed {args.seed} --rates "
                         + " ".join(str(r) for r in args.rates),
            "files": {**files, "flips.json": "the swapped line numbers of each file (1-based)"}}
    (out / "SOURCE.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=110), encoding="utf-8")
    print(f"wrote {', '.join(files)} to {out}")


if __name__ == "__main__":
    main()
