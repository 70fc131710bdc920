"""`foundry continue`: continual pretraining of a checkpoint on a data mixture, with replay.

Continual pretraining is pretraining with another starting point and another data mix, so this module
adds only those two things to the one training loop:
- `MixtureSource`: every training sequence comes from dataset i with probability weight_i (the domain
  plus a replay share of the base model's own data), drawn deterministically from the seed; its state
  (draw counter and every dataset's position) resumes exactly.
- per-dataset evaluators: validation loss, perplexity and bits per byte on EACH dataset of the mixture,
  logged side by side (`val/<name>/loss`), measured once before training (step 0) too, so the domain
  gain and the general loss (forgetting) are visible as curves and in the final table. A dataset with
  weight 0 is evaluated but never trained on: that is how "no replay" still measures forgetting.

Defaults suited to continued training (`ContinueTrainConfig`): a fresh short warm-up, a peak learning
rate ten times below pretraining's, cosine decay to 1% of it. Re-warming and re-decaying the learning
rate is what continual pretraining studies recommend (Ibrahim et al. 2024, "Simple and Scalable
Strategies to Continually Pre-train Large Language Models", sections 5-6; replay of a few percent to a
quarter of the old data limits forgetting in the same paper).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from foundry.config import StrictModel, TrainConfig, load_config
from foundry.errors import CheckpointError, ConfigError, DataError


# ---- configuration -----------------------------------------------------------------------------------
class MixtureEntry(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="label in metrics: val/<name>/loss")
    data: str = Field(description="dataset directory (made by 'foundry data prepare' + 'foundry data tokenize')")
    weight: float = Field(ge=0, allow_inf_nan=False, description="sampling weight; 0 = evaluate only (no replay)")


class ContinueTrainConfig(TrainConfig):
    """TrainConfig with continued-training defaults: short fresh warm-up, low peak lr, decay to 1%."""

    max_steps: int = Field(500, gt=0)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    eval_every: int = Field(50, gt=0)


class ContinueConfig(StrictModel):
    init: str = Field(description="foundry checkpoint or run directory (an imported HF checkpoint is one too)")
    out_dir: str
    mixture: list[MixtureEntry]
    train: ContinueTrainConfig = ContinueTrainConfig()
    eval_batch_size: int | None = Field(None, gt=0, description="default: train.micro_batch_size")

    @field_validator("mixture")
    @classmethod
    def _check_mixture(cls, mixture: list[MixtureEntry]) -> list[MixtureEntry]:
        if not mixture:
            raise ValueError("the mixture is empty; list at least one {name, data, weight}")
        names = [m.name for m in mixture]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset name(s) {', '.join(dup)} used twice in the mixture")
        if sum(m.weight for m in mixture) <= 0:
            raise ValueError("mixture weights sum to 0; give at least one dataset a positive weight")
        return mixture


# ---- the batch source ----------------------------------------------------------------------------------
class MixtureSource:
    """Batches whose sequences come from several `TokenBlocks`, dataset i with probability weight_i.

    Draw k (a step's micro-batch) uses its own generator seeded by (seed, k), so the state is just the
    draw counter plus each dataset's position, and a resume is exact. All ranks make the same draw (the
    same number of sequences from each dataset); each dataset's `TokenBlocks` then gives every rank its
    own disjoint windows, so the global batch composition follows the weights whatever the world size.
    """

    def __init__(self, sources: dict[str, Any], weights: dict[str, float], seed: int):
        names = [n for n in sources if weights.get(n, 0) > 0]
        if not names:
            raise ConfigError("mixture: no dataset has a positive weight")
        total = sum(weights[n] for n in names)
        self.names = names
        self.sources = {n: sources[n] for n in names}
        self.probs = np.array([weights[n] / total for n in names], dtype=np.float64)
        self.seed = seed
        self.draws = 0
        self.drawn = {n: 0 for n in names}  # sequences taken from each dataset so far (this rank)

    def choose(self, batch_size: int) -> np.ndarray:
        """Dataset index of each of the next batch's sequences (a pure function of seed and counter)."""
        rng = np.random.default_rng([self.seed, 0x6D6978, self.draws])  # 0x6D6978: "mix"
        return rng.choice(len(self.names), size=batch_size, p=self.probs)

    def next_batch(self, batch_size: int) -> dict:
        import torch

        choice = self.choose(batch_size)
        self.draws += 1
        input_ids = targets = None
        for i, name in enumerate(self.names):
            rows = np.flatnonzero(choice == i)
            if len(rows) == 0:
                continue
            part = self.sources[name].next_batch(len(rows))
            if input_ids is None:
                T = part["input_ids"].shape[1]
                input_ids = torch.empty((batch_size, T), dtype=torch.long)
                targets = torch.empty((batch_size, T), dtype=torch.long)
            idx = torch.from_numpy(rows)
            input_ids[idx], targets[idx] = part["input_ids"], part["targets"]
            self.drawn[name] += len(rows)
        return {"input_ids": input_ids, "targets": targets}

    def state_dict(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "names": list(self.names),
                "probs": [float(p) for p in self.probs], "drawn": dict(self.drawn),
                "sources": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("names") != self.names or not np.allclose(state.get("probs", []), self.probs):
            saved = dict(zip(state.get("names", []), state.get("probs", [])))
            raise DataError(f"cannot resume: the saved mixture is {saved} but this run's is "
                            f"{dict(zip(self.names, self.probs.tolist()))} (the recipe changed)")
        if state.get("seed") != self.seed:
            raise DataError(f"cannot resume: the saved mixture seed is {state.get('seed')}, this run's is {self.seed}")
        self.draws = int(state["draws"])
        self.drawn = {n: int(state["drawn"].get(n, 0)) for n in self.names}
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])


# ---- checking inputs -------------------------------------------------------------------------------------
def load_init(path: str | Path):
    """(model, tokenizer, kind) from a foundry checkpoint or run directory, or a Hugging Face checkpoint.

    Anything else is a one-line CheckpointError naming the path.
    """
    from foundry.train.checkpoint import load_model

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint or run directory, not a file")
    if (path / "model_config.json").is_file() or (path / "meta.json").is_file() or (path / "checkpoints").is_dir():
        model, tokenizer = load_model(path, device="cpu")
        return model, tokenizer, "foundry"
    if (path / "config.json").is_file():
        from foundry.model.hf import import_hf

        model, tokenizer = import_hf(path)
        return model, tokenizer, "huggingface"
    raise CheckpointError(f"{path}: not a foundry checkpoint (no model_config.json), run directory (no "
                          "checkpoints/) or Hugging Face checkpoint (no config.json)")


def _manifest_sha(dataset: Path) -> str:
    from foundry.utils.io import sha256_file

    manifest = dataset / "manifest.json"
    if not manifest.is_file():
        raise DataError(f"{dataset}: not a dataset directory (no manifest.json); run 'foundry data prepare'")
    return sha256_file(manifest)


# ---- evaluation ------------------------------------------------------------------------------------------
def dataset_evaluator(dataset: str | Path, block_size: int, batch_size: int, max_batches: int):
    """fn(model) -> {"loss", "ppl", "bpb"} on the dataset's val shards (the same fixed blocks every call)."""
    from foundry.data.shards import TokenBlocks, load_token_index
    from foundry.train.loop import loss_evaluator
    from foundry.train.objectives import NextTokenObjective

    blocks = TokenBlocks(dataset, "val", block_size, seed=0)
    val = load_token_index(dataset)["splits"]["val"]
    bytes_per_token = val["bytes"] / val["tokens"] if val.get("bytes") else None
    return loss_evaluator(NextTokenObjective(), lambda: blocks.eval_batches(batch_size, max_batches),
                          bytes_per_token=bytes_per_token)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table from dict rows; columns are (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f == "" else "---:" for _, _, f in columns) + "|"
    body = []
    for row in rows:
        cells = [_cell(row.get(key), spec) for key, _, spec in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def _cell(value, spec: str) -> str:
    if value is None:
        return ""
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


BEFORE_AFTER_COLUMNS = [("dataset", "dataset", ""), ("weight", "weight", ".2f"),
                        ("ppl_before", "ppl before", ".2f"), ("ppl_after", "ppl after", ".2f"),
                        ("ppl_change", "change", "+.1%"), ("bpb_before", "bpb before", ".3f"),
                        ("bpb_after", "bpb after", ".3f")]


def before_after_rows(before: dict[str, dict], after: dict[str, dict], weights: dict[str, float]) -> list[dict]:
    """One row per dataset: perplexity and bits per byte before and after training, and the change."""
    rows = []
    for name, b in before.items():
        a = after.get(name, {})
        rows.append({"dataset": name, "weight": weights.get(name),
                     "loss_before": b.get("loss"), "loss_after": a.get("loss"),
                     "ppl_before": b.get("ppl"), "ppl_after": a.get("ppl"),
                     "bpb_before": b.get("bpb"), "bpb_after": a.get("bpb"),
                     "ppl_change": a["ppl"] / b["ppl"] - 1 if a.get("ppl") and b.get("ppl") else None})
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header, spec in columns:
        table.add_column(header, justify="left" if spec == "" else "right")
    for row in rows:
        table.add_row(*[_cell(row.get(k), s) for k, _, s in columns])
    Console().print(table)


def _per_dataset(metrics: dict, names: list[str]) -> dict[str, dict]:
    """{"val/<name>/loss": x, ...} -> {name: {"loss": x, ...}}."""
    out: dict[str, dict] = {}
    for name in names:
        prefix = f"val/{name}/"
        out[name] = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    return out


# ---- the stage -----------------------------------------------------------------------------------------
def run_continue(cfg: ContinueConfig, resume: bool = False) -> dict:
    """Continue training `cfg.init` on `cfg.mixture`; returns the `results` written to run.json."""
    import torch

    from foundry.data.shards import TokenBlocks, check_tokenizer_matches
    from foundry.train.checkpoint import latest_checkpoint
    from foundry.train.distributed import setup_distributed
    from foundry.train.loop import autocast_context, autocast_dtype, read_metrics, train
    from foundry.train.objectives import NextTokenObjective
    from foundry.utils.io import write_run_record

    run_dir = Path(cfg.out_dir)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: already exists and is not empty; pass --resume to continue that run, "
                          "or choose another out_dir (nothing was changed)")
    if resume and latest_checkpoint(run_dir) is None:
        # An attempt that stopped before its first checkpoint left nothing to keep: start it afresh.
        print(f"foundry continue: {run_dir} holds no checkpoint yet; starting from {cfg.init}", file=sys.stderr)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        resume = False
    datasets = {m.name: Path(m.data) for m in cfg.mixture}
    weights = {m.name: m.weight for m in cfg.mixture}
    manifests = {name: _manifest_sha(path) for name, path in datasets.items()}
    model, tokenizer, kind = load_init(cfg.init)
    for path in datasets.values():
        check_tokenizer_matches(path, tokenizer)  # one-line DataError naming the shards if they differ
    tc = cfg.train
    if tc.block_size > model.config.max_seq_len:
        raise ConfigError(f"train.block_size={tc.block_size} exceeds the checkpoint's context "
                          f"(max_seq_len {model.config.max_seq_len})")

    env = setup_distributed(tc)
    # Each dataset samples with its own seed, so adding a dataset does not reshuffle the others.
    train_sources = {name: TokenBlocks(path, "train", tc.block_size, tc.seed + k, env.rank, env.world_size)
                     for k, (name, path) in enumerate(datasets.items()) if weights[name] > 0}
    source = MixtureSource(train_sources, weights, tc.seed)
    eval_bs = cfg.eval_batch_size or tc.micro_batch_size
    evaluators = {f"val/{name}": dataset_evaluator(path, tc.block_size, eval_bs, tc.eval_batches)
                  for name, path in datasets.items()}
    names = list(datasets)

    # Step 0: the parent checkpoint's numbers on every dataset, logged where the loop logs its evaluations.
    if resume:
        before_record = next((r for r in read_metrics(run_dir) if r.get("step") == 0 and "event" not in r), None)
    else:
        before_record = None
    if before_record is None:
        device = env.device
        model.to(device).eval()
        with torch.no_grad(), autocast_context(device, autocast_dtype(tc, device)):
            before_record = {"step": 0}
            for name, fn in evaluators.items():
                before_record.update({f"{name}/{k}": float(v) for k, v in fn(model).items()})
        model.to("cpu").train()
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(before_record) + "\n")

    primary = max(cfg.mixture, key=lambda m: m.weight).name  # best checkpoint: lowest loss on the main dataset
    parents = {"checkpoint": str(Path(cfg.init).resolve()), "checkpoint_kind": kind,
               "datasets": {n: str(p.resolve()) for n, p in datasets.items()}}
    final = train(model, NextTokenObjective(), source, tc, run_dir, tokenizer, evaluators=evaluators,
                  resume=resume, stage="continue", parents=parents, data_manifests=manifests,
                  best_metric=f"val/{primary}/loss", record_config=cfg)

    before, after = _per_dataset(before_record, names), _per_dataset(final, names)
    rows = before_after_rows(before, after, weights)
    results = {**final, "status": "finished", "before": before, "after": after, "table": rows,
               "mixture": weights, "sequences_drawn": dict(source.drawn), "primary": primary}
    if env.is_main:
        write_run_record(run_dir, "continue", cfg, parents=parents, data_manifests=manifests, results=results)
        print_table(rows, BEFORE_AFTER_COLUMNS, f"continual pretraining: {cfg.init} -> {run_dir}")
    return results


# ---- comparing runs: the domain experiment's table -----------------------------------------------------
def _mixture_label(weights: dict[str, float]) -> str:
    total = sum(weights.values())
    return " + ".join(f"{n} {w / total:.0%}" for n, w in weights.items() if w > 0)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """One table of finished `foundry continue` runs of the same parent: the parent's numbers (before)
    and each run's (after) on every dataset, with the change against the parent.

    Writes OUT/results.md, OUT/results.json and OUT/run.json; returns the results.
    """
    from foundry.utils.io import atomic_write_json, atomic_write_text, read_json, write_run_record

    if not run_dirs:
        raise ConfigError("foundry continue --compare: name at least one run directory")
    runs = []
    for run in map(Path, run_dirs):
        record = read_json(run / "run.json") if (run / "run.json").is_file() else None
        if not record or record.get("stage") != "continue" or "after" not in record.get("results", {}):
            raise DataError(f"{run}: not a finished 'foundry continue' run (no run.json with before/after results)")
        runs.append((run, record))
    parents = {rec["parents"].get("checkpoint") for _, rec in runs}
    if len(parents) > 1:
        raise ConfigError(f"--compare: the runs continue different checkpoints "
                          f"({', '.join(sorted(map(str, parents)))}); compare runs of one parent")
    names: list[str] = []
    before: dict[str, dict] = {}
    for _, rec in runs:
        for name, numbers in rec["results"]["before"].items():
            if name not in names:
                names.append(name)
                before[name] = numbers
    rows = [{"model": "parent (before)", "mixture": "", "steps": 0,
             **{f"{n}_ppl": before[n].get("ppl") for n in names}, **{f"{n}_bpb": before[n].get("bpb") for n in names}}]
    for run, rec in runs:
        res = rec["results"]
        row = {"model": run.name, "mixture": _mixture_label(res["mixture"]), "steps": res.get("step")}
        for n in names:
            a = res["after"].get(n, {})
            row[f"{n}_ppl"], row[f"{n}_bpb"] = a.get("ppl"), a.get("bpb")
            if a.get("ppl") and before[n].get("ppl"):
                row[f"{n}_change"] = a["ppl"] / before[n]["ppl"] - 1
        rows.append(row)
    columns = [("model", "model", ""), ("mixture", "trained on", ""), ("steps", "steps", "d")]
    for n in names:
        columns += [(f"{n}_ppl", f"{n} ppl", ".2f"), (f"{n}_change", "change", "+.1%")]
    bpb_columns = [("model", "model", "")] + [(f"{n}_bpb", f"{n} bits/byte", ".3f") for n in names]
    parent = next(iter(parents))
    md = "\n".join([
        "# Continual pretraining: domain gain and forgetting", "",
        f"Parent checkpoint: `{parent}`. Perplexity (per token) and bits per byte on each dataset's validation "
        "split, before (the parent) and after continued training; change is against the parent.", "",
        format_table(rows, columns), "", format_table(rows, bpb_columns), "",
    ])
    results = {"parent": parent, "datasets": names, "rows": rows, "runs": [str(r.resolve()) for r, _ in runs]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.md", md)
    atomic_write_json(out_dir / "results.json", results)
    write_run_record(out_dir, "compare", {"runs": results["runs"]},
                     parents={"checkpoint": parent, "runs": results["runs"]},
                     data_manifests={k: v for _, rec in runs for k, v in rec.get("data_manifests", {}).items()},
                     results=results)
    print_table(rows, columns, "continual pretraining: perplexity before and after")
    print(f"results: {out_dir / 'results.md'}")
    return results


def run_domain_experiment(recipe: str | Path | None = None, out_dir: str | Path | None = None) -> dict:
    """Run the bundled domain experiment recipe end to end (`foundry run`); returns its results table.

    Base model pretrained on the general corpus -> continual pretraining on each domain with and without
    replay; the table lands in RUN/results/results.md and results.json.
    """
    from foundry.pipeline import REPO_ROOT, load_recipe, run_recipe
    from foundry.utils.io import read_json

    recipe = Path(recipe or REPO_ROOT / "recipes" / "domain-experiment.yaml")
    loaded = load_recipe(recipe, [f"out_dir={out_dir}"] if out_dir else None)
    run_recipe(loaded, recipe)
    run_dir = Path(loaded.out_dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    return read_json(run_dir / "results" / "results.json")


def main(argv: list[str]) -> int:
    from foundry.cli import make_parser

    p = make_parser("continue")
    p.add_argument("--config", help="recipe YAML (see recipes/continue-*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in out_dir")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="instead of training: tabulate finished continue runs "
                   "of one parent (before/after on every dataset) into --out")
    p.add_argument("--out", help="with --compare: directory for results.md and results.json")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.lr=1e-4")
    args = p.parse_args(argv)
    if args.compare:
        if args.config or not args.out:
            raise ConfigError("foundry continue --compare RUN... needs --out DIR and no --config")
        compare_runs(args.compare, args.out)
        return 0
    if not args.config:
        raise ConfigError("foundry continue: --config RECIPE is required (or --compare RUN... --out DIR)")
    cfg = load_config(ContinueConfig, args.config, args.overrides)
    run_continue(cfg, resume=args.resume)
    return 0
