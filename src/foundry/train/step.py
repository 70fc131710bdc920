"""One optimiser step, exactly as the loop takes it: the step's units summed over ranks first, forward +
backward per micro-batch under the run's autocast, clip, a finiteness check, then the update. Benchmarks time
this same function (`optimizer_step`) rather than a copy of it."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from foundry.errors import TrainingError
from foundry.train import distributed as dist_utils
from foundry.train.objectives import Objective


def autocast_dtype(cfg, device: torch.device) -> torch.dtype:
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class StepOutcome:
    """What one optimiser step did: the step's mean loss and gradient norm, whether it was finite (and so
    applied), its units over all ranks and its metric sums (not yet reduced across ranks)."""

    loss: float
    grad_norm: float
    finite: bool
    total_units: float
    metric_totals: dict[str, torch.Tensor]


def optimizer_step(model: torch.nn.Module, objective: Objective, batches: list[dict], optimizer, params: list,
                   device: torch.device, amp_dtype: torch.dtype = torch.float32, grad_clip: float | None = None,
                   env: dist_utils.DistEnv | None = None, forward_model: torch.nn.Module | None = None,
                   where: str = "training") -> StepOutcome:
    """One optimiser step over `batches` (the step's micro-batches), exactly as the loop takes it.

    1. the units of all micro-batches, summed over ranks, so every micro-batch's loss is divided by the
       step's units (k micro-batches of B equal one batch of k*B; trl #2175, transformers PR #34191);
    2. forward + backward per micro-batch (gradient sync across ranks on the last one only);
    3. clip, check the loss and gradient norm are finite, step the optimiser only then; zero the gradients.
    `model` is the (possibly DDP/FSDP-wrapped) model whose gradients sync, `forward_model` what is called
    (its compiled form; default `model`). Benchmarks call this to time the loop's own step.
    """
    env = env or dist_utils.DistEnv(device=device)
    forward_model = forward_model if forward_model is not None else model
    units = torch.tensor(float(sum(objective.units(b) for b in batches)), device=device, dtype=torch.float64)
    total_units = float(dist_utils.all_reduce_sum(units, env))
    if total_units == 0:
        raise TrainingError(f"{where} has no target units (every target masked)")
    loss_total = torch.zeros((), device=device, dtype=torch.float64)
    metric_totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        with dist_utils.sync_context(model, sync=i == len(batches) - 1):
            with autocast_context(device, amp_dtype):
                loss_sum, metric_sums = objective.loss(forward_model, batch)
            (loss_sum / total_units).backward()
        loss_total += loss_sum.detach().double()
        for key, value in metric_sums.items():
            metric_totals[key] = metric_totals.get(key, 0) + value.detach().double()
    loss_total = dist_utils.all_reduce_sum(loss_total, env)
    loss = float(loss_total) / total_units
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf, foreach=True) if params else 0.0)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss, grad_norm, finite, total_units, metric_totals)
