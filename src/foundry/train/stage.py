"""The stage runner: the set-up every training stage shares, so a stage is only what makes it different.

A stage (every name in the stage registry, `foundry.stages`, and selftest's probe runs) is an objective, a
batch source, a config and a starting model. Everything around them is done here, once, the same way:

1. `StageRunner(name, cfg, resume)`: refuse a missing run to resume or an existing one to train over
   (unless `overwrite`), before anything is loaded or written; set up the distributed environment once
   (the config is not changed: the accumulation torchrun implies lives in `env.grad_accum_steps`);
2. `runner.load_start(path)`: the one door for a starting model: a foundry checkpoint, a run directory or
   an imported Hugging Face directory (`foundry.checkpoints.load_start`), checked against the block size;
3. `runner.open_run_dir(parents, data_files)`: clear the run directory under `overwrite`, write the
   recipe as `config.yaml` and `run.json` as "running", with the run's true creation time and its lineage,
   built here for every stage (`lineage`: the resolved start and its kind, the stage's own parents, the
   tokenizer's sha256, the data files' hashes);
4. `runner.train(model, objective, source, tokenizer, evaluators, ...)`: the one training loop (a
   `foundry.train.loop.Trainer`, which `runner.trainer(...)` hands out unstarted), with an evaluation of the
   starting model at step 0 when the stage asks (`eval_at_start`);
5. `runner.finish(results, summary)`: `run.json` finished, once, with the stage's results; one summary
   line from rank 0; the process group torn down.

Adding a stage (see docs/ARCHITECTURE.md):

    with StageRunner("mystage", cfg, resume) as runner:
        start = runner.load_start(cfg.init)
        source = MySource(cfg.data, cfg.train.seed, runner.env.rank, runner.env.world_size)
        runner.open_run_dir(data_files=[cfg.data])  # parents: the resolved start, its kind, its tokenizer
        results = runner.train(start.model, MyObjective(), source, start.tokenizer)
        return runner.finish(results, summary=["loss"])
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field

from foundry.config import StrictModel, TrainConfig, dump_config
from foundry.errors import CheckpointError, ConfigError


class LoRASpec(StrictModel):
    rank: int = Field(8, gt=0, description="rank of each low-rank adapter")
    alpha: float = Field(16.0, gt=0, description="adapter scale: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    targets: list[str] = Field(["q_proj", "v_proj"], description="linear layers that get adapters")


class StageConfig(StrictModel):
    """What every training stage's recipe holds: where the run goes, and the one loop's settings."""

    out_dir: str = Field(description="run directory: checkpoints, metrics.jsonl, TensorBoard events, run.json")
    overwrite: bool = Field(False, description="start over in an out_dir that already holds a run (it is deleted)")
    train: TrainConfig = Field(TrainConfig(), description="the training loop's settings (below)")


def chat_template_field():
    return Field("model", description="chat template to train with: 'model' (the starting model's own, from its "
                 "tokenizer), 'foundry' (foundry's, its markers added as special tokens) or a PATH.jinja file")


class FineTuneConfig(StageConfig):
    """A stage that starts from a model and trains on a JSONL file (SFT, DPO)."""

    chat_template: str = chat_template_field()

    init: str = Field(description="model to start from: a foundry checkpoint, a run directory (its best checkpoint) "
                      "or an imported Hugging Face directory")
    data: str = Field(description="training JSONL")
    val_data: str | None = Field(None, description="held-out JSONL for validation")


def save_merged_lora(model, tokenizer, out_dir: Path, stage: str, step: int) -> Path:
    """Merge the adapters into `model` (in place); `checkpoints/best` becomes a plain foundry checkpoint.

    With a validation set, the best-by-validation adapters are merged, else the final ones.
    """
    from foundry.checkpoints import load_weights, read_meta, save_checkpoint, verify_checkpoint
    from foundry.model.lora import merge_lora

    best = out_dir / "checkpoints" / "best"
    meta = {"step": step, "stage": stage, "val_loss": None}
    if best.is_dir() and verify_checkpoint(best) is None:
        load_weights(model, best)  # still LoRA-shaped: the loop saved the wrapped model
        meta = {k: v for k, v in read_meta(best).items() if k != "sha256"}
    merge_lora(model)
    meta["lora_merged"] = True
    return save_checkpoint(best, model, tokenizer, None, meta)


def check_run_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Refuse, before anything is loaded or written, to resume a missing run or to train over an existing
    one (unless `overwrite`)."""
    out_dir = Path(out_dir)
    if resume and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: no run to resume (directory not found)")
    if not resume and out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: already holds a run; pass --resume to continue it or overwrite=true "
                          "to start over")
    return out_dir


class StageRunner:
    """One stage's run: checks, distributed set-up, starting model, run directory, the loop, the record."""

    def __init__(self, name: str, cfg: StageConfig, resume: bool = False):
        import torch

        from foundry.train.distributed import setup_distributed

        from foundry.stages import STAGES

        self.name, self.cfg, self.resume = name, cfg, resume
        spec = STAGES.get(name)
        self.verb = spec.verb if spec is not None and spec.verb else name  # what the user typed: `foundry VERB`
        self.start = None  # the resolved starting model, once `load_start` has run
        self.run_dir = check_run_dir(cfg.out_dir, resume, cfg.overwrite)
        self.env = setup_distributed(cfg.train)
        if cfg.train.threads:  # before any work (a DPO reference pass) so all of it runs the same way
            torch.set_num_threads(cfg.train.threads)
        self.record = None

    def __enter__(self) -> "StageRunner":
        return self

    def __exit__(self, *exc) -> bool:
        from foundry.train.distributed import teardown

        teardown(self.env)
        return False

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def log(self, line: str) -> None:
        """A line on stdout from rank 0 only."""
        if self.is_main:
            print(line, flush=True)

    def load_start(self, path: str | Path):
        """The starting model (`foundry.checkpoints.StartingModel`), on the CPU, fitting the block size, with the
        recipe's chat template."""
        from foundry.checkpoints import choose_chat_template, load_start

        start = load_start(path, verb=f"foundry {self.verb} (init)")
        choice = getattr(self.cfg, "chat_template", "model")
        if choice != "model":
            start.tokenizer = choose_chat_template(start.model, start.tokenizer, choice)
        block, context = self.cfg.train.block_size, start.model.config.max_seq_len
        if block > context:
            raise ConfigError(f"train.block_size={block} exceeds the model's context ({path}: max_seq_len {context})")
        self.start = start
        return start

    def lineage(self, parents: dict | None = None, data_files: list | dict | None = None,
                tokenizer=None) -> tuple[dict, dict]:
        """(parents, data_manifests) for run.json, built the same way for every stage.

        parents: the resolved starting checkpoint and its kind (from `load_start`, when the stage has one), the
        stage's own entries (`parents`: datasets, a reference, ...), and the sha256 of the tokenizer (the
        starting model's unless `tokenizer` is given). data_manifests: the sha256 of each data file (a list:
        keyed by file name) or of each named file (a mapping name -> file)."""
        from foundry.utils.io import sha256_file

        out: dict = {}
        if self.start is not None:
            out["checkpoint"] = str(Path(self.start.path).resolve())
            out["checkpoint_kind"] = self.start.kind
        out.update(parents or {})
        tokenizer = tokenizer if tokenizer is not None else getattr(self.start, "tokenizer", None)
        if tokenizer is not None:
            out["tokenizer_sha256"] = tokenizer.sha256
        files = data_files or {}
        named = files if isinstance(files, dict) else {Path(f).name: f for f in files}
        return out, {name: sha256_file(f) for name, f in named.items()}

    def open_run_dir(self, parents: dict | None = None, data_files: list | dict | None = None,
                     tokenizer=None) -> Path:
        """Create (with `overwrite`, recreate) the run directory once every input is valid; write the recipe
        as config.yaml (a resumed run keeps its own) and run.json as "running", its lineage from `lineage`."""
        from foundry.train.distributed import barrier
        from foundry.utils.io import RunRecord, atomic_write_text

        parents, data_manifests = self.lineage(parents, data_files, tokenizer)
        out_dir, env = self.run_dir, self.env
        if not self.resume and out_dir.exists() and self.cfg.overwrite and env.is_main:
            shutil.rmtree(out_dir)
        barrier(env)  # under torchrun: no rank writes into out_dir before rank 0 has cleared it
        out_dir.mkdir(parents=True, exist_ok=True)
        self.record = RunRecord(out_dir, self.name, self.cfg, parents, data_manifests, resume=self.resume)
        if env.is_main and not self.resume:  # a resumed run's record changes once its checkpoint has loaded
            atomic_write_text(out_dir / "config.yaml", dump_config(self.cfg))
            self.record.write({"status": "running"})
        return out_dir

    def apply_lora(self, model, spec: "LoRASpec | None"):
        """Adapters on `spec.targets` (everything else frozen), or nothing when `spec` is None."""
        if spec is not None:
            from foundry.model.lora import apply_lora

            apply_lora(model, spec.rank, spec.alpha, spec.dropout, spec.targets)
        return model

    def save_merged_lora(self, model, tokenizer, spec: "LoRASpec | None", results: dict) -> None:
        """Under LoRA: merge the adapters (the best-by-validation ones if any) and save `checkpoints/best`
        as plain weights, so the stage's output is a normal foundry checkpoint."""
        if spec is not None and self.is_main:
            save_merged_lora(model, tokenizer, self.run_dir, self.name, results["step"])

    def trainer(self, model, objective, source, tokenizer, evaluators: dict | None = None,
                best_metric: str | None = None, eval_at_start: bool = False):
        """The one training loop (`foundry.train.loop.Trainer`) on this stage's run directory, run record and
        distributed set-up, ready to `fit()` (or to step by hand: `train_step()`)."""
        from foundry.train.loop import Trainer
        from foundry.train.objectives import BatchSource, Objective

        # programming errors, caught before any work: a new stage's pieces must fit the loop
        if self.record is None:
            raise RuntimeError("StageRunner.open_run_dir must come before train")
        for piece, protocol in ((objective, Objective), (source, BatchSource)):
            if not isinstance(piece, protocol):
                raise TypeError(f"{type(piece).__name__} is not a {protocol.__name__} (see foundry.train.objectives)")
        return Trainer(model, objective, source, self.cfg.train, self.run_dir, tokenizer, self.record, self.env,
                       evaluators=evaluators, resume=self.resume, stage=self.name, best_metric=best_metric,
                       eval_at_start=eval_at_start)

    def train(self, model, objective, source, tokenizer, evaluators: dict | None = None,
              best_metric: str | None = None, eval_at_start: bool = False, lora: "LoRASpec | None" = None) -> dict:
        """The one training loop run to its end; returns its final metrics. With `lora` (the stage trained
        adapters), `checkpoints/best` is then rewritten with the adapters merged (`save_merged_lora`)."""
        results = self.trainer(model, objective, source, tokenizer, evaluators, best_metric, eval_at_start).fit()
        self.save_merged_lora(model, tokenizer, lora, results)
        return results

    def finish(self, results: dict, summary: list[str] | None = None, extra: list[str] | None = None) -> dict:
        """Write run.json "finished" with `results`, and (if `summary` is given) print one line:
        `foundry NAME: done: step N, KEY VALUE, ..., EXTRA -> out_dir`."""
        if self.is_main:
            self.record.write({**results, "status": "finished"})
            if summary is not None:
                parts = [f"step {results['step']}"]
                parts += [f"{key} {results[key]:.4f}" for key in summary if key in results]
                parts += extra or []
                print(f"foundry {self.verb}: done: " + ", ".join(parts) + f" -> {self.cfg.out_dir}", flush=True)
        return results
