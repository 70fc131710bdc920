"""LoRA: low-rank adapters on chosen Linear layers, and merging them back into plain weights.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": W x + (alpha / r) * B A x, with
A (r, in) random and B (out, r) zero at the start (section 4.1), so the wrapped model starts out exactly
equal to the base model. Only A and B train; `merge_lora` folds W + (alpha / r) B A back into an
`nn.Linear`, after which the model is a normal foundry model with the original state-dict keys.

`disable_adapters(model)` runs the frozen base without the updates: a preference or RL stage's reference
model is then the same weights with the adapters switched off, never a second copy in memory.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from foundry.errors import ConfigError


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (`base`) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # False inside `disable_adapters`: the base Linear alone
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        # x (..., in) -> (..., out): base output plus (alpha/r) * B(A(dropout(x)))
        update = (self.dropout(x) @ self.lora_A.to(x.dtype).t()) @ self.lora_B.to(x.dtype).t()
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """The base Linear with the update folded in (W + scale * B A)."""
        with torch.no_grad():
            self.base.weight += (self.scale * self.lora_B.float() @ self.lora_A.float()).to(self.base.weight.dtype)
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] = ("q_proj", "v_proj")) -> list[str]:
    """Wrap every Linear whose last name component is in `targets`; freeze everything else.

    Returns the wrapped module names. A target that matches no Linear is a one-line ConfigError.
    """
    if rank <= 0:
        raise ConfigError(f"lora: rank must be positive, got {rank}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    available = sorted({name.rsplit(".", 1)[-1] for name in linears})
    for t in targets:
        if not any(name.rsplit(".", 1)[-1] == t for name in linears):
            raise ConfigError(f"lora: target module '{t}' not found in the model; "
                              f"available Linear modules: {', '.join(available)}")
    # A weight shared with another module (tied lm_head / embeddings) cannot take a private update.
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    for name, linear in linears.items():
        if name.rsplit(".", 1)[-1] in targets and seen.get(id(linear.weight), 0) > 1:
            raise ConfigError(f"lora: target '{name}' shares its weight with another module (tied embeddings); "
                              "choose other targets")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, linear in linears.items():
        if name.rsplit(".", 1)[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(linear, rank, alpha, dropout))
            wrapped.append(name)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged Linear (in place) and unfreeze all parameters."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, m.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Inside, every LoRALinear of `model` is its frozen base Linear alone (the model before any adapter
    trained); on leaving, each is as it was. The reference of DPO and GRPO under LoRA, with no copy."""
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    before = [m.enabled for m in adapters]
    for m in adapters:
        m.enabled = False
    try:
        yield model
    finally:
        for m, state in zip(adapters, before):
            m.enabled = state


def lora_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
