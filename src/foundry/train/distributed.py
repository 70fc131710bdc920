"""Process-group set-up and model wrapping for torchrun (DDP / FSDP2); one process needs none of it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def setup_distributed(cfg) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process when absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def wrap_model(model: torch.nn.Module, cfg, env: DistEnv) -> torch.nn.Module:
    """Identity for one process; DDP otherwise (FSDP2 to come)."""
    if not env.enabled or cfg.distributed == "none":
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


@contextlib.contextmanager
def sync_context(model: torch.nn.Module, sync: bool):
    """Skip gradient all-reduce on inner accumulation micro-steps (only the last one syncs)."""
    if not sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
