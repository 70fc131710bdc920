"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Weight decay: applied to the 2-D weights of attention and MLP projections (and an untied lm_head);
not to norm gains, biases or the token embedding. Decaying a norm gain or bias pulls it towards 0
rather than towards its neutral value (1 or 0 is already the init), and decaying the embedding shrinks
rare tokens' rows that get few gradient updates; OLMo 2 (Team OLMo 2024, section 3.2.3) removed
embedding decay for stability. A tied lm_head shares the embedding tensor, so it is not decayed either.
"""

from __future__ import annotations

import math

import torch


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared (tied) tensors appear once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters, with the fused kernel where the device has one.

    Fused AdamW updates every tensor in one kernel: on CUDA one launch instead of hundreds, and on CPU
    (torch >= 2.4) about 2.7x faster than the per-tensor loop for a 4M-parameter model.
    """
    groups = parameter_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


def lr_at(step: int, cfg) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then the chosen schedule.

    cosine: lr -> min_lr over the remaining steps (Loshchilov & Hutter 2017, SGDR).
    wsd: warm-up, stable at lr, then the last `decay_fraction` of steps cool down as 1 - sqrt(progress)
         to min_lr; Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
         Durations", section 3) find this cool-down matches cosine at the same compute.
    constant: lr after warm-up.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    # wsd
    decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
    decay_start = max(cfg.warmup_steps, cfg.max_steps - decay_steps)
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start))
    return floor + (peak - floor) * (1.0 - math.sqrt(progress))
