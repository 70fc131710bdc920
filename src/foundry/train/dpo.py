"""`foundry dpo`: preference optimisation (DPO, IPO, conservative DPO) of an SFT checkpoint.

    foundry dpo --config recipes/dpo.yaml [--resume] [loss=ipo beta=0.5 train.max_steps=100 ...]

DPO is an objective plus a batch source handed to the one training loop:
- The data are JSONL `{"prompt" or "messages", "chosen", "rejected"}` (`foundry.data.prefs`). The prompt is
  rendered by the one chat template with the generation prompt; each completion is the assistant
  turn's content plus `<|end|>`, exactly as SFT supervised it.
- The reference model is the initial policy (under `lora`, the same weights with the adapters switched
  off: `foundry.model.lora.disable_adapters`). Its sequence log-probabilities are computed ONCE, before
  training, without gradients, stored with the pairs and cached in `RUN/reference_logps.safetensors`
  (keyed by the checkpoint, tokenizer, data and block size), so training holds ONE model in memory
  and a resumed run reuses them instead of a second forward pass per step.
- The losses are pure functions in `foundry.train.preference`, each citing its paper; the objective
  logs implicit-reward margins and accuracy as metric sums the loop averages per pair.
- Pairs longer than the context are fitted by a stated rule (`fit_pair`) and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from foundry.config import TrainConfig
from foundry.lm_metrics import IGNORE_INDEX
from foundry.train.batches import ShuffledRows
from foundry.train.preference import preference_loss, row_sums
from foundry.train.stage import FineTuneConfig, LoRASpec, StageRunner

REFERENCE_FILE = "reference_logps.safetensors"


class DPOTrainConfig(TrainConfig):
    """TrainConfig with preference-tuning defaults; micro_batch_size counts PAIRS."""

    max_steps: int = Field(200, gt=0)
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(10, ge=0)
    eval_every: int = Field(50, gt=0)
    micro_batch_size: int = Field(8, gt=0, description="preference pairs per micro-batch per rank")
    weight_decay: float = Field(0.0, ge=0)


class DPOConfig(FineTuneConfig):
    init: str = Field(description="SFT model (a foundry checkpoint, a run directory or an imported Hugging Face "
                      "directory); also the frozen reference model")
    data: str = Field(description="preference JSONL: {\"prompt\" or \"messages\", \"chosen\", \"rejected\"}")
    val_data: str | None = Field(None, description="held-out preference JSONL: loss, reward margin, accuracy")
    loss: Literal["dpo", "ipo", "cdpo"] = Field("dpo", description="dpo (Rafailov et al. 2023), ipo (Azar et al. "
                                                "2023) or cdpo (conservative DPO, label smoothing)")
    beta: float = Field(0.1, gt=0, description="strength of the KL tie to the reference (tau in IPO)")
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="cdpo: assumed share of flipped labels")
    lora: LoRASpec | None = Field(None, description="train low-rank adapters only; the reference is the same weights "
                                  "with the adapters off (merged into the saved best)")
    train: DPOTrainConfig = DPOTrainConfig()


# ---- pairs -> token rows -------------------------------------------------------------------------------

@dataclass
class PairStats:
    pairs: int = 0
    prompt_cut: int = 0  # prompts that lost their earliest tokens
    completion_cut: int = 0  # pairs whose completion tails were cut

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fit_pair(prompt: list[int], chosen: list[int], rejected: list[int], block_size: int,
             stats: PairStats) -> tuple[list[int], list[int], list[int]]:
    """Fit prompt + completion into block_size tokens by the stated rule.

    Rule: (1) keep the END of the prompt (nearest the answer), cut to max(block_size - longest completion,
    block_size // 2) tokens; (2) if a completion still does not fit, cut its tail (it then lacks `<|end|>`).
    """
    stats.pairs += 1
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > block_size:
        keep = max(block_size - longest, block_size // 2)
        if len(prompt) > keep:
            prompt = prompt[-keep:]
            stats.prompt_cut += 1
        room = block_size - len(prompt)
        if longest > room:
            chosen, rejected = chosen[:room], rejected[:room]
            stats.completion_cut += 1
    return prompt, chosen, rejected


def encode_pairs(tokenizer, pairs, block_size: int) -> tuple[list[tuple[list[int], list[int], list[int]]], PairStats]:
    """(prompt_ids, chosen_ids, rejected_ids) per pair, via the one chat template, fitted to `block_size`."""
    from foundry.data.prefs import encode_preference

    stats = PairStats()
    encoded = [fit_pair(*encode_preference(tokenizer, p.messages, p.chosen, p.rejected, f"preference pair {i}"),
                        block_size, stats)
               for i, p in enumerate(pairs, 1)]
    return encoded, stats


def collate_pairs(encoded, rows: list[list[int]], pad_id: int, reference: torch.Tensor | None) -> dict:
    """B pairs -> one (2B, T) batch: chosen rows first, then rejected; T is the longest row in the batch.

    targets are -100 except on completion tokens; the reference log-probs ride along as (B,) tensors.
    """
    index = [r[0] for r in rows]
    seqs = [encoded[i][0] + encoded[i][1] for i in index] + [encoded[i][0] + encoded[i][2] for i in index]
    prompt_lens = [len(encoded[i][0]) for i in index] * 2
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for r, (seq, n_prompt) in enumerate(zip(seqs, prompt_lens)):
        input_ids[r, :len(seq)] = torch.tensor(seq)
        # position t predicts token t+1; only completion tokens (index >= n_prompt) are scored
        targets[r, n_prompt - 1:len(seq) - 1] = torch.tensor(seq[n_prompt:])
    batch = {"input_ids": input_ids, "targets": targets, "pair_index": torch.tensor(index)}
    if reference is not None:
        batch["ref_chosen_logps"] = reference[index, 0]
        batch["ref_rejected_logps"] = reference[index, 1]
    return batch


class PairBatches(ShuffledRows):
    """Preference pairs in a per-epoch shuffled order (seeded, resumable), with cached reference log-probs."""

    def __init__(self, encoded, seed: int, pad_id: int, reference: torch.Tensor | None = None,
                 rank: int = 0, world_size: int = 1):
        super().__init__(len(encoded), seed, rank, world_size)
        self.encoded, self.pad_id, self.reference = encoded, pad_id, reference

    def collate(self, rows: list[list[int]]) -> dict:
        return collate_pairs(self.encoded, rows, self.pad_id, self.reference)


# ---- the objective ---------------------------------------------------------------------------------------

def pair_logps(model, batch: dict, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy log-probs of the chosen and rejected completions: one forward over all 2B rows, projecting
    only the completion positions to the vocabulary, a chunk at a time (prompt logits never exist)."""
    from foundry.train.chunked_ce import scored_token_logps

    targets = batch["targets"]
    token_logps = scored_token_logps(model, batch["input_ids"], targets)  # (n,), n = completion tokens
    logps = row_sums(token_logps, targets, average=average)  # (2B,)
    B = logps.shape[0] // 2
    return logps[:B], logps[B:]


def _token_counts(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    n = (batch["targets"] != IGNORE_INDEX).sum(-1).clamp(min=1)  # (2B,)
    B = n.shape[0] // 2
    return n[:B], n[B:]


class PreferenceObjective:
    """DPO / IPO / cDPO on a batch with cached reference log-probs. Holds no model: the reference lives in
    the batch as numbers. Units are pairs; metric sums are averaged per pair by the loop."""

    name = "preference"

    def __init__(self, loss: str = "dpo", beta: float = 0.1, label_smoothing: float = 0.0):
        self.loss_name, self.beta, self.label_smoothing = loss, beta, label_smoothing

    def units(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0] // 2)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy_chosen, policy_rejected = pair_logps(model, batch)  # summed over completion tokens, (B,)
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.loss_name == "ipo":  # IPO on per-token averages (see foundry.train.preference)
            n_chosen, n_rejected = _token_counts(batch)
            policy_chosen, policy_rejected = policy_chosen / n_chosen, policy_rejected / n_rejected
            ref_chosen, ref_rejected = ref_chosen / n_chosen, ref_rejected / n_rejected
        losses, chosen_rewards, rejected_rewards = preference_loss(
            self.loss_name, policy_chosen, policy_rejected, ref_chosen.to(policy_chosen.dtype),
            ref_rejected.to(policy_chosen.dtype), self.beta, self.label_smoothing)
        margin = chosen_rewards - rejected_rewards
        metrics = {"rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
                   "rewards/margin": margin.sum(), "rewards/accuracy": (margin > 0).float().sum()}
        return losses.sum(), metrics


def preference_evaluator(objective: PreferenceObjective, source: PairBatches, batch_size: int):
    """fn(model) -> mean loss, reward margin and accuracy over every held-out pair."""
    from foundry.train.step import to_device

    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        units = 0
        for batch in source.eval_batches(batch_size):
            loss_sum, metrics = objective.loss(model, to_device(batch, device))
            units += objective.units(batch)
            for key, value in {"loss": loss_sum, **metrics}.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return {key.replace("rewards/", "reward_"): value / units for key, value in totals.items()}

    return evaluate


# ---- the reference pass ------------------------------------------------------------------------------

@torch.no_grad()
def reference_logps(model, source: PairBatches, batch_size: int, device, amp_dtype=torch.float32) -> torch.Tensor:
    """(N, 2) summed log-probs of (chosen, rejected) for every pair under `model`, in eval mode, no grad."""
    from foundry.train.step import autocast_context, to_device

    was_training = model.training
    model.eval()
    out = torch.empty((source.n_examples, 2), dtype=torch.float32)
    for batch in source.eval_batches(batch_size):
        with autocast_context(torch.device(device), amp_dtype):
            chosen, rejected = pair_logps(model, to_device(batch, device))
        out[batch["pair_index"], 0] = chosen.float().cpu()
        out[batch["pair_index"], 1] = rejected.float().cpu()
    model.train(was_training)
    return out


def reference_key(init: Path, tokenizer, data_files: list[str], block_size: int, amp_dtype) -> str:
    """What the cached reference log-probs depend on: starting weights, tokenizer, data, block size, dtype."""
    from foundry.checkpoints import weights_fingerprint
    from foundry.utils.io import sha256_file

    parts = [weights_fingerprint(init), tokenizer.sha256, *[sha256_file(f) for f in data_files], str(block_size), str(amp_dtype)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cached_reference(path: Path, key: str, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """Load `path` if it was made for `key`, else compute and write it (atomically); returns (tensors, hit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from foundry.utils.io import atomic_write_bytes

    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(str(path)), True
        except (SafetensorError, OSError):
            pass  # damaged cache: recompute
    tensors = compute()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata={"key": key}))
    return tensors, False


# ---- the verb --------------------------------------------------------------------------------------------

def run_dpo(cfg: DPOConfig, resume: bool = False) -> dict:
    """Preference-tune as `cfg` says; returns the final metrics (loss, rewards/*, val/*)."""
    from foundry.data.prefs import read_preferences
    from foundry.train.step import autocast_dtype

    with StageRunner("dpo", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        start = runner.load_start(cfg.init)
        model, tokenizer = start.model, start.tokenizer
        encoded, stats = encode_pairs(tokenizer, read_preferences(cfg.data), tc.block_size)
        val_encoded, val_stats = (encode_pairs(tokenizer, read_preferences(cfg.val_data), tc.block_size)
                                  if cfg.val_data else (None, None))
        amp = autocast_dtype(tc, env.device)
        data_files = [cfg.data] + ([cfg.val_data] if cfg.val_data else [])
        out_dir = runner.open_run_dir(data_files=data_files)

        # The reference pass: the initial policy, once, before any update (on resume: from the cache).
        source = PairBatches(encoded, tc.seed, tokenizer.pad_id, None, env.rank, env.world_size)
        val_source = PairBatches(val_encoded, tc.seed, tokenizer.pad_id) if val_encoded else None
        key = reference_key(start.path, tokenizer, data_files, tc.block_size, amp)
        runner.apply_lora(model, cfg.lora)
        model.to(env.device)

        def compute() -> dict[str, torch.Tensor]:
            from foundry.model.lora import disable_adapters

            with disable_adapters(model):  # under LoRA: the starting weights, adapters off
                tensors = {"train": reference_logps(model, source, tc.micro_batch_size, env.device, amp)}
                if val_source is not None:
                    tensors["val"] = reference_logps(model, val_source, tc.micro_batch_size, env.device, amp)
            return tensors

        reference, hit = cached_reference(out_dir / REFERENCE_FILE, key, compute)
        source.reference = reference["train"]
        objective = PreferenceObjective(cfg.loss, cfg.beta, cfg.label_smoothing)
        evaluators = {}
        if val_source is not None:
            val_source.reference = reference["val"]
            evaluators["val"] = preference_evaluator(objective, val_source, tc.micro_batch_size)
        runner.log(f"foundry dpo: {cfg.loss} (beta {cfg.beta}) on {len(encoded)} pairs; fitted to {tc.block_size} "
                   f"tokens: {stats.prompt_cut} prompts cut, {stats.completion_cut} completions cut; reference "
                   f"log-probs {'loaded from cache' if hit else 'computed once'} ({out_dir / REFERENCE_FILE}) -> {out_dir}")
        results = runner.train(model, objective, source, tokenizer, evaluators=evaluators,
                               best_metric="val/loss" if evaluators else None, lora=cfg.lora)
        results["truncation"] = stats.as_dict()
        if val_stats is not None:
            results["val_truncation"] = val_stats.as_dict()
        results["reference_cache_hit"] = hit
        return runner.finish(results, summary=["loss", "rewards/margin", "rewards/accuracy", "val/loss",
                                               "val/reward_margin", "val/reward_accuracy"])
