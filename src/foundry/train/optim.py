"""The optimiser (AdamW, or Muon for the hidden matrices) and the learning-rate schedules.

Weight decay: applied to the 2-D weights of attention and MLP projections (and an untied lm_head);
not to norm gains, biases or the token embedding. Decaying a norm gain or bias pulls it towards 0
rather than towards its neutral value (1 or 0 is already the init), and decaying the embedding shrinks
rare tokens' rows that get few gradient updates; OLMo 2 (Team OLMo 2024, section 3.2.3) removed
embedding decay for stability. A tied lm_head shares the embedding tensor, so it is not decayed either.

Muon (`train.optimizer: muon`; Jordan et al. 2024, the modded-nanogpt speedrun's optimiser): the 2-D weights
of attention and MLP get momentum orthogonalised by Newton-Schulz iterations (`torch.optim.Muon`); the
embedding, an untied lm_head, norm gains and biases stay on AdamW, as in the speedrun (Muon is for hidden
matrices only). The update is scaled by 0.2 * sqrt(max(rows, cols)) (`adjust_lr_fn="match_rms_adamw"`, Liu
et al. 2025, "Muon is Scalable for LLM Training", section 2.2) so the update's RMS matches AdamW's and the
same lr, schedule and weight decay apply to both.
"""

from __future__ import annotations

import math

import torch

from foundry.errors import ConfigError


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared (tied) tensors appear once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]



class Optimizers:
    """Several optimisers stepped as one, as the loop sees one: Muon for hidden matrices, AdamW for the rest."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)


def adamw(groups: list[dict], cfg) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one.

    Fused AdamW updates every tensor in one kernel: on CUDA one launch instead of hundreds, and on CPU
    (torch >= 2.4) about 2.7x faster than the per-tensor loop for a 4M-parameter model.
    """
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW | Optimizers:
    """The optimiser `cfg.optimizer` names over `model`'s trainable parameters (module docstring)."""
    decay, no_decay = parameter_groups(model, cfg.weight_decay)
    if getattr(cfg, "optimizer", "adamw") == "adamw":
        return adamw([decay, no_decay], cfg)
    if any(type(p).__name__ == "DTensor" for p in decay["params"]):
        raise ConfigError("train.optimizer: muon orthogonalises whole matrices, which FSDP shards across ranks; "
                          "use train.distributed: ddp with muon, or adamw with fsdp")
    # muon: the decayed group is exactly the hidden matrices plus an untied lm_head, which stays on AdamW
    head = {id(m.weight) for name, m in model.named_modules() if name.endswith("lm_head")}
    hidden = [p for p in decay["params"] if id(p) not in head]
    rest = [p for p in decay["params"] if id(p) in head]
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    return Optimizers(muon, adamw([{"params": rest, "weight_decay": cfg.weight_decay}, no_decay], cfg))


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
