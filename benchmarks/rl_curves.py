"""Curves of a `foundry rl` run: held-out pass@1 / pass@G, training solve rate, KL to the reference, share of
zero-advantage groups, mean completion length, and the time per step split.

    python benchmarks/rl_curves.py RUN/rl/metrics.jsonl --out benchmarks/results/rl/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def smooth(values: list[float], k: int = 20) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "heldout/pass@1" in r]
    steps = [r for r in records if "solved" in r]
    G = next(k.split("@")[1] for k in evals[0] if k.startswith("heldout/pass@") and k != "heldout/pass@1")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = [r["step"] for r in steps]
    ax = axes[0][0]
    ax.plot([r["step"] for r in evals], [r["heldout/pass@1"] for r in evals], "o-", label="pass@1 (greedy)")
    ax.plot([r["step"] for r in evals], [r[f"heldout/pass@{G}"] for r in evals], "s-", label=f"pass@{G}")
    ax.set_title("held-out accuracy"), ax.legend(), ax.set_ylim(0, 1)
    for ax, key, title in ((axes[0][1], "solved", "training: share solved (T=1, smoothed)"),
                           (axes[0][2], "kl", "KL to reference per token (smoothed)"),
                           (axes[1][0], "zero_adv_groups", "share of zero-advantage groups (smoothed)"),
                           (axes[1][1], "completion_len", "mean completion length, tokens (smoothed)")):
        ax.plot(x, smooth([r[key] for r in steps])), ax.set_title(title)
    ax = axes[1][2]
    for key in ("time/generation_s", "time/scoring_s", "time/reference_s", "time/optimise_s"):
        ax.plot(x, smooth([r[key] for r in steps]), label=key.split("/")[1])
    ax.set_title("seconds per step (smoothed)"), ax.legend()
    for row in axes:
        for ax in row:
            ax.set_xlabel("step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
