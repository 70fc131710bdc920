"""foundry's own multiple-choice numbers beside lm-evaluation-harness's, from `foundry eval` results files.

Make the results with one `foundry eval` run per shot count, scoring the same task both ways, e.g.

    foundry eval RUN/pretrain RUN/continue RUN/sft_base --tasks data/eval/kjv-book.jsonl \
        --lm-eval kjv-book --lm-eval-include data/eval/lm_eval --shots 0 --out shots0.json

then `python benchmarks/lm_eval_agreement.py shots0.json shots5.json [--task kjv-book]`. It prints, per
model and shot count, foundry's acc and acc_norm (by UTF-8 bytes) against lm-eval's acc, acc_bytes and
acc_norm (by characters), and the largest absolute difference; docs/EVALUATION.md quotes its output.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="foundry eval --out files run with --tasks and --lm-eval")
    p.add_argument("--task", default="kjv-book", help="task name on both sides")
    args = p.parse_args()
    print(f"{'model':<10} {'shots':>5} {'n':>4} | {'foundry acc':>11} {'lm-eval acc':>11} | "
          f"{'foundry norm':>12} {'lm acc_bytes':>12} {'lm acc_norm':>11}")
    worst = 0.0
    for path in args.results:
        results = json.load(open(path))
        print(f"# {path}: lm-eval {results['lm_eval']['version']}, code {results['code_version'][:12]}")
        for m in results["models"]:
            own, lm = m["tasks"][args.task], m["lm_eval"][args.task]
            assert own["n"] == lm["n"] and own["shots"] == lm["shots"], (own, lm)
            pairs = [(own["acc"], lm["acc"]), (own["acc_norm"], lm["acc_bytes"]),
                     (own["acc_stderr"], lm["acc_stderr"])]
            worst = max([worst] + [abs(a - b) for a, b in pairs])
            print(f"{m['name']:<10} {own['shots']:>5} {own['n']:>4} | {own['acc']:>11.4f} {lm['acc']:>11.4f} | "
                  f"{own['acc_norm']:>12.4f} {lm['acc_bytes']:>12.4f} {lm['acc_norm']:>11.4f}")
    print(f"largest |foundry - lm-eval| over acc, acc_norm/acc_bytes and their stderr: {worst:.2e}")


if __name__ == "__main__":
    main()
