"""lm-evaluation-harness tasks on a foundry model: an outside check on foundry's own evaluation.

`FoundryLM` implements lm-evaluation-harness's `LM` interface over a foundry model and tokenizer with
foundry's own scoring code, so a number from `foundry eval --lm-eval TASK` is lm-eval's prompt
building, metrics and aggregation on top of the same log-likelihoods `foundry eval --tasks` uses:

- `loglikelihood`: `split_continuation` (trailing context spaces move onto the continuation) and
  `loglikelihoods`, every sequence read after `<|endoftext|>` as documents are in training;
- `loglikelihood_rolling`: `stream_loss` over the text after `<|endoftext|>`, in disjoint windows of
  the model's context (lm-eval's rolling windows with a one-token context do the same);
- `generate_until`: `foundry.serve.generate.generate`, greedy unless the task samples, cut at the
  first of the task's stop strings.

Everything runs offline: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set before lm-eval or `datasets`
load anything, so a task whose data is not local (or in the Hugging Face cache) fails with a one-line
`ConfigError` naming it instead of downloading. Local task YAMLs come in with `include_path`
(`--lm-eval-include DIR`); data/eval/lm_eval/ holds one, foundry's kjv-book task (docs/EVALUATION.md).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from pathlib import Path

from foundry.errors import ConfigError

# Before lm_eval (and through it `datasets` and `huggingface_hub`) read them at import time.
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)

try:
    import lm_eval
    from lm_eval.api.model import LM
except ImportError as e:  # an optional extra
    raise ConfigError("--lm-eval needs lm-evaluation-harness: pip install 'foundry[lmeval]'") from e

from foundry.eval.harness import loglikelihoods, prompt_ids, split_continuation
from foundry.eval.perplexity import stream_loss


class FoundryLM(LM):
    """lm-eval's `LM` over a foundry model (any device) and its tokenizer."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = split_continuation(self.tokenizer, context, continuation)
            pairs.append(([self.tokenizer.eos_id] + ctx, cont))
        return loglikelihoods(self.model, pairs, self.batch_size, greedy=True)

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args[:1]
            nats, _ = stream_loss(self.model, [self.tokenizer.eos_id] + self.tokenizer.encode(text),
                                  self.model.config.max_seq_len, self.batch_size)
            out.append(-nats)
        return out

    def generate_until(self, requests) -> list[str]:
        return [self._generate(*request.args[:2]) for request in requests]

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        from foundry.serve.generate import generate

        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", 256))
        temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
        ids = prompt_ids(self.tokenizer, context, chat=False)
        # Room for the answer, as lm-eval's HF model truncates the context by max_gen_toks.
        ids = ids[-max(1, self.model.config.max_seq_len - max_new):]
        tokens: list[int] = []
        text = ""
        for token in generate(self.model, self.tokenizer, ids, max_new_tokens=max_new, temperature=temperature):
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special=True)
            cut = min((text.find(s) for s in until if s and s in text), default=-1)
            if cut >= 0:
                return text[:cut]
        return text


def task_manager(tasks: list[str], include_path: str | Path | None = None):
    """lm-eval's task index for `tasks`: the YAMLs under `include_path` alone when they define every one
    of them (indexing lm-eval's own ~15,000 task configs takes seconds), else those plus lm-eval's own."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"{include_path}: --lm-eval-include must be a folder of lm-eval task YAMLs")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task INFO/WARNING chatter
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def check_tasks(tasks: list[str], manager) -> list[str]:
    """`tasks` with glob patterns expanded; an unknown name is a ConfigError with the nearest names."""
    known = manager.all_tasks
    names: list[str] = []
    for name in tasks:
        matched = manager.match_tasks([name]) if any(c in name for c in "*?[") else \
            [name] if name in known or (name.endswith(".yaml") and Path(name).is_file()) else []
        if not matched:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(f"--lm-eval {name}: no such lm-eval task; {hint}"
                              f"local task YAMLs come in with --lm-eval-include DIR")
        names += [m for m in matched if m not in names]
    return names


def _force_offline() -> None:
    """The offline switches again, for `datasets`/`huggingface_hub` imported before this module."""
    import datasets
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def load_tasks(names: list[str], manager) -> list:
    """lm-eval Task/Group objects, one name at a time so a failure names its task."""
    _force_offline()
    import datasets

    datasets.disable_progress_bars()
    loaded = []
    for name in names:
        try:
            got = manager.load([name])
        except Exception as e:  # lm-eval and datasets raise many kinds for a missing dataset
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise ConfigError(f"--lm-eval {name}: the task could not be loaded ({reason}); foundry eval runs "
                              "offline: a dataset must be local or already in the Hugging Face cache") from e
        group = got.get("groups", {}).get(name)
        loaded += [group] if group is not None else list(got["tasks"].values())
    return loaded


def _metric_key(key: str) -> str:
    """lm-eval's "acc,none" -> "acc"; a metric after a named filter keeps it: "exact_match,strict-match"."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else key


def run_lm_eval(model, tokenizer, tasks: list[str], include_path: str | Path | None = None,
                limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 16,
                manager=None) -> dict:
    """lm-eval `tasks` on a foundry model: {task: {metric: value, metric_stderr: value, "n", "shots"}}.

    `num_fewshot` None keeps each task's own default; `limit` scores only the first items of each task.
    """
    manager = manager or task_manager(tasks, include_path)
    objs = load_tasks(check_tasks(tasks, manager), manager)
    out = lm_eval.simple_evaluate(model=FoundryLM(model, tokenizer, batch_size), tasks=objs, task_manager=manager,
                                  num_fewshot=num_fewshot, limit=limit, log_samples=False)
    results: dict = {}
    for task, metrics in out["results"].items():
        row: dict = {}
        for key, value in metrics.items():
            if key == "alias" or "," not in key:
                continue
            finite = isinstance(value, (int, float)) and math.isfinite(value)  # lm-eval writes "N/A" stderrs
            row[_metric_key(key)] = float(value) if finite else None
        n = out.get("n-samples", {}).get(task, {})
        row.update({"n": n.get("effective"), "shots": out.get("n-shot", {}).get(task),
                    "version": out.get("versions", {}).get(task)})
        results[task] = row
    return results


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


__all__ = ["FoundryLM", "check_tasks", "load_tasks", "lm_eval_version", "run_lm_eval", "task_manager"]
