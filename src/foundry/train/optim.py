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

`torch.optim.Muon` runs Newton-Schulz in bf16, which is right on a GPU and 8x slower than fp32 on a CPU
without bf16 matrix units (measured: 0.15x the tokens/s of AdamW at the 1M config). `Muon` below is the
same update with the iteration in bf16 on CUDA and in the weights' own dtype elsewhere, and with matrices
of one shape orthogonalised together in batched matmuls (a 1M model has 28 small matrices, 3 shapes).
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

    def step(self, closure=None):
        """The Optimizer signature (accelerate calls it so): a closure is evaluated once, not per optimiser."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with the Newton-Schulz precision chosen per device and same-shape matrices batched.

    The state (`momentum_buffer` per matrix) and the hyperparameters are torch's, so checkpoints written by
    either class load into the other.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault((tuple(p.shape), p.device, p.dtype), []).append(i)
            momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
            for (shape, device, _), idx in by_shape.items():
                updates = []
                for i in idx:
                    bufs[i].lerp_(grads[i], 1 - momentum)
                    updates.append(grads[i].lerp(bufs[i], momentum) if group["nesterov"] else bufs[i])
                ortho = orthogonalise(torch.stack(updates), group["ns_coefficients"], group["ns_steps"],
                                      group["eps"], torch.bfloat16 if device.type == "cuda" else None)
                scaled_lr = torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], torch.Size(shape))
                for j, i in enumerate(idx):
                    params[i].mul_(1 - lr * decay)
                    params[i].add_(ortho[j].to(params[i].dtype), alpha=-scaled_lr)
        return loss


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype | None) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of Jordan et al. (2024) over a batch of matrices (B, rows, cols).

    The same iteration as `torch.optim._muon._zeropower_via_newtonschulz`, per matrix: scale to spectral
    norm <= 1 (by the Frobenius norm), then X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation.
    """
    a, b, c = coefficients
    x = g.to(dtype) if dtype is not None else g.clone()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


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
    muon = Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                ns_steps=cfg.muon_ns_steps, adjust_lr_fn="match_rms_adamw")
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
