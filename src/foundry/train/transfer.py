"""`foundry transfer`: the label-efficiency curve, the measured case for pretraining.

    foundry transfer --config RECIPE.yaml   (recipes/encoder.yaml runs it as a stage)

For every N in `sizes` (default 16, 32, 64, ... up to the training set) and every seed, `foundry finetune`
runs from each starting point on a seeded, class-balanced subset of N labelled examples and is scored on the
same test set:
- `pretrained`: the pretrained checkpoint;
- `random`: the same architecture and tokenizer with fresh weights (what pretraining is worth);
- `continued`, where given: a continually pretrained checkpoint.
Every run is one `run_finetune` stage on the one loop (its own run directory under `runs/`, checkpoints deleted
once scored unless `keep_checkpoints`). A finished run is not repeated: rerunning the command after an
interruption continues the curve.

Out: `transfer.json` (every run and the summary), `transfer.md` (accuracy mean +- sd per N and start, and the
labels each start needs to reach `target_accuracy`) and `transfer.png` (accuracy against N on a log axis, the
seeds' spread shaded).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError
from foundry.train.finetune import FinetuneTrainConfig
from foundry.train.stage import LoRASpec


class TransferConfig(StrictModel):
    """The curve: which starting points, which data, which sizes and seeds."""

    out_dir: str = Field(description="directory for transfer.json, transfer.md, transfer.png and runs/")
    overwrite: bool = Field(False, description="start over in an out_dir that already holds a curve")
    pretrained: str = Field(description="the pretrained checkpoint (or run directory); `random` uses its "
                            "architecture and tokenizer with fresh weights")
    continued: str | None = Field(None, description="a continually pretrained checkpoint, fine-tuned the same way")
    data: str = Field(description="labelled training pool: JSONL {text, label} or CSV")
    test_data: str = Field(description="labelled test set every run is scored on")
    text_field: str = Field("text", description="the text's field or column")
    label_field: str = Field("label", description="the label's field or column")
    sizes: list[int] | None = Field(None, description="training-set sizes N (default 16, 32, 64, ... up to the pool)")
    seeds: list[int] = Field([0, 1, 2], description="one run per seed and N: the subset, head and order differ")
    target_accuracy: float = Field(0.5, gt=0, le=1, description="report the fewest labels that reach this mean "
                                   "test accuracy")
    epochs: float = Field(10.0, gt=0, description="passes over the N examples (bounded by min_steps and "
                          "train.max_steps)")
    min_steps: int = Field(30, gt=0, description="at least this many optimiser steps per run")
    pooling: str | None = Field(None, description="as finetune's pooling (default: first for an encoder, last for a "
                                "decoder)")
    lora: LoRASpec | None = Field(None, description="fine-tune with LoRA instead of all weights")
    keep_checkpoints: bool = Field(False, description="keep every run's checkpoints (default: deleted once scored)")
    train: FinetuneTrainConfig = Field(FinetuneTrainConfig(), description="each run's loop settings (max_steps "
                                       "caps the steps; seed is replaced by each seed)")


def default_sizes(pool: int) -> list[int]:
    sizes, n = [], 16
    while n < pool:
        sizes.append(n)
        n *= 2
    return sizes + [pool]


def run_steps(n: int, cfg: TransferConfig) -> int:
    per_epoch = math.ceil(n / cfg.train.micro_batch_size)
    return max(cfg.min_steps, min(cfg.train.max_steps, math.ceil(cfg.epochs * per_epoch)))


def labels_needed(means: dict[int, float], target: float) -> int | None:
    """The smallest N whose mean accuracy reaches `target` (None if none does)."""
    return next((n for n in sorted(means) if means[n] >= target), None)


def summarise(rows: list[dict], target: float) -> dict:
    """{start: {"by_n": {N: {mean, sd, min, max, runs}}, "labels_needed": N | None}}."""
    out: dict[str, dict] = {}
    for start in dict.fromkeys(r["start"] for r in rows):
        by_n = {}
        for n in sorted({r["n"] for r in rows if r["start"] == start}):
            accs = [r["acc"] for r in rows if r["start"] == start and r["n"] == n]
            by_n[n] = {"mean": statistics.fmean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "min": min(accs), "max": max(accs), "runs": len(accs),
                       "macro_f1": statistics.fmean(r["macro_f1"] for r in rows if r["start"] == start and r["n"] == n)}
        out[start] = {"by_n": by_n, "labels_needed": labels_needed({n: v["mean"] for n, v in by_n.items()}, target)}
    return out


def format_markdown(summary: dict, target: float, chance: float, title: str) -> str:
    starts = list(summary)
    sizes = sorted({n for s in summary.values() for n in s["by_n"]})
    lines = [f"# {title}", "", f"Test accuracy, mean ± sd over seeds (chance {chance:.3f}).", "",
             "| N | " + " | ".join(starts) + " |", "|---|" + "---|" * len(starts)]
    for n in sizes:
        cells = []
        for s in starts:
            v = summary[s]["by_n"].get(n)
            cells.append(f"{v['mean']:.3f} ± {v['sd']:.3f}" if v else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Labels needed to reach {target:.2f} mean test accuracy:", ""]
    for s in starts:
        needed = summary[s]["labels_needed"]
        lines.append(f"- {s}: {needed if needed is not None else f'not reached with {sizes[-1]}'}")
    return "\n".join(lines) + "\n"


def plot_curve(summary: dict, target: float, chance: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for start, s in summary.items():
        ns = sorted(s["by_n"])
        mean = [s["by_n"][n]["mean"] for n in ns]
        ax.plot(ns, mean, marker="o", label=start)
        ax.fill_between(ns, [s["by_n"][n]["min"] for n in ns], [s["by_n"][n]["max"] for n in ns], alpha=0.2)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled training examples N (log scale)")
    ax.set_ylabel("test accuracy (band: min-max over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def per_item_results(rows: list[dict], test_data: str) -> dict:
    """Every fine-tuning run's right/wrong per test example, in the layout of `foundry eval` results (a model
    per run, named START_nN_sSEED, one task `test`), so a recipe's Findings can compare starting points item
    by item: `better: [pretrained_n1024_s*]`, `than: [random_n1024_s*]` averages the seeds per example. Its
    own kind: the report shows the curve (transfer.md), not 3 x sizes x seeds evaluation rows."""
    return {"kind": "foundry.transfer", "source": "foundry transfer", "data": test_data,
            "models": [{"name": f"{r['start']}_n{r['n']}_s{r['seed']}",
                        "tasks": {"test": {"kind": "classification", "acc": r["acc"],
                                           "scores": {"acc": r["correct"]}}}}
                       for r in rows if "correct" in r]}


def run_transfer(cfg: TransferConfig, resume: bool = False) -> dict:
    from foundry.data.labelled import read_labelled
    from foundry.train.finetune import FinetuneConfig, run_finetune
    from foundry.utils.io import atomic_write_text

    out = Path(cfg.out_dir)
    results_file = out / "transfer.json"
    if out.exists() and any(out.iterdir()) and not (resume or cfg.overwrite):
        raise ConfigError(f"{out}: already holds a curve; pass --resume to finish it or overwrite=true to start over")
    if cfg.overwrite and not resume and out.exists():
        shutil.rmtree(out)
    pool = read_labelled(cfg.data, cfg.text_field, cfg.label_field)
    labels = sorted({e.label for e in pool})
    sizes = cfg.sizes or default_sizes(len(pool))
    too_big = [n for n in sizes if n > len(pool)]
    if too_big:
        raise ConfigError(f"sizes: {too_big} exceed the {len(pool)} examples of {cfg.data}")
    starts = {"pretrained": (cfg.pretrained, "pretrained"), "random": (cfg.pretrained, "random")}
    if cfg.continued:
        starts = {"pretrained": starts["pretrained"], "continued": (cfg.continued, "pretrained"),
                  "random": starts["random"]}
    out.mkdir(parents=True, exist_ok=True)
    done = json.loads(results_file.read_text())["runs"] if results_file.is_file() else []
    rows = list(done)
    finished = {(r["start"], r["n"], r["seed"]) for r in rows}
    for n in sizes:
        for seed in cfg.seeds:
            for start, (init, weights) in starts.items():
                if (start, n, seed) in finished:
                    continue
                run_dir = out / "runs" / f"{start}-n{n}-s{seed}"
                steps = run_steps(n, cfg)
                train = cfg.train.model_copy(update={"seed": seed, "max_steps": steps, "eval_every": steps,
                                                     "checkpoint_every": steps, "keep_last": 1, "progress": False})
                ft = FinetuneConfig(out_dir=str(run_dir), overwrite=True, init=init, data=cfg.data,
                                    test_data=cfg.test_data, text_field=cfg.text_field, label_field=cfg.label_field,
                                    labels=labels, pooling=cfg.pooling, lora=cfg.lora, init_weights=weights,
                                    max_train_examples=n, subset_seed=seed, train=train)
                result = run_finetune(ft)
                correct = json.loads((run_dir / "classification.json").read_text())["correct"]
                rows.append({"start": start, "n": n, "seed": seed, "steps": steps, "acc": result["test/acc"],
                             "macro_f1": result["test/macro_f1"], "train_loss": result.get("loss"),
                             "correct": correct})
                if not cfg.keep_checkpoints:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                atomic_write_text(results_file, json.dumps({"runs": rows}, indent=2) + "\n")
    chance = 1 / len(labels)
    summary = summarise(rows, cfg.target_accuracy)
    title = f"transfer: {Path(cfg.data).parent.name or cfg.data} ({len(labels)} classes, {len(cfg.seeds)} seeds)"
    record = {"runs": rows, "summary": {s: {"labels_needed": v["labels_needed"],
                                            "by_n": {str(n): m for n, m in v["by_n"].items()}}
                                        for s, v in summary.items()},
              "target_accuracy": cfg.target_accuracy, "chance": chance, "labels": labels, "sizes": sizes,
              "seeds": cfg.seeds, "pretrained": cfg.pretrained, "continued": cfg.continued,
              "data": cfg.data, "test_data": cfg.test_data}
    atomic_write_text(results_file, json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "per_item.json", json.dumps(per_item_results(rows, cfg.test_data)) + "\n")
    table = format_markdown(summary, cfg.target_accuracy, chance, title)
    atomic_write_text(out / "transfer.md", table)
    plot_curve(summary, cfg.target_accuracy, chance, out / "transfer.png", title)
    print(table + f"-> {out / 'transfer.png'}", flush=True)
    return record
