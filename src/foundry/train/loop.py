"""THE training loop: every stage (pretrain, continual pretrain, SFT, DPO) is an objective, a batch
source and a starting model handed to `train`.

One optimiser step (`foundry.train.step.optimizer_step`):
  1. draw all `grad_accum_steps` micro-batches first and count their units (target tokens, pairs), summed
     over ranks, so every micro-batch's loss is divided by the units of the whole step: k micro-batches of
     B equal one batch of k*B exactly (trl #2175, transformers PR #34191);
  2. forward + backward each micro-batch (gradient sync only on the last, `distributed.sync_context`);
  3. clip, check the loss and gradient norm are finite, and step AdamW at `lr_at(step) * lr_scale`.
A non-finite step is skipped (no update) and logged; `max_bad_steps` in a row roll the run back to the
last checkpoint with the learning rate scaled by `rollback_lr_factor`.

Early stopping (`early_stop_patience`): after that many evaluations in a row without a new best of the
best metric the run stops; `checkpoints/best`, which `load_model(run_dir)` picks, holds the best step,
and run.json records `stopped_by: early_stop` and `best_step`.

Resume is exact: a checkpoint holds weights, optimiser, RNG states, the data source's position and the
step, so on CPU a resumed run reproduces the uninterrupted run's losses bit for bit (accelerate #2016).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from foundry.checkpoints import (
    latest_checkpoint, load_train_state, load_weights, rng_state, save_checkpoint, set_rng_state,
    remove_checkpoint, step_checkpoints,
)
from foundry.errors import CheckpointError, ConfigError, TrainingError
from foundry.hardware import distrust_cpu_peak, peak_flops
from foundry.lm_metrics import lm_scores
from foundry.train import distributed as dist_utils
from foundry.train.metrics_log import MetricsLog
from foundry.train.objectives import BatchSource, Objective
from foundry.train.optim import build_optimizer, lr_at
from foundry.train.profile import StepProfiler
from foundry.train.step import autocast_context, autocast_dtype, optimizer_step, to_device
from foundry.train.throughput import FlopCounter, batch_tokens
from foundry.utils.io import RunRecord

Evaluator = Callable[[torch.nn.Module], dict]


def schedule_position(step: int, elapsed: float, cfg) -> float:
    """The step the lr schedule is at: with a `max_seconds` budget, whichever budget is further along.

    A time budget on a shared or unknown machine cannot be turned into a step count in advance; this
    way the cool-down still ends when the time does, so a time-boxed run finishes annealed rather than
    being cut off at peak lr. Warm-up always counts real steps. (Runs bounded by time are not
    bit-reproducible on resume; runs bounded by steps are.)
    """
    if cfg.max_seconds is None or step < cfg.warmup_steps:
        return step
    return max(step, min(1.0, elapsed / cfg.max_seconds) * cfg.max_steps)


def loss_evaluator(objective, batches: Callable[[], Iterable[dict]], device: torch.device | str | None = None,
                   bytes_per_token: float | None = None) -> Evaluator:
    """An evaluator: mean loss (per unit) of `objective` over `batches()`, perplexity, and bits per byte.

    bits per byte = loss_nats / ln 2 * tokens / bytes (the index's ratio for the split), comparable
    across tokenizers, unlike the per-token loss.
    """

    def evaluate(model: torch.nn.Module) -> dict:
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        total, units = 0.0, 0
        for batch in batches():
            units += objective.units(batch)
            loss_sum, _ = objective.loss(model, to_device(batch, dev))
            total += float(loss_sum)
        if units == 0:
            raise TrainingError("evaluation set is empty: no target tokens")
        return lm_scores(total, units, units * bytes_per_token if bytes_per_token is not None else None)

    return evaluate


class _Interrupt:
    """SIGINT sets a flag; the loop finishes the current step, saves a checkpoint and stops."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        print("\nfoundry: interrupt received; saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Trainer:
    """The one training loop as an object (torchtitan's `Trainer`): built from what the stage runner prepared,
    with `train_step()` (one optimiser step, accumulation included, returning its metrics), `evaluate()`,
    `save()` and `fit()` (steps, evaluations, checkpoints and the end of the run) as methods a test or a
    benchmark can call.

    `evaluators` map a name to fn(model) -> {metric: value}; they run every `cfg.eval_every` steps and at the
    end, logged as "name/metric". `best_metric` (default: the first evaluator's "loss") picks
    `checkpoints/best`, lower is better. With `resume`, training continues from the latest valid checkpoint in
    `run_dir`. `record` is the run's run.json (`RunRecord`): the trainer rewrites it when a resumed run's
    checkpoint has loaded and when the run is interrupted; whoever started the run finishes it.
    `eval_at_start`: evaluate the starting model at step 0 too (logged like every evaluation).
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, source: BatchSource, cfg, run_dir, tokenizer,
                 record: RunRecord, env: dist_utils.DistEnv, evaluators: dict[str, Evaluator] | None = None,
                 resume: bool = False, stage: str = "pretrain", best_metric: str | None = None,
                 eval_at_start: bool = False):
        self.objective, self.source, self.cfg, self.tokenizer = objective, source, cfg, tokenizer
        self.run_dir, self.record, self.env, self.stage = Path(run_dir), record, env, stage
        self.evaluators = dict(evaluators or {})
        if best_metric is None and self.evaluators:
            best_metric = f"{next(iter(self.evaluators))}/loss"
        self.best_metric, self.eval_at_start = best_metric, eval_at_start
        if cfg.early_stop_patience is not None and not best_metric:
            raise ConfigError(f"{self.run_dir}: train.early_stop_patience is set but the stage has no validation set "
                              "to watch; give it validation data (val_data) or unset train.early_stop_patience")
        device = self.device = env.device
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = autocast_dtype(cfg, device)
        torch.manual_seed(cfg.seed)

        # ---- state: fresh or resumed ---------------------------------------------------------------
        base = self.base = dist_utils.unwrap(model)
        self.step, self.lr_scale, self.best_value = 0, 1.0, math.inf
        self.best_step, self.evals_since_best = None, 0  # evaluations since the best metric last improved
        self.elapsed_before = 0.0  # training seconds spent before this process (resume), for max_seconds
        state, resume_ckpt = None, None
        if resume:
            resume_ckpt = latest_checkpoint(self.run_dir)
            if resume_ckpt is None and step_checkpoints(self.run_dir):
                raise CheckpointError(f"{self.run_dir}: no valid checkpoint to resume from (all checkpoints/step_* "
                                      "are damaged)")
            if resume_ckpt is None:  # stopped before its first checkpoint: nothing to lose, start over
                if env.is_main:
                    print(f"foundry: warning: {self.run_dir}: no checkpoint yet; starting from step 0", file=sys.stderr)
            else:
                load_weights(base, resume_ckpt)
                state = load_train_state(resume_ckpt)
        base.to(device)
        if cfg.activation_checkpointing:
            from foundry.train.checkpointing import checkpoint_blocks

            checkpoint_blocks(base)  # each block keeps only its input; backward recomputes the rest
        self.model = dist_utils.wrap_model(base, cfg, env)
        self.optimizer = build_optimizer(dist_utils.unwrap(self.model), cfg)
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        if state is not None:
            dist_utils.restore_optimizer(self.model, self.optimizer, state, resume_ckpt, env)  # checks world size
            source.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            self.step, self.lr_scale = int(state["step"]), float(state["lr_scale"])
            self.best_value = float(state["best_value"])
            self.best_step, self.evals_since_best = state.get("best_step"), int(state.get("evals_since_best", 0))
            self.elapsed_before = float(state.get("elapsed_s", 0.0))

        self.is_main = env.rank == 0
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume:  # a resumed run's record is rewritten only once its checkpoint loaded
                record.write({"status": "running"})
        # an attempt stopped before its first checkpoint starts over, its metrics too
        self.log = MetricsLog(self.run_dir, self.is_main, self.step if resume_ckpt is not None else None)
        if resume_ckpt is not None and self.is_main:
            self.log.write({"step": self.step, "event": "resume", "checkpoint": str(resume_ckpt)})

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.count_flops = FlopCounter(base, cfg.block_size)
        device_peak = peak_flops(device, self.amp_dtype) if self.count_flops.enabled else None
        self.peak = device_peak * env.world_size if device_peak else 0.0  # 0: MFU not shown (no peak to trust)
        self.pad_id = getattr(tokenizer, "pad_id", None)  # tokens/s counts real tokens, never padding (None: no tokenizer)
        self.progress = None  # fit's progress bar
        self.profiler: StepProfiler | None = None  # fit's torch.profiler window
        self.final: dict = {}
        self.bad_in_a_row = 0
        self.started = time.perf_counter()
        self._restart_window()
        self.window_optimise_s, self.window_steps = 0.0, 0  # forward, backward and update time since the last log

    # ---- small pieces ----------------------------------------------------------------------------------
    def _restart_window(self) -> None:
        """Throughput counts restart (after logging, evaluation or a checkpoint: not training time)."""
        self.window_tokens, self.window_supervised, self.window_flops = 0, 0, 0.0
        self.window_start = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def train_state(self) -> dict:
        return {"step": self.step, "lr_scale": self.lr_scale, "best_value": self.best_value,
                "best_step": self.best_step, "evals_since_best": self.evals_since_best, "elapsed_s": self.elapsed(),
                "data": self.source.state_dict(), "rng": rng_state(), "stage": self.stage}

    def patience_spent(self) -> bool:
        return self.cfg.early_stop_patience is not None and self.evals_since_best >= self.cfg.early_stop_patience

    def save(self, val_loss: float | None = None) -> None:
        """`checkpoints/step_NNNNNNN` (weights, optimiser, data position, RNG), keeping the last `keep_last`."""
        path = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        # Collectives under FSDP (every rank): gather the weights to rank 0, write the optimiser shards.
        weights = dist_utils.full_model_state(self.model, self.env)
        staging = path.with_name(path.name + ".optimizer.tmp")
        optimizer_state = dist_utils.optimizer_state_for_checkpoint(self.model, self.optimizer, self.env, staging)
        if self.is_main:
            save_checkpoint(path, self.base, self.tokenizer, {**self.train_state(), **optimizer_state},
                            {"step": self.step, "stage": self.stage, "val_loss": val_loss}, model_state=weights,
                            directories={dist_utils.OPTIMIZER_DIR: staging} if staging.exists() else None)
            for old in step_checkpoints(self.run_dir)[:-self.cfg.keep_last]:
                remove_checkpoint(old)
        dist_utils.barrier(self.env)

    def evaluate(self) -> dict:
        """Every evaluator on the model (eval mode, no gradients, the run's autocast): {"name/metric": value}."""
        results = {}
        base = self.base
        was_training = base.training
        base.eval()
        with torch.no_grad(), autocast_context(self.device, self.amp_dtype):
            for name, fn in self.evaluators.items():
                for key, value in fn(base).items():
                    results[f"{name}/{key}"] = float(value)
        base.train(was_training)
        return results

    def _record_best(self, results: dict) -> bool:
        """Save `checkpoints/best` when `results` improve the best metric; True if they did."""
        previous = self.best_value
        self.best_value = _maybe_save_best(results, self.best_metric, self.best_value, self.run_dir, self.base,
                                           self.tokenizer, self.step, self.stage, self.is_main, self.env)
        return self.best_value < previous

    def roll_back(self) -> None:
        """Reload the latest `step_*` checkpoint (weights, optimiser, step) with the lr scaled down; the data
        position moves on (the batches that blew up are not replayed)."""
        cfg = self.cfg
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise TrainingError(f"{self.run_dir}: {cfg.max_bad_steps} non-finite steps in a row before any checkpoint; "
                                f"lower train.lr (now {cfg.lr}) or train.checkpoint_every")
        if self.lr_scale * cfg.rollback_lr_factor < 1e-3:
            raise TrainingError(f"{self.run_dir}: still non-finite after rolling back with lr scaled to "
                                f"{self.lr_scale:g}; check the data and lower train.lr")
        load_weights(self.base, ckpt)
        saved = load_train_state(ckpt)
        dist_utils.restore_optimizer(self.model, self.optimizer, saved, ckpt, self.env)
        from_step = self.step
        self.step, self.best_value = int(saved["step"]), float(saved["best_value"])
        self.best_step, self.evals_since_best = saved.get("best_step"), int(saved.get("evals_since_best", 0))
        self.lr_scale = float(saved["lr_scale"]) * cfg.rollback_lr_factor
        self.log.write({"step": self.step, "event": "rollback", "from_step": from_step, "checkpoint": str(ckpt),
                        "lr_scale": self.lr_scale})

    # ---- the step ----------------------------------------------------------------------------------------
    def train_step(self, elapsed: float | None = None) -> dict:
        """One optimiser step: draw the step's micro-batches, forward + backward each, clip, update (or skip a
        non-finite step, rolling back after `max_bad_steps` in a row), and write the log record every
        `log_every` steps. Returns {"step", "loss", "lr", "grad_norm", "skipped", metric: mean, ...}, plus
        the throughput record's keys on a logging step."""
        cfg, env = self.cfg, self.env
        elapsed = self.elapsed() if elapsed is None else elapsed
        lr = lr_at(schedule_position(self.step, elapsed, cfg), cfg) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # all micro-batches of the step first, so the loss is normalised by the step's units
        batches = [self.source.next_batch(cfg.micro_batch_size) for _ in range(env.grad_accum_steps)]
        drawn_at = time.perf_counter()  # drawing may include work (RL samples completions): timed apart
        for batch in batches:
            real, supervised = batch_tokens(batch, self.pad_id)
            self.window_tokens += real * env.world_size
            self.window_supervised += supervised * env.world_size
            if self.peak:
                self.window_flops += self.count_flops(batch, self.pad_id) * env.world_size
        out = optimizer_step(self.model, self.objective, batches, self.optimizer, self.params, self.device,
                             self.amp_dtype, cfg.grad_clip, env, self.forward_model,
                             where=f"{self.run_dir}: step {self.step}")
        loss, grad_norm = out.loss, out.grad_norm
        if out.finite:
            self.bad_in_a_row = 0
        self.window_optimise_s += time.perf_counter() - drawn_at
        self.window_steps += 1
        self.step += 1
        if self.profiler is not None:
            self.profiler.step()
        step = self.step
        metrics = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": not out.finite}
        if not out.finite:
            self.bad_in_a_row += 1
            self.log.write({"step": step, "event": "skipped_non_finite", "loss": loss if math.isfinite(loss)
                            else str(loss), "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm)})
            if self.progress is not None:
                self.progress.write(f"step {step}: non-finite loss or gradient ({loss}, {grad_norm}); step skipped")
            if self.bad_in_a_row >= cfg.max_bad_steps:
                self.roll_back()
                self.bad_in_a_row = 0
                if self.progress is not None:
                    self.progress.restart(self.step, self.elapsed())
            return metrics
        means = {key: float(dist_utils.all_reduce_sum(value, env)) / out.total_units
                 for key, value in out.metric_totals.items()}
        metrics.update(means)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            seconds = max(now - self.window_start, 1e-9)
            tokens_per_s = self.window_tokens / seconds
            mfu = self.window_flops / seconds / self.peak if self.peak else None
            if mfu is not None and mfu > 1.0:  # faster than the peak: the peak is wrong, not the run
                if self.device.type == "cpu":
                    distrust_cpu_peak()
                mfu = None
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": round(tokens_per_s, 1),
                      "supervised_tokens_per_s": round(self.window_supervised / seconds, 1),
                      "mfu": round(mfu, 4) if mfu is not None else None,
                      "elapsed_s": round(self.elapsed_before + now - self.started, 2), **means}
            # a source's own measurements (RL: generation, rewards); most sources have none
            record.update(self.source.step_metrics(self.window_steps, self.window_optimise_s))
            self.window_optimise_s, self.window_steps = 0.0, 0
            self.log.write(record)
            if self.progress is not None:
                self.progress.update(step, record["elapsed_s"], loss=loss, tokens_per_s=tokens_per_s,
                                     mfu=record["mfu"])
            self.window_tokens, self.window_supervised, self.window_flops, self.window_start = 0, 0, 0.0, now
            self.final.update(record)
            metrics.update(record)
        return metrics

    # ---- the run -----------------------------------------------------------------------------------------
    def _evaluate_and_keep_best(self) -> dict:
        """An evaluation during training: logged, `checkpoints/best` kept, early stopping counted."""
        last_eval = self.evaluate()
        step = self.step
        self.log.write({"step": step, **last_eval})
        if self.progress is not None:
            self.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        self.best_step, self.evals_since_best = ((step, 0) if self._record_best(last_eval)
                                                 else (self.best_step, self.evals_since_best + 1))
        if self.patience_spent():
            self.log.write({"step": step, "event": "early_stop", "best_step": self.best_step,
                            "evals_without_improvement": self.evals_since_best})
            if self.progress is not None:
                self.progress.write(f"step {step}: early stop: {self.best_metric} has not improved for "
                                    f"{self.evals_since_best} evaluations; best at step {self.best_step}")
        return last_eval

    def fit(self) -> dict:
        """Train to the budget (max_steps, max_seconds, early stopping or Ctrl-C), evaluating and saving on the
        way; at the end evaluate, save, and return the final metrics. Ctrl-C: the step finishes, a checkpoint is
        saved, run.json says "interrupted" and KeyboardInterrupt is raised."""
        cfg, env, device = self.cfg, self.env, self.device
        if self.is_main and cfg.progress:
            from foundry.train.progress import BudgetProgress

            # follows the budget that will end the run (a time box, or the steps), with tok/s, MFU, time left
            self.progress = BudgetProgress(self.stage, cfg.max_steps, cfg.max_seconds, self.step, self.elapsed_before,
                                           file=sys.stderr)
        self.profiler = StepProfiler(cfg.profile_steps, self.run_dir, enabled=self.is_main)
        self._restart_window()
        self.started = time.perf_counter()
        last_eval: dict = {}
        last_eval_step = None
        stopped_by = "max_steps"
        if self.eval_at_start and self.evaluators and self.step == 0:  # the starting model, where the curves begin
            self.log.write({"step": 0, **self.evaluate()})
        self.model.train()
        with _Interrupt() as interrupt:
            try:
                while self.step < cfg.max_steps and not self.patience_spent():
                    elapsed = self.elapsed()
                    if cfg.max_seconds is not None and env.enabled:  # one clock for all ranks: the same lr everywhere
                        elapsed = float(dist_utils.all_reduce_sum(
                            torch.tensor(elapsed, device=device, dtype=torch.float64), env)) / env.world_size
                    if cfg.max_seconds is not None and dist_utils.any_rank(
                            elapsed >= cfg.max_seconds, env):  # all ranks stop together
                        stopped_by = "max_seconds"
                        break
                    if self.train_step(elapsed)["skipped"]:
                        continue
                    step = self.step
                    if self.progress is not None:
                        self.progress.update(step, self.elapsed())
                    if self.evaluators and step % cfg.eval_every == 0 and step < cfg.max_steps:
                        last_eval = self._evaluate_and_keep_best()
                        last_eval_step = step
                        self._restart_window()  # evaluation is not training throughput
                    if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                        self.save(last_eval.get(self.best_metric) if self.best_metric else None)
                        self._restart_window()
                    if dist_utils.any_rank(interrupt.requested, env):
                        stopped_by = "interrupt"
                        break
                if stopped_by == "max_steps" and self.patience_spent():
                    stopped_by = "early_stop"
            finally:
                if self.progress is not None:
                    self.progress.close()
                self.profiler.close()
                summary = self.profiler.summary
                if summary is not None:
                    print(f"foundry: profile: {summary['arithmetic_share']:.0%} of the profiled steps' time in "
                          f"matmul and attention kernels; tables in {self.profiler.out}", file=sys.stderr)

            # ---- the end: evaluate (unless this step just was), save, record -------------------------
            if self.evaluators and stopped_by != "interrupt" and last_eval_step != self.step:
                last_eval = self.evaluate()
                self.log.write({"step": self.step, **last_eval})
                if self._record_best(last_eval):
                    self.best_step = self.step
            self.save(last_eval.get(self.best_metric) if self.best_metric else None)
            self.log.close()
            final = self.final
            final.update(last_eval)
            final.update({"step": self.step, "stopped_by": stopped_by,
                          "train_seconds": round(time.perf_counter() - self.started, 2), "lr_scale": self.lr_scale})
            if self.best_metric and math.isfinite(self.best_value):
                final["best/" + self.best_metric] = self.best_value
                final["best_step"] = self.best_step
            if stopped_by == "interrupt":
                if self.is_main:
                    self.record.write({"status": "interrupted", **final})
                raise KeyboardInterrupt
        return final


def train(model: torch.nn.Module, objective: Objective, source: BatchSource, cfg, run_dir, tokenizer,
          evaluators: dict[str, Evaluator] | None = None, resume: bool = False, stage: str = "pretrain",
          parents: dict | None = None, data_manifests: dict | None = None, best_metric: str | None = None,
          record_config=None, env: dist_utils.DistEnv | None = None, run_record: RunRecord | None = None,
          eval_at_start: bool = False) -> dict:
    """`Trainer(...).fit()` for callers without a stage runner (tests, small scripts): sets up the distributed
    environment and the threads when not given, and writes run.json "running" and then "finished" itself
    unless a `run_record` is handed in (whose owner finishes it). Returns the final metrics."""
    run_dir = Path(run_dir)
    if env is None:
        env = dist_utils.setup_distributed(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
    owns_record = run_record is None
    if owns_record:
        run_record = RunRecord(run_dir, stage, record_config if record_config is not None else cfg, parents,
                               data_manifests, resume=resume)
    trainer = Trainer(model, objective, source, cfg, run_dir, tokenizer, run_record, env, evaluators=evaluators,
                      resume=resume, stage=stage, best_metric=best_metric, eval_at_start=eval_at_start)
    if owns_record and env.is_main and not resume:
        run_record.write({"status": "running"})
    final = trainer.fit()
    if owns_record and env.is_main:
        run_record.write({"status": "finished", **final})
    return final


def _maybe_save_best(results: dict, best_metric: str | None, best_value: float, run_dir: Path, model, tokenizer,
                     step: int, stage: str, is_main: bool, env) -> float:
    if not best_metric or best_metric not in results:
        return best_value
    value = results[best_metric]
    if math.isfinite(value) and value < best_value:
        weights = dist_utils.full_model_state(model, env)  # a collective under FSDP
        if is_main:
            save_checkpoint(run_dir / "checkpoints" / "best", model, tokenizer, None,
                            {"step": step, "stage": stage, "val_loss": value, "metric": best_metric},
                            model_state=weights)
        dist_utils.barrier(env)
        return value
    return best_value
