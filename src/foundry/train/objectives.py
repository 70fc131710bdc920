"""Training objectives: what a stage optimises, as small objects the one training loop calls.

An objective has a `name`, `units(batch) -> int` (what the loss is averaged over: target tokens for
language modelling, pairs for preference optimisation) and `loss(model, batch) -> (loss_sum,
metric_sums)`. Both the loss and every metric are SUMS over the batch's units; the loop divides by the
units of the whole optimiser step (all micro-batches, all ranks), so accumulating k micro-batches gives
exactly the gradient of one batch k times larger (trl #2175, transformers PR #34191).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from foundry.lm_metrics import IGNORE_INDEX


@runtime_checkable
class Objective(Protocol):
    """What a stage optimises; `train()` calls only these."""

    name: str

    def units(self, batch: dict) -> int:
        """What the loss is averaged over: target tokens, pairs, ..."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss SUM over the batch's units, {metric: SUM}); the loop divides by the step's units."""
        ...


@runtime_checkable
class BatchSource(Protocol):
    """Where a stage's training batches come from: seeded, and resumable at the exact position.

    `step_metrics` is the source's own measurements for the loop's log record (RL: generation time, rewards);
    `SourceBase` gives it (empty) and the position methods (stateless) as defaults."""

    def next_batch(self, batch_size: int) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def step_metrics(self, steps: int, optimise_s: float) -> dict:
        """What the source measured over the loop's logging window (`steps` optimiser steps, `optimise_s`
        seconds of forward, backward and update), merged into the log record; then a fresh window."""
        ...


class SourceBase:
    """Defaults of the `BatchSource` hooks a source may leave out: no position to save, nothing to log."""

    def next_batch(self, batch_size: int) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def step_metrics(self, steps: int, optimise_s: float) -> dict:
        return {}


def token_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 8192) -> torch.Tensor:
    """Sum of -log p(target) over targets != -100, computed in float32.

    logits (B, T, V) may be bf16 under autocast; upcasting them all at once costs B*T*V*4 bytes, so
    rows are upcast a chunk at a time (on fp32 logits the chunking is a no-op in cost).
    """
    V = logits.shape[-1]
    flat_logits, flat_targets = logits.reshape(-1, V), targets.reshape(-1)  # (B*T, V), (B*T,)
    if flat_logits.dtype == torch.float32 or flat_logits.shape[0] <= chunk_rows:
        return F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    total = flat_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        total = total + F.cross_entropy(flat_logits[rows].float(), flat_targets[rows],
                                        ignore_index=IGNORE_INDEX, reduction="sum")
    return total


class NextTokenObjective:
    """Next-token cross-entropy: pretraining, continual pretraining, and SFT (targets masked to -100).

    The batch holds `input_ids` and `targets` (B, T) and, for packed examples, `position_ids` and
    `segment_ids` (B, T), which the model turns into per-example positions and a block-diagonal mask.
    """

    name = "next_token"

    def units(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from foundry.train.chunked_ce import scored_cross_entropy_sum

        kwargs = {k: batch[k] for k in ("position_ids", "segment_ids") if batch.get(k) is not None}
        # logits only at targets != -100 (SFT: assistant tokens), a chunk at a time (foundry.train.chunked_ce)
        loss_sum = scored_cross_entropy_sum(model, batch["input_ids"], batch["targets"], **kwargs)
        return loss_sum, {}
