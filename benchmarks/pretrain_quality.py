"""Pretraining quality per compute: bits per byte on held-out text after a fixed wall-clock budget.

The King James text (the bundled books in canonical order) is cut into three parts at line boundaries:
train (the first 98%), dev (the next 1%) and test (the last 1%, the reported split). Every contender
trains on the same train part for the same `--seconds`, one after another on the same machine, and is
scored by the same function (`record.bits_per_byte`: summed NLL of every token of the scored text over
its UTF-8 bytes) on the final weights:

- foundry: `foundry pretrain --config recipes/pretrain-kjv.yaml` (its in-loop validation and best
  checkpoint use the dev part, never the test part);
- hf-foundry-recipe: HF tokenizers + `transformers` + `Trainer` with foundry's exact recipe
  (`benchmarks/hf_baseline_pretrain.py --recipe foundry`: the same tokenizer, shape, batch, lr, betas,
  warm-up, weight decay and WSD schedule, its step count calibrated to end inside the budget; Muon and
  QK-norm since 2026-12-01, the latter as `Qwen3ForCausalLM`);
- hf-foundry-adamw: the same with the recipe before that (AdamW, `LlamaForCausalLM`): the reference of
  the quality-per-compute target (1.397 bits per byte when it was foundry's recipe);
- hf-defaults: the same stack with Trainer's default optimiser and schedule on a ~3.4M model.

`--together` runs the contenders at the same time, each on `--threads` threads: on a machine shared with
other work, contenders run one after another meet different loads, while run together they meet the same
load (each one's CPU seconds, from wait4, are recorded to show the compute it really got).

`--score dev` scores the dev part instead: recipe choices (lr, shape) are checked there, with short
budgets, never on the reported split. Writes `benchmarks/results/NAME.json`.

Dev-split check of the recipe's lr (2026-12-01, 150 s each, the three run together, 1 thread each, on a
2-core machine at load average 16-32; `results/pretrain_quality_dev_lr*.json`): lr 1.5e-3 2.248 bpb,
3e-3 2.189, 6e-3 2.200 (66-67 steps each), so the recipe's 3e-3 stands. The shape was not re-checked.

    python benchmarks/pretrain_quality.py --seconds 300 [--together --threads 1]   # the reported figures
    python benchmarks/pretrain_quality.py --score dev --seconds 90 --contenders foundry \
        --override train.lr=6e-3 --name pretrain_quality_dev_lr6e-3          # a dev-split probe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from record import bits_per_byte, load_average, machine, write_result

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("foundry", "hf-foundry-recipe", "hf-foundry-adamw", "hf-defaults")
HF_RECIPE = {"hf-foundry-recipe": "foundry", "hf-foundry-adamw": "foundry-adamw", "hf-defaults": "defaults"}


def split_text(text: str, dev: float = 0.01, test: float = 0.01) -> dict[str, str]:
    """train / dev / test at line boundaries: the last `test` fraction, the `dev` fraction before it."""
    def line_cut(fraction: float) -> int:
        return text.rfind("\n", 0, int(len(text) * fraction)) + 1

    dev_cut, test_cut = line_cut(1 - test - dev), line_cut(1 - test)
    return {"train": text[:dev_cut], "dev": text[dev_cut:test_cut], "test": text[test_cut:]}


def build_data(work: Path, vocab_size: int) -> dict[str, Path]:
    """Text files for each part, and foundry's dataset (train, val = dev) and tokenizer trained on train."""
    from foundry.commands.data import tokenize_main
    from foundry.data.tokenizer import Tokenizer

    books = sorted((REPO / "data/general/kjv").glob("*.txt"))
    parts = split_text("".join(p.read_text(encoding="utf-8") for p in books))
    paths = {name: work / f"{name}.txt" for name in parts}
    dataset, tok_dir = work / "dataset", work / "tokenizer"
    if all(paths[n].is_file() and paths[n].read_text(encoding="utf-8") == t for n, t in parts.items()) and \
            (dataset / "tokens").is_dir() and (tok_dir / "tokenizer.json").is_file():
        return {**paths, "dataset": dataset, "tokenizer": tok_dir}  # built by an earlier run in this --work
    for name, text in parts.items():
        paths[name].write_text(text, encoding="utf-8")
    dataset.mkdir(parents=True, exist_ok=True)
    docs = {split: [d for d in parts[part].split("\f") if d.strip()] for split, part in (("train", "train"), ("val", "dev"))}
    for split, texts in docs.items():
        with open(dataset / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(texts):
                f.write(json.dumps({"id": f"{split}{i}", "source": "kjv", "text": d}) + "\n")
    (dataset / "manifest.json").write_text("{}")
    Tokenizer.train(docs["train"], vocab_size=vocab_size, min_frequency=2).save(tok_dir)
    tokenize_main([str(dataset), "--tokenizer", str(tok_dir), "--no-progress", "--overwrite"])
    return {**paths, "dataset": dataset, "tokenizer": tok_dir}


def foundry_command(data: dict[str, Path], args) -> list[str]:
    return [sys.executable, "-m", "foundry.cli", "pretrain", "--config", str(REPO / "recipes/pretrain-kjv.yaml"),
            f"out_dir={args.work / args.name / 'foundry-run'}", f"data={data['dataset']}", f"tokenizer={data['tokenizer']}",
            f"train.max_seconds={args.seconds}", f"train.threads={args.threads}", "train.progress=false",
            "overwrite=true", *args.override]


def foundry_result(score: Path, args) -> dict:
    """Steps, tokens and final lr from the run's record; bits per byte of its final weights."""
    from foundry.checkpoints import latest_checkpoint, load_model
    from foundry.utils.io import read_metrics

    out = args.work / args.name / "foundry-run"
    record = json.loads((out / "run.json").read_text())
    run, cfg = record["results"], record["config"]["train"]
    steps_logged = [m for m in read_metrics(out) if "lr" in m]
    model, tok = load_model(latest_checkpoint(out))  # the final weights, as for the peers
    text = score.read_text(encoding="utf-8")
    scored = bits_per_byte(lambda x: model(x), tok.encode(text), len(text.encode("utf-8")), cfg["block_size"])
    batch = cfg["micro_batch_size"] * cfg["grad_accum_steps"]
    return {"system": "foundry (recipes/pretrain-kjv.yaml)", "params": model.num_params(),
            "vocab_size": model.config.vocab_size, "steps": run["step"], "stopped_by": run.get("stopped_by"),
            "train_seconds": run.get("train_seconds"), "tokens": run["step"] * batch * cfg["block_size"],
            "final_lr": steps_logged[-1]["lr"] if steps_logged else None, "last_logged_lr_step":
            steps_logged[-1]["step"] if steps_logged else None, "batch": batch, "block": cfg["block_size"],
            "lr": cfg["lr"], "optimizer": cfg.get("optimizer", "adamw"),
            "qk_norm": bool(record["config"]["model"].get("qk_norm")), "overrides": args.override, "loop_val_bpb_on_dev": run.get("val/bpb"),
            "held_out_bpb": scored["bpb"], "scored_bytes": scored["bytes"]}


def hf_command(recipe: str, data: dict[str, Path], score: Path, args) -> list[str]:
    cmd = [sys.executable, str(REPO / "benchmarks/hf_baseline_pretrain.py"), "--train", str(data["train"]),
           "--score", str(score), "--recipe", recipe, "--seconds", str(args.seconds), "--threads", str(args.threads),
           "--out", str(args.work / args.name / f"hf-{recipe}")]
    return cmd + (["--tokenizer", str(data["tokenizer"] / "tokenizer.json")] if recipe.startswith("foundry") else [])


def start(name: str, data: dict[str, Path], score: Path, args, extra: tuple[str, ...] = ()) -> dict:
    cmd = (foundry_command(data, args) if name == "foundry" else
           [*hf_command(HF_RECIPE[name], data, score, args), *extra])
    log = open(args.work / args.name / f"{name}.log", "w")
    return {"name": name, "log": log, "load_start": load_average(), "t0": time.time(),
            "proc": subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)}


def start_together(names: list[str], data: dict[str, Path], score: Path, args) -> list[dict]:
    """The peers tokenise and probe first, then all start training within seconds of each other.

    foundry's clock starts when its process has loaded (seconds); the peers' set-up (tokenising, the
    step-time probe) takes minutes on a loaded machine, so each peer waits at a barrier until all are
    ready, and foundry is launched when they are released.
    """
    run_dir = args.work / args.name
    go = run_dir / "go"
    go.unlink(missing_ok=True)
    jobs = []
    for name in names:
        if name != "foundry":
            ready = run_dir / f"{name}.ready"
            ready.unlink(missing_ok=True)
            jobs.append(start(name, data, score, args, ("--ready", str(ready), "--go", str(go))))
            jobs[-1]["ready"] = ready
    while not all(job["ready"].exists() for job in jobs):
        if any(job["proc"].poll() is not None for job in jobs):
            break  # a peer failed in set-up; finish() reports it
        time.sleep(0.2)
    go.touch()
    if "foundry" in names:
        jobs.insert(0, start("foundry", data, score, args))
    released, load = round(time.time(), 1), load_average()
    for job in jobs:
        job["go_unix"], job["load_start"] = released, load
    return jobs


def finish(job: dict, score: Path, args) -> dict:
    """Wait for one contender; its own CPU seconds (from wait4) show how much compute it really got."""
    _, status, usage = os.wait4(job["proc"].pid, 0)
    job["log"].close()
    wall, load_end = round(time.time() - job["t0"], 1), load_average()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{job['name']} failed; see {job['log'].name}")
    if job["name"] == "foundry":
        result = foundry_result(score, args)
    else:
        result = json.loads(Path(job["log"].name).read_text().strip().splitlines()[-1])
    result.update(contender=job["name"], wall_seconds=wall, released_unix=job.get("go_unix"), process_cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1),
                  load_average_start=job["load_start"], load_average_end=load_end)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--score", choices=["test", "dev"], default="test",
                        help="which held-out part to report (tune on dev, report test)")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--override", nargs="*", default=[], help="dotted overrides for foundry's recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per contender")
    parser.add_argument("--together", action="store_true",
                        help="run the contenders at the same time (on a shared machine: the same load for all)")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=Path("/tmp/foundry-quality"))
    parser.add_argument("--name", help="results file name (default pretrain_quality, or pretrain_quality_dev)")
    args = parser.parse_args()
    if args.score == "test" and args.override:
        sys.exit("--override changes the recipe: check it with --score dev, never on the reported split")
    args.name = args.name or ("pretrain_quality" if args.score == "test" else "pretrain_quality_dev")
    (args.work / args.name).mkdir(parents=True, exist_ok=True)
    info = machine()
    data = build_data(args.work, args.vocab_size)
    score = data[args.score]
    results = []
    if args.together:  # the same minutes of a shared machine for all, each on its own threads
        results = [finish(job, score, args) for job in start_together(args.contenders, data, score, args)]
    else:
        for name in args.contenders:
            results.append(finish(start(name, data, score, args), score, args))
    for r in results:
        print(json.dumps(r), flush=True)
    print(f"\nbits per byte on the {args.score} part after {args.seconds:.0f} s (lower is better):")
    for r in results:
        print(f"  {r['contender']:<18} {r['held_out_bpb']:.4f}  {r['params'] / 1e6:.2f}M params, {r['steps']:,} steps, "
              f"{r['tokens']:,} tokens, final lr {r['final_lr']:.2e}, {r['train_seconds']} s")
    command = "python benchmarks/pretrain_quality.py " + " ".join(sys.argv[1:])
    write_result(args.name, info, command, {"seconds": args.seconds, "scored_part": args.score, "threads": args.threads,
                                        "together": args.together,
                                        "split": "train = first 98%, dev = next 1%, test = last 1% (line boundaries)",
                                        "contenders": results})


if __name__ == "__main__":
    main()
