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

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from foundry.config import StrictModel, TrainConfig
from foundry.errors import ConfigError, DataError
from foundry.train.objectives import SourceBase
from foundry.train.stage import LoRASpec, StageConfig, StageRunner


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


class ContinueConfig(StageConfig):
    init: str = Field(description="model to start from: a foundry checkpoint, a run directory (its best checkpoint) "
                      "or an imported Hugging Face directory")
    mixture: list[MixtureEntry] = Field(description="datasets to train and evaluate on: [{name, data, weight}, ...]")
    lora: LoRASpec | None = Field(None, description="train low-rank adapters only (merged into the saved best)")
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
class MixtureSource(SourceBase):
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


# ---- evaluation ------------------------------------------------------------------------------------------
def dataset_evaluator(dataset: str | Path, block_size: int, batch_size: int, max_batches: int, tokenizer=None):
    """fn(model) -> {"loss", "ppl", "bpb"} on the dataset's val shards of `tokenizer` (the same fixed blocks
    every call)."""
    from foundry.data.shards import TokenBlocks, load_token_index
    from foundry.train.loop import loss_evaluator
    from foundry.train.objectives import NextTokenObjective

    blocks = TokenBlocks(dataset, "val", block_size, seed=0, tokenizer=tokenizer)
    val = load_token_index(dataset, tokenizer)["splits"]["val"]
    bytes_per_token = val["bytes"] / val["tokens"] if val.get("bytes") else None
    return loss_evaluator(NextTokenObjective(), lambda: blocks.eval_batches(batch_size, max_batches),
                          bytes_per_token=bytes_per_token)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table from dict rows; columns are (key, header, format spec); formatted columns align right."""
    from foundry.utils.tables import md_table

    return md_table([h for _, h, _ in columns], [[_cell(row.get(key), spec) for key, _, spec in columns] for row in rows],
                    right=[i for i, (_, _, spec) in enumerate(columns) if spec])


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
    from foundry.data.prepare import dataset_manifest
    from foundry.data.shards import TokenBlocks, check_tokenizer_matches
    from foundry.model.encoder import is_encoder
    from foundry.train.objectives import NextTokenObjective
    from foundry.utils.io import read_metrics

    with StageRunner("continue", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        datasets = {m.name: Path(m.data) for m in cfg.mixture}
        weights = {m.name: m.weight for m in cfg.mixture}
        manifests = {name: dataset_manifest(path) for name, path in datasets.items()}  # checked before any work
        start = runner.load_start(cfg.init)
        # Each dataset's shards of the model's own tokenizer (a dataset may hold several tokenizers' side by
        # side); none: a one-line DataError naming the dataset and the 'foundry data tokenize' to run.
        tokens = {name: check_tokenizer_matches(path, start.tokenizer) for name, path in datasets.items()}
        # Each dataset samples with its own seed, so adding a dataset does not reshuffle the others.
        train_sources = {name: TokenBlocks(tokens[name], "train", tc.block_size, tc.seed + k, env.rank, env.world_size)
                         for k, name in enumerate(datasets) if weights[name] > 0}
        source = MixtureSource(train_sources, weights, tc.seed)
        eval_bs = cfg.eval_batch_size or tc.micro_batch_size
        evaluators = {f"val/{name}": dataset_evaluator(tokens[name], tc.block_size, eval_bs, tc.eval_batches)
                      for name in datasets}
        objective = NextTokenObjective()
        if is_encoder(start.model):  # domain-adaptive MLM: the same mixture, masked (foundry.train.mlm)
            from foundry.train.mlm import MLMConfig, MLMObjective, Masker, MaskedLMSource, mlm_val_evaluator

            masker = Masker(start.tokenizer, start.model.config.mask_token_id, MLMConfig())
            source, objective = MaskedLMSource(source, masker, tc.seed), MLMObjective()
            evaluators = {f"val/{name}": mlm_val_evaluator(tokens[name], tc.block_size, eval_bs, tc.eval_batches, masker)
                          for name in datasets}
        names = list(datasets)
        primary = max(cfg.mixture, key=lambda m: m.weight).name  # best checkpoint: lowest loss on the main dataset
        # the resolved start (a run directory's best checkpoint), its kind, the datasets, its tokenizer's sha256
        run_dir = runner.open_run_dir({"datasets": {n: str(p.resolve()) for n, p in datasets.items()}},
                                      data_files=manifests)
        runner.apply_lora(start.model, cfg.lora)
        # step 0 evaluates the parent on every dataset: the "before" of the before/after table
        final = runner.train(start.model, objective, source, start.tokenizer, evaluators=evaluators,
                             best_metric=f"val/{primary}/loss", eval_at_start=True, lora=cfg.lora)
        before_record = next((r for r in read_metrics(run_dir) if r.get("step") == 0 and "event" not in r), {})
        before, after = _per_dataset(before_record, names), _per_dataset(final, names)
        rows = before_after_rows(before, after, weights)
        results = {**final, "before": before, "after": after, "table": rows,
                   "mixture": weights, "sequences_drawn": dict(getattr(source, "inner", source).drawn), "primary": primary}
        runner.finish(results)
        if runner.is_main:
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
