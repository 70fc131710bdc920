"""Where a model runs and what it is under its wrappers: the device of this rank, the module inside
torch.compile / DDP, whether FSDP2 shards it, and loading a full state dict into it (sharded or not)."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU when there is one, else the CPU; `cuda` means this rank's GPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Llama inside torch.compile / DDP wrappers (an FSDP2 model is the Llama itself)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module) and hasattr(model, "no_sync"):
            model = model.module
        else:
            return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is sharded by FSDP2 (each rank then holds a slice of every tensor)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict that every rank holds; under FSDP each rank keeps its shard."""
    base = unwrap(model)
    if is_sharded(base):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(base, state, options=StateDictOptions(full_state_dict=True))
    else:
        base.load_state_dict(state)
