"""Recipe ablations: each candidate change against the pretraining recipe, at equal tokens, on dev.

    python benchmarks/recipe_ablations.py --steps 1000 --seeds 1 2 [--variants baseline muon ...] [--threads 1]

Every variant trains `recipes/pretrain-kjv.yaml` as it was before Muon and QK-norm became its default
(`BASE`: the 1.1M model, AdamW, batch 4 x 256, lr 3e-3, WSD) with one change, for the same number of
optimiser steps (so the same tokens and the same schedule), once per seed, on the train part of
`benchmarks/pretrain_quality.py`'s cut of the King James text, and is scored by the same function
(`record.bits_per_byte`) on the DEV part, never the reported test part. Equal steps make the quality
comparison independent of the machine's load; the cost of a change is its tokens/s, recorded per run
with the load average beside it (on a shared machine only a ratio from the same minutes means much).

Writes `benchmarks/results/NAME.json` after every run, so a long sweep cut short keeps what it measured.
`--table FILE...` prints the markdown table of docs/RECIPES.md from one or more such files (seeds run as
separate sweeps are merged).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pretrain_quality import REPO, build_data
from record import RESULTS, bits_per_byte, load_average, machine, write_result

# Every variant starts from the recipe the ablations were run against (before 2026-12-01: AdamW on a plain
# Llama), so its committed results stay reproducible after the recipe adopted Muon and QK-norm.
BASE = ["train.optimizer=adamw", "model.qk_norm=false"]
# name -> (recipe overrides on BASE, what the change is)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "the recipe before 2026-12-01: AdamW, SwiGLU, no QK-norm, tied embeddings"),
    "muon": (["train.optimizer=muon"], "Muon for attention/MLP matrices (Jordan et al. 2024), AdamW for the rest"),
    "qk_norm": (["model.qk_norm=true"], "RMSNorm on queries and keys per head (Qwen3, OLMo 2)"),
    "relu2": (["model.mlp_act=relu2"], "squared ReLU in the MLP gate (modded-nanogpt)"),
    "untied": (["model.tie_embeddings=false"], "separate input and output embeddings"),
    "lr6e-3": (["train.lr=6e-3"], "twice the learning rate"),
    "qk_norm+lr6e-3": (["model.qk_norm=true", "train.lr=6e-3"], "QK-norm, which should tolerate a higher lr"),
    "muon+qk_norm": (["train.optimizer=muon", "model.qk_norm=true"], "Muon and QK-norm together"),
    "muon+qk_norm+lr6e-3": (["train.optimizer=muon", "model.qk_norm=true", "train.lr=6e-3"],
                            "Muon and QK-norm at twice the lr"),
}


def run_one(name: str, seed: int, data: dict, args) -> dict:
    overrides, _ = VARIANTS[name]
    out = args.work / "ablations" / f"{name}-seed{seed}"
    cmd = [sys.executable, "-m", "foundry.cli", "pretrain", "--config", str(REPO / "recipes/pretrain-kjv.yaml"),
           f"out_dir={out}", f"data={data['dataset']}", f"tokenizer={data['tokenizer']}", "train.max_seconds=null",
           f"train.max_steps={args.steps}", f"train.seed={seed}", f"train.threads={args.threads}",
           f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}", "train.progress=false",
           "overwrite=true", *BASE, *overrides]
    load_start, t0 = load_average(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} seed {seed} failed:\n{proc.stderr[-2000:]}")
    from foundry.checkpoints import latest_checkpoint, load_model

    record = json.loads((out / "run.json").read_text())
    run, cfg = record["results"], record["config"]["train"]
    model, tok = load_model(latest_checkpoint(out))
    text = data["dev"].read_text(encoding="utf-8")
    scored = bits_per_byte(lambda x: model(x), tok.encode(text), len(text.encode("utf-8")), cfg["block_size"])
    tokens = run["step"] * cfg["micro_batch_size"] * cfg["grad_accum_steps"] * cfg["block_size"]
    return {"variant": name, "seed": seed, "overrides": overrides, "params": model.num_params(),
            "steps": run["step"], "tokens": tokens, "train_seconds": run.get("train_seconds"),
            "tokens_per_s": round(tokens / run["train_seconds"], 1) if run.get("train_seconds") else None,
            "dev_bpb": scored["bpb"], "load_average_start": load_start, "load_average_end": load_average(),
            "wall_seconds": round(time.time() - t0, 1)}


def summarise(runs: list[dict]) -> list[dict]:
    """Per variant: mean dev bpb over seeds, its change against the baseline (same seeds), tokens/s."""
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r for r in by_variant.get("baseline", [])}
    rows = []
    for name, rs in by_variant.items():
        deltas = [r["dev_bpb"] - base[r["seed"]]["dev_bpb"] for r in rs if r["seed"] in base]
        speed = [r["tokens_per_s"] / base[r["seed"]]["tokens_per_s"] for r in rs
                 if r["seed"] in base and r["tokens_per_s"] and base[r["seed"]]["tokens_per_s"]]
        rows.append({"variant": name, "what": VARIANTS[name][1], "seeds": [r["seed"] for r in rs],
                     "dev_bpb": [round(r["dev_bpb"], 4) for r in rs],
                     "mean_dev_bpb": round(statistics.fmean(r["dev_bpb"] for r in rs), 4),
                     "delta_vs_baseline": [round(d, 4) for d in deltas],
                     "tokens_per_s_vs_baseline": [round(s, 3) for s in speed]})
    return rows


def markdown_table(runs: list[dict]) -> str:
    lines = ["| variant | change | seeds | dev bpb per seed | mean | change vs baseline, per seed | tokens/s vs baseline |",
             "|---|---|---|---|---|---|---|"]
    for row in summarise(runs):
        lines.append(f"| {row['variant']} | {row['what']} | {', '.join(map(str, row['seeds']))} | "
                     f"{', '.join(f'{v:.4f}' for v in row['dev_bpb'])} | {row['mean_dev_bpb']:.4f} | "
                     f"{', '.join(f'{d:+.4f}' for d in row['delta_vs_baseline'])} | "
                     f"{', '.join(f'{x:.2f}x' for x in row['tokens_per_s_vs_baseline'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps per run (4 x 256 tokens each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=Path("/tmp/foundry-quality"))
    parser.add_argument("--name", default="recipe_ablations")
    parser.add_argument("--table", nargs="+", type=Path, metavar="FILE", help="print the table of these results")
    args = parser.parse_args()
    if args.table:
        runs = [r for f in args.table for r in json.loads(f.read_text())["runs"]]
        print(markdown_table(sorted(runs, key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    info, data = machine(), build_data(args.work, args.vocab_size)
    previous = RESULTS / f"{args.name}.json"  # a sweep cut short resumes: finished (variant, seed) pairs stay
    runs = json.loads(previous.read_text())["runs"] if previous.is_file() else []
    done = {(r["variant"], r["seed"]) for r in runs if r["steps"] == args.steps}
    runs = [r for r in runs if r["steps"] == args.steps]
    command = "python benchmarks/recipe_ablations.py " + " ".join(sys.argv[1:])
    for seed in args.seeds:  # seed-major: an early stop still has every variant at the first seed
        for name in args.variants:
            if (name, seed) in done:
                continue
            runs.append(run_one(name, seed, data, args))
            print(json.dumps(runs[-1]), flush=True)
            write_result(args.name, info, command, {"steps": args.steps, "scored_part": "dev",
                                                    "summary": summarise(runs), "runs": runs})
    print(f"\ndev bits per byte after {args.steps} steps (lower is better), change against the baseline per seed:")
    for row in summarise(runs):
        print(f"  {row['variant']:<16} {row['mean_dev_bpb']:.4f}  delta {row['delta_vs_baseline']}  "
              f"tokens/s x{row['tokens_per_s_vs_baseline']}")


if __name__ == "__main__":
    main()
