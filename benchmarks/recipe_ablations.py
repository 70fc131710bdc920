"""Recipe ablations: each candidate change against its reference recipe, at equal steps or FLOPs, on dev.

    python benchmarks/recipe_ablations.py --steps 1000 --seeds 1 2 [--variants baseline muon ...] [--threads 1]

Every variant trains `recipes/pretrain-kjv.yaml` as it was before Muon and QK-norm became its default
(`BASE`: the 1.1M model, AdamW, batch 4 x 256, lr 3e-3, WSD) with its overrides, once per seed, on the train
part of `benchmarks/pretrain_quality.py`'s cut of the King James text, and is scored by the same function
(`record.bits_per_byte`) on the DEV part, never the reported test part. A variant is compared, seed by seed,
with the variant it names as `against` (the old baseline, or the new default for the `new+` variants), for
the same number of optimiser steps (so the same tokens and schedule) or, for a change of batch or width, as
many steps as spend the reference's training FLOPs. Equal steps make the quality comparison independent of
the machine's load; the cost of a change is its tokens/s, recorded per run with the load average beside it
(on a shared machine only a ratio from the same minutes means much).

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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from pretrain_quality import REPO, build_data
from record import RESULTS, bits_per_byte, load_average, machine, write_result

# Every variant starts from the recipe the ablations were run against (before 2026-12-01: AdamW on a plain
# Llama), so its committed results stay reproducible after the recipe adopted Muon and QK-norm.
BASE = ["train.optimizer=adamw", "model.qk_norm=false"]


@dataclass(frozen=True)
class Variant:
    overrides: list[str]  # recipe overrides on BASE
    what: str
    against: str = "baseline"  # the variant it is compared with, seed by seed
    equal: str = "steps"  # steps: as many optimiser steps as the reference; flops: as many training FLOPs


NEW = ["train.optimizer=muon", "model.qk_norm=true"]  # the default recipe since 2026-12-01
VARIANTS: dict[str, Variant] = {
    "baseline": Variant([], "the recipe before 2026-12-01: AdamW, SwiGLU, no QK-norm, tied embeddings"),
    "muon": Variant(["train.optimizer=muon"], "Muon for attention/MLP matrices (Jordan et al. 2024), AdamW for the rest"),
    "qk_norm": Variant(["model.qk_norm=true"], "RMSNorm on queries and keys per head (Qwen3, OLMo 2)"),
    "relu2": Variant(["model.mlp_act=relu2"], "squared ReLU in the MLP gate (modded-nanogpt)"),
    "untied": Variant(["model.tie_embeddings=false"], "separate input and output embeddings"),
    "lr6e-3": Variant(["train.lr=6e-3"], "twice the learning rate"),
    "qk_norm+lr6e-3": Variant(["model.qk_norm=true", "train.lr=6e-3"], "QK-norm, which should tolerate a higher lr"),
    "muon+qk_norm": Variant(NEW, "Muon and QK-norm together"),
    "muon+qk_norm+lr6e-3": Variant([*NEW, "train.lr=6e-3"], "Muon and QK-norm at twice the lr"),
    # Changes to the new default, each against it.
    "new+ns3": Variant([*NEW, "train.muon_ns_steps=3"], "3 Newton-Schulz iterations instead of 5",
                       against="muon+qk_norm"),
    "new+cosine": Variant([*NEW, "train.schedule=cosine"], "cosine decay to 0 instead of WSD",
                          against="muon+qk_norm"),
    "new+batch8": Variant([*NEW, "train.micro_batch_size=8"], "8 x 256 tokens per step at equal FLOPs (half the steps)",
                          against="muon+qk_norm", equal="flops"),
    "new+width96": Variant([*NEW, "model.n_embd=96", "model.n_head=3", "model.n_kv_head=3"],
                           "width 96 (3 heads of 32) at equal FLOPs (more steps)", against="muon+qk_norm",
                           equal="flops"),
    "new+width192": Variant([*NEW, "model.n_embd=192", "model.n_head=6", "model.n_kv_head=6"],
                            "width 192 (6 heads of 32) at equal FLOPs (fewer steps)", against="muon+qk_norm",
                            equal="flops"),
}


def flops_per_step(overrides: list[str], vocab_size: int) -> float:
    """Training FLOPs of one optimiser step of the recipe with these overrides (`LlamaConfig.flops_per_token`)."""
    from foundry.config import load_config
    from foundry.train.pretrain import PretrainConfig, build_model_config

    cfg = load_config(PretrainConfig, REPO / "recipes/pretrain-kjv.yaml", [*BASE, *overrides])
    model = build_model_config(cfg.model, SimpleNamespace(vocab_size=vocab_size), cfg.train.block_size)
    tokens = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.train.block_size
    return model.flops_per_token(cfg.train.block_size) * tokens


def steps_for(name: str, steps: int, vocab_size: int) -> int:
    """Optimiser steps of a variant: the sweep's `steps`, or as many as spend its reference's FLOPs."""
    variant = VARIANTS[name]
    if variant.equal == "steps":
        return steps
    reference = flops_per_step(VARIANTS[variant.against].overrides, vocab_size)
    return round(steps * reference / flops_per_step(variant.overrides, vocab_size))


def run_one(name: str, seed: int, data: dict, args) -> dict:
    overrides, steps = VARIANTS[name].overrides, steps_for(name, args.steps, args.vocab_size)
    out = args.work / "ablations" / f"{name}-seed{seed}"
    cmd = [sys.executable, "-m", "foundry.cli", "pretrain", "--config", str(REPO / "recipes/pretrain-kjv.yaml"),
           f"out_dir={out}", f"data={data['dataset']}", f"tokenizer={data['tokenizer']}", "train.max_seconds=null",
           f"train.max_steps={steps}", f"train.seed={seed}", f"train.threads={args.threads}",
           f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.progress=false",
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
    """Per variant: mean dev bpb over seeds, its change against its reference (same seeds), tokens/s."""
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    rows = []
    for name, rs in by_variant.items():
        against = VARIANTS[name].against
        ref = {r["seed"]: r for r in by_variant.get(against, [])}
        deltas = [r["dev_bpb"] - ref[r["seed"]]["dev_bpb"] for r in rs if r["seed"] in ref]
        speed = [r["tokens_per_s"] / ref[r["seed"]]["tokens_per_s"] for r in rs
                 if r["seed"] in ref and r["tokens_per_s"] and ref[r["seed"]]["tokens_per_s"]]
        rows.append({"variant": name, "what": VARIANTS[name].what, "against": against,
                     "seeds": [r["seed"] for r in rs], "steps": sorted({r["steps"] for r in rs}),
                     "dev_bpb": [round(r["dev_bpb"], 4) for r in rs],
                     "mean_dev_bpb": round(statistics.fmean(r["dev_bpb"] for r in rs), 4),
                     "delta_vs_reference": [round(d, 4) for d in deltas],
                     "tokens_per_s_vs_reference": [round(s, 3) for s in speed]})
    return rows


def markdown_table(runs: list[dict]) -> str:
    lines = ["| variant | change | against | steps | seeds | dev bpb per seed | mean | change vs reference, per seed "
             "| tokens/s vs reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summarise(runs):
        lines.append(f"| {row['variant']} | {row['what']} | {row['against']} | "
                     f"{', '.join(map(str, row['steps']))} | {', '.join(map(str, row['seeds']))} | "
                     f"{', '.join(f'{v:.4f}' for v in row['dev_bpb'])} | {row['mean_dev_bpb']:.4f} | "
                     f"{', '.join(f'{d:+.4f}' for d in row['delta_vs_reference']) or '-'} | "
                     f"{', '.join(f'{x:.2f}x' for x in row['tokens_per_s_vs_reference']) or '-'} |")
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
    runs = [r for r in runs if r["steps"] == steps_for(r["variant"], args.steps, args.vocab_size)]
    done = {(r["variant"], r["seed"]) for r in runs}
    command = "python benchmarks/recipe_ablations.py " + " ".join(sys.argv[1:])
    for seed in args.seeds:  # seed-major: an early stop still has every variant at the first seed
        for name in args.variants:
            if (name, seed) in done:
                continue
            runs.append(run_one(name, seed, data, args))
            print(json.dumps(runs[-1]), flush=True)
            write_result(args.name, info, command, {"steps": args.steps, "scored_part": "dev",
                                                    "summary": summarise(runs), "runs": runs})
    print(f"\ndev bits per byte after {args.steps} steps (lower is better), change against the reference per seed:")
    for row in summarise(runs):
        print(f"  {row['variant']:<20} {row['mean_dev_bpb']:.4f}  vs {row['against']}: {row['delta_vs_reference']}  "
              f"tokens/s x{row['tokens_per_s_vs_reference']}")


if __name__ == "__main__":
    main()
