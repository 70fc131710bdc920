"""`foundry rl`: reinforcement learning with verifiable rewards (GRPO) on the one training loop.

    foundry rl --config recipes/rl.yaml [--resume] [group_size=8 kl_beta=0.0 train.max_steps=50 ...]

GRPO (Shao et al. 2024, "DeepSeekMath", sec. 4.1) is an objective plus a batch source handed to the loop:
- The batch source draws `micro_batch_size` prompts, samples `group_size` (G) completions for each with the
  policy being trained (batched, KV-cached: each prompt is prefilled ONCE and its keys and values copied
  into its G rows of one ragged cache), scores them with the recipe's verifiers (`foundry.train.verifiers`)
  and turns rewards into advantages within each group. The frozen reference's per-token log-probs are
  computed once per batch, there, without gradients; under `lora` the reference is the policy's own
  weights with the adapters switched off (`foundry.model.lora.disable_adapters`), not a second copy.
- The objective is the clipped policy-gradient loss over completion tokens only (prompt tokens and padding
  are masked) plus an optional KL penalty to the reference, the k3 estimator (Schulman 2020,
  "Approximating KL divergence"), which is exactly zero where the two policies agree.
- Normalisation (docs/RL.md): by default Dr. GRPO's (Liu et al. 2025, "Understanding R1-Zero-Like
  Training", sec. 3.1): the advantage is r - mean(group) (no division by the group's std, which
  over-weights groups that are nearly all right or all wrong), and the loss is summed over every
  completion token and divided by a CONSTANT (completions x max_new_tokens), not by each completion's own
  length, whose 1/|o| makes long wrong answers cheap and so favours them. `advantage: mean_std` and
  `loss_norm: sequence` give the original GRPO.
- One policy update per batch (TRL's default, num_iterations=1): the sampling policy is the current one,
  so the ratio is exp(logp - logp.detach()) = 1 with the policy gradient's value; the clip matters only
  when a batch carries `old_logps` from an older policy.
- Resume is exact: the sampling generator is seeded from (seed, batches drawn), which the checkpoint keeps
  with the data position.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from foundry.config import TrainConfig
from foundry.errors import ConfigError, DataError
from foundry.lm_metrics import IGNORE_INDEX
from foundry.train.batches import ShuffledRows
from foundry.model.decoding import Sampling, Sequence, SharedDraw, decode
from foundry.train.stage import LoRASpec, StageConfig, StageRunner, chat_template_field
from foundry.train.verifiers import RewardFunction, VerifierSpec


class GRPOTrainConfig(TrainConfig):
    """TrainConfig with RL defaults; micro_batch_size counts PROMPTS (each gives group_size completions)."""

    max_steps: int = Field(100, gt=0)
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = Field("constant", description="lr schedule")
    eval_every: int = Field(25, gt=0)
    micro_batch_size: int = Field(4, gt=0, description="prompts per micro-batch per rank (x group_size completions)")
    weight_decay: float = Field(0.0, ge=0)
    log_every: int = Field(1, gt=0)
    checkpoint_every: int = Field(25, gt=0)


class GRPOConfig(StageConfig):
    init: str = Field(description="model to start from (usually an SFT run that taught the answer format); also "
                      "the frozen reference")
    chat_template: str = chat_template_field()
    prompts: str = Field(description="prompt JSONL: {\"prompt\": str, \"answer\": ...} per line (answer if a "
                         "verifier needs one)")
    val_prompts: str | None = Field(None, description="held-out prompt JSONL: pass@1 (greedy) and pass@G")
    verifiers: list[VerifierSpec] = Field(description="reward = weighted sum of their scores; the first is the "
                                          "task's check (score >= 0.5: solved)")
    group_size: int = Field(8, description="G: completions sampled per prompt (at least 2)")
    max_new_tokens: int = Field(32, gt=0, description="length cap per completion (capped ones are counted)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    top_k: int | None = Field(None, gt=0, description="sample among the top k tokens only")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range of the probability ratio")
    kl_beta: float = Field(0.04, ge=0, description="weight of the k3 KL penalty to the reference (0: no reference)")
    lora: LoRASpec | None = Field(None, description="train low-rank adapters only; the reference is the same weights "
                                  "with the adapters off, no second copy (merged into the saved best)")
    advantage: Literal["mean", "mean_std"] = Field("mean", description="mean: r - mean(group) (Dr. GRPO); "
                                                   "mean_std: divided by the group's std too (GRPO)")
    loss_norm: Literal["constant", "token", "sequence"] = Field(
        "constant", description="constant: tokens summed / (completions x max_new_tokens) (Dr. GRPO); token: / "
        "completion tokens (DAPO); sequence: mean per completion, then over completions (GRPO)")
    eval_samples: int | None = Field(None, gt=0, description="samples per held-out prompt for pass@G "
                                     "(default group_size)")
    verifier_timeout: float = Field(10.0, gt=0, description="seconds one verifier call may take; a call over it "
                                    "ends the run with one line naming the verifier and the prompt")
    train: GRPOTrainConfig = GRPOTrainConfig()

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"group_size must be at least 2, got {v}: GRPO's advantage compares completions "
                             "of one prompt")
        return v


# ---- prompts ------------------------------------------------------------------------------------------

def read_prompts(path: str | Path) -> list[dict]:
    """Records `{"prompt": str, ...}` from JSONL, each with its line number as `_line`."""
    from foundry.data.chat import iter_jsonl

    items = []
    for lineno, record in iter_jsonl(path, "prompt file"):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise DataError(f"{path}:{lineno}: expected an object with a non-empty 'prompt' string")
        items.append({**record, "_line": lineno})
    if not items:
        raise DataError(f"{path}: no prompts")
    return items


def encode_prompts(tokenizer, items: list[dict], block_size: int, max_new_tokens: int, path: str) -> list[list[int]]:
    """Each prompt as one user turn of the chat template ending in the generation prompt (as `foundry eval`
    and `foundry chat` render it); a prompt that leaves no room for max_new_tokens is an error."""
    from foundry.data.chat import render_chat

    encoded = []
    for item in items:
        ids, _ = render_chat(tokenizer, [{"role": "user", "content": item["prompt"]}], add_generation_prompt=True)
        if len(ids) + max_new_tokens > block_size:
            raise DataError(f"{path}:{item['_line']}: prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} "
                            f"exceeds train.block_size={block_size}; shorten it or raise train.block_size")
        encoded.append(list(ids))
    return encoded


# ---- sampling: G completions per prompt, on the one batched decoder --------------------------------------

def sample_completions(model, prompts: list[list[int]], n: int, max_new_tokens: int, stop_ids: set[int],
                       temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
                       pad_id: int = 0) -> list[tuple[list[int], bool]]:
    """(tokens, stopped) for n completions of each prompt, prompt-major (prompt 0's n first).

    The one batched decoder (`foundry.model.decoding`, the serving engine's): each prompt is prefilled once
    and its keys and values copied into its n rows of a ragged cache, every row decodes in one batched forward
    pass per token, and all rows are drawn together from `generator` (a `SharedDraw`). `stopped` is False
    when the length cap ended the completion; the stop token itself is not in `tokens`.
    """
    sampling = Sampling(max_new_tokens, temperature, top_k, stop_ids=tuple(sorted(stop_ids)))
    draw = SharedDraw(generator)
    seqs = [Sequence(list(p), sampling, draw=draw) for p in prompts for _ in range(n)]
    decode(model, None, seqs, max_len=max(len(p) for p in prompts) + max_new_tokens, pad_id=pad_id)
    failed = next((seq.error for seq in seqs if seq.error is not None), None)
    if failed is not None:
        raise failed
    return [(seq.tokens, seq.finish_reason == "stop") for seq in seqs]


# ---- log-probs, advantages, the loss ------------------------------------------------------------------

def token_logps(model, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t | prefix) per position (B, T), 0 where the target is -100; computed in float32."""
    from foundry.train.chunked_ce import scored_token_logps

    mask = targets != IGNORE_INDEX
    scored = scored_token_logps(model, input_ids, targets)  # (n,): completion positions only, chunked
    return torch.zeros(targets.shape, dtype=scored.dtype, device=scored.device).masked_scatter(mask, scored)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """r - mean(group) (Dr. GRPO); with `scale`, divided by the group's std + eps as in GRPO (Shao et al. 2024,
    eq. in sec. 4.1.2). rewards (N,) prompt-major, N = prompts x group_size."""
    grouped = rewards.view(-1, group_size)  # (P, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def grpo_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                    advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_beta: float):
    """Per-token GRPO loss and k3 KL (both (N, T), zero off the completion tokens).

    loss_t = -min(ratio_t A, clip(ratio_t, 1-eps, 1+eps) A) + beta KL_t   (PPO's clipped surrogate, Schulman
    et al. 2017 eq. 7, with GRPO's group advantage A), ratio_t = exp(logp_t - old_logp_t), and
    KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (k3: unbiased, always >= 0; DeepSeekMath eq. 4).
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None].to(logps.dtype)
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
    else:
        kl = torch.zeros_like(logps)
    mask = mask.to(logps.dtype)
    return (pg + kl_beta * kl) * mask, kl * mask


class GRPOObjective:
    """GRPO's clipped policy-gradient loss (+ k3 KL) on a batch of scored completions. Holds no model: the
    reference's log-probs ride in the batch. Units per `loss_norm` (see the module docstring); metric sums
    are per-completion values scaled so that the loop's division by units gives their mean."""

    name = "grpo"

    def __init__(self, clip_eps: float = 0.2, kl_beta: float = 0.0, loss_norm: str = "constant",
                 max_new_tokens: int = 32):
        self.clip_eps, self.kl_beta, self.loss_norm, self.max_new_tokens = clip_eps, kl_beta, loss_norm, max_new_tokens

    def units(self, batch: dict) -> int:
        n = int(batch["input_ids"].shape[0])
        if self.loss_norm == "constant":
            return n * self.max_new_tokens
        if self.loss_norm == "token":
            return int((batch["targets"] != IGNORE_INDEX).sum())
        return n

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = batch["targets"]
        mask = targets != IGNORE_INDEX
        logps = token_logps(model, batch["input_ids"], targets)  # (N, T)
        old = batch.get("old_logps")
        old = logps.detach() if old is None else old
        per_token, kl = grpo_token_loss(logps, old, batch.get("ref_logps"), batch["advantages"], mask,
                                        self.clip_eps, self.kl_beta)
        lengths = mask.sum(1).clamp_min(1)
        if self.loss_norm == "sequence":
            loss_sum = (per_token.sum(1) / lengths).sum()
        else:
            loss_sum = per_token.sum()
        n = targets.shape[0]
        per_completion = self.units(batch) / n  # metric sums x this / units = mean per completion
        ratio = torch.exp(logps.detach() - old)
        clipped = ((ratio - 1).abs() > self.clip_eps) & mask
        metrics = {"kl": (kl.detach().sum(1) / lengths).sum() * per_completion,
                   "clip_fraction": (clipped.sum(1) / lengths).sum() * per_completion}
        return loss_sum, metrics


# ---- the batch source -----------------------------------------------------------------------------------

@dataclass
class Window:
    """What the source measured since the loop last logged (per step averages are taken from these)."""

    batches: int = 0
    generation_s: float = 0.0
    scoring_s: float = 0.0
    reference_s: float = 0.0
    completions: int = 0
    tokens: int = 0
    capped: int = 0
    reward: float = 0.0
    solved: int = 0
    groups: int = 0
    zero_adv_groups: int = 0
    extra: dict = field(default_factory=dict)


class GroupBatches(ShuffledRows):
    """Prompts in a per-epoch shuffled order; each batch is G sampled, scored completions per prompt.

    Every batch carries `input_ids`, `targets` (completion tokens only, the stop token `<|end|>` included
    when the completion stopped), `advantages` (N,), and `ref_logps` (N, T) when there is a reference.
    """

    def __init__(self, model, reference, tokenizer, items: list[dict], encoded: list[list[int]],
                 reward: RewardFunction, cfg: GRPOConfig, path: str, rank: int = 0, world_size: int = 1):
        super().__init__(len(items), cfg.train.seed, rank, world_size)
        self.model, self.reference, self.tokenizer = model, reference, tokenizer
        # the reference is the policy itself with its adapters off (LoRA), or a frozen copy
        self.reference_context = contextlib.nullcontext
        self.items, self.encoded, self.reward, self.cfg, self.path = items, encoded, reward, cfg, path
        self.draws = 0
        self.window = Window()
        self.capped_total = 0
        self.stop_ids = set(tokenizer.stop_ids)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "draws": self.draws, "capped_total": self.capped_total}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.draws, self.capped_total = int(state.get("draws", 0)), int(state.get("capped_total", 0))

    def collate(self, rows: list[list[int]]) -> dict:
        cfg, G = self.cfg, self.cfg.group_size
        index = [r[0] for r in rows]
        w = self.window
        # 1. generation: seeded by (seed, batches drawn), so a resumed run samples what the first run would have
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + 7919 * self.draws + self.rank)
        self.draws += 1
        outs = sample_completions(self.model, [self.encoded[i] for i in index], G, cfg.max_new_tokens, self.stop_ids,
                                  cfg.temperature, cfg.top_k, generator, self.tokenizer.pad_id)
        t1 = time.perf_counter()
        # 2. scoring
        jobs = []
        for k, (tokens, stopped) in enumerate(outs):
            item = self.items[index[k // G]]
            jobs.append((self.tokenizer.decode(tokens, skip_special=True).strip(), {**item, "n_tokens": len(tokens)},
                         f"{self.path}:{item['_line']} (prompt {item['prompt'][:40]!r})"))
        scored = self.reward.score_many(jobs, cfg.verifier_timeout)  # in a worker process, under the timeout
        rewards, solved = [r for r, _ in scored], [ok for _, ok in scored]
        rewards_t = torch.tensor(rewards, dtype=torch.float32)
        advantages = group_advantages(rewards_t, G, cfg.advantage == "mean_std")
        t2 = time.perf_counter()
        # 3. the batch: prompt + completion (+ the stop token, which the policy must learn to emit)
        eot = self.tokenizer.eot_id
        seqs, starts = [], []
        for k, (tokens, stopped) in enumerate(outs):
            prompt = self.encoded[index[k // G]]
            seqs.append(prompt + tokens + ([eot] if stopped else []))
            starts.append(len(prompt))
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), self.tokenizer.pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
        for r, (seq, n_prompt) in enumerate(zip(seqs, starts)):
            input_ids[r, :len(seq)] = torch.tensor(seq)
            targets[r, n_prompt - 1:len(seq) - 1] = torch.tensor(seq[n_prompt:])  # position t predicts t+1
        batch = {"input_ids": input_ids, "targets": targets, "advantages": advantages, "rewards": rewards_t}
        if self.reference is not None:  # the reference's log-probs: once per batch, no gradient
            with torch.no_grad(), self.reference_context():
                batch["ref_logps"] = token_logps(self.reference, input_ids.to(device), targets.to(device)).cpu()
        t3 = time.perf_counter()
        # 4. what to log
        capped = sum(1 for _, stopped in outs if not stopped)
        self.capped_total += capped
        grouped = rewards_t.view(-1, G)
        w.batches += 1
        w.generation_s += t1 - t0
        w.scoring_s += t2 - t1
        w.reference_s += t3 - t2
        w.completions += len(outs)
        w.tokens += sum(len(t) for t, _ in outs)
        w.capped += capped
        w.reward += float(rewards_t.sum())
        w.solved += sum(solved)
        w.groups += grouped.shape[0]
        w.zero_adv_groups += int((grouped.max(1).values == grouped.min(1).values).sum())
        return batch

    def step_metrics(self, steps: int, optimise_s: float) -> dict:
        """Averages over the loop's logging window (`steps` optimiser steps), then a fresh window."""
        w, self.window = self.window, Window()
        if not w.completions:
            return {}
        steps = max(steps, 1)
        return {"reward": w.reward / w.completions, "solved": w.solved / w.completions,
                "completion_len": w.tokens / w.completions, "capped": w.capped / w.completions,
                "capped_total": self.capped_total, "zero_adv_groups": w.zero_adv_groups / w.groups,
                "time/generation_s": round(w.generation_s / steps, 4), "time/scoring_s": round(w.scoring_s / steps, 4),
                "time/reference_s": round(w.reference_s / steps, 4), "time/optimise_s": round(optimise_s / steps, 4)}


# ---- held-out evaluation ------------------------------------------------------------------------------

def pass_at_evaluator(tokenizer, items: list[dict], encoded: list[list[int]], reward: RewardFunction, cfg: GRPOConfig,
                      path: str, batch_prompts: int = 16):
    """fn(model) -> pass@1 (greedy answer solved), pass@G (any of G samples solved, at the training
    temperature, fixed seed), mean completion length and the share capped by max_new_tokens."""
    G = cfg.eval_samples or cfg.group_size
    stop_ids = set(tokenizer.stop_ids)

    def solved_by(outs, chunk, n):
        jobs = []
        for k, (tokens, _) in enumerate(outs):
            item = items[chunk[k // n]]
            jobs.append((tokenizer.decode(tokens, skip_special=True).strip(), {**item, "n_tokens": len(tokens)},
                         f"{path}:{item['_line']} (prompt {item['prompt'][:40]!r})"))
        return [ok for _, ok in reward.score_many(jobs, cfg.verifier_timeout)]

    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(cfg.train.seed + 12345)
        greedy, any_of_g, lengths, capped = [], [], [], 0
        for start in range(0, len(items), batch_prompts):
            chunk = list(range(start, min(start + batch_prompts, len(items))))
            prompts = [encoded[i] for i in chunk]
            outs = sample_completions(model, prompts, 1, cfg.max_new_tokens, stop_ids, 0.0, None, None, tokenizer.pad_id)
            greedy += solved_by(outs, chunk, 1)
            lengths += [len(t) for t, _ in outs]
            capped += sum(1 for _, s in outs if not s)
            outs = sample_completions(model, prompts, G, cfg.max_new_tokens, stop_ids, cfg.temperature, cfg.top_k,
                                      generator, tokenizer.pad_id)
            flags = solved_by(outs, chunk, G)
            any_of_g += [any(flags[j * G:(j + 1) * G]) for j in range(len(chunk))]
        n = len(items)
        return {"pass@1": sum(greedy) / n, f"pass@{G}": sum(any_of_g) / n, "completion_len": sum(lengths) / n,
                "capped": capped / n}

    return evaluate


# ---- the verb -----------------------------------------------------------------------------------------

def run_grpo(cfg: GRPOConfig, resume: bool = False) -> dict:
    """Reinforce `cfg.init` against the verifiers as `cfg` says; returns the final metrics."""

    with StageRunner("rl", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        # every input checked before the run directory is touched
        reward = RewardFunction(cfg.verifiers)
        items = read_prompts(cfg.prompts)
        reward.check_items(items, cfg.prompts)
        val_items = read_prompts(cfg.val_prompts) if cfg.val_prompts else None
        if val_items is not None:
            reward.check_items(val_items, cfg.val_prompts)
        start = runner.load_start(cfg.init)
        model, tokenizer = start.model, start.tokenizer
        encoded = encode_prompts(tokenizer, items, tc.block_size, cfg.max_new_tokens, cfg.prompts)
        val_encoded = (encode_prompts(tokenizer, val_items, tc.block_size, cfg.max_new_tokens, cfg.val_prompts)
                       if val_items is not None else None)
        if tc.dtype == "bfloat16":
            raise ConfigError("rl: train.dtype bfloat16 is not supported yet (log-prob ratios need float32); use float32")

        data_files = [cfg.prompts] + ([cfg.val_prompts] if cfg.val_prompts else [])
        out_dir = runner.open_run_dir(data_files=data_files)
        runner.apply_lora(model, cfg.lora)
        model.to(env.device)
        reference = None
        if cfg.kl_beta > 0 and cfg.lora is not None:  # the same weights, adapters off: no copy
            from foundry.model.lora import disable_adapters

            reference = model
        elif cfg.kl_beta > 0:  # the initial policy, frozen: one more copy of the weights in memory
            reference = copy.deepcopy(model).eval()
            reference.requires_grad_(False)
        source = GroupBatches(model, reference, tokenizer, items, encoded, reward, cfg, cfg.prompts,
                              env.rank, env.world_size)
        if reference is model:
            source.reference_context = lambda: disable_adapters(model)
        objective = GRPOObjective(cfg.clip_eps, cfg.kl_beta, cfg.loss_norm, cfg.max_new_tokens)
        evaluators = {}
        if val_items is not None:
            evaluators["heldout"] = pass_at_evaluator(tokenizer, val_items, val_encoded, reward, cfg, cfg.val_prompts)
        G = cfg.group_size
        runner.log(f"foundry rl: GRPO on {len(items)} prompts x {G} completions (<= {cfg.max_new_tokens} tokens, "
                   f"temperature {cfg.temperature}); verifiers {', '.join(s.name for s in cfg.verifiers)}; "
                   f"advantage {cfg.advantage}, loss_norm {cfg.loss_norm}, kl_beta {cfg.kl_beta} -> {out_dir}")
        model.train()
        results = runner.train(model, objective, source, tokenizer, evaluators=evaluators, eval_at_start=True,
                               lora=cfg.lora)
        results["capped_total"] = source.capped_total
        summary = _summarise(out_dir / "metrics.jsonl", G if not cfg.eval_samples else cfg.eval_samples)
        results.update(summary["results"])
        for line in summary["lines"]:
            runner.log(f"foundry rl: {line}")
        return runner.finish(results, summary=["reward", "kl", "heldout/pass@1"],
                             extra=[f"{source.capped_total} completions capped at {cfg.max_new_tokens} tokens"])


def _summarise(metrics_path: Path, G: int) -> dict:
    """Held-out before/after and the mean time per step split, read back from metrics.jsonl."""
    import json

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "heldout/pass@1" in r]
    steps = [r for r in records if "time/generation_s" in r]
    lines, results = [], {}
    if len(evals) >= 1:
        first, last = evals[0], evals[-1]
        results["heldout_before"] = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("heldout/")}
        lines.append(f"held-out pass@1 {first['heldout/pass@1']:.3f} -> {last['heldout/pass@1']:.3f}, "
                     f"pass@{G} {first[f'heldout/pass@{G}']:.3f} -> {last[f'heldout/pass@{G}']:.3f} "
                     f"(steps {first['step']} -> {last['step']})")
    if steps:
        parts = {k: sum(r[k] for r in steps) / len(steps) for k in
                 ("time/generation_s", "time/scoring_s", "time/reference_s", "time/optimise_s")}
        results["time_per_step"] = {k.split("/")[1]: round(v, 4) for k, v in parts.items()}
        lines.append("time per step: " + ", ".join(f"{k.split('/')[1].removesuffix('_s')} {v:.3f}s"
                                                   for k, v in parts.items()))
    return {"results": results, "lines": lines}
