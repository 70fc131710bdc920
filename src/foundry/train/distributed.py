"""Process-group set-up, model wrapping and distributed checkpoint state for torchrun (DDP / FSDP2).

One process needs none of it: every function here is the identity (or a no-op) when torchrun did not
start us, so the training loop calls the same functions on a laptop and on a cluster.

- `train.distributed`: `auto` = DDP when torchrun starts several processes; `ddp`; `fsdp` = FSDP2
  (`torch.distributed.fsdp.fully_shard`, one unit per transformer block plus the root for the
  embeddings, final norm and lm_head); `none` refuses to run under torchrun (each process would train
  its own copy into the same run directory). FSDP with one process has nothing to shard: it trains
  unsharded and says so.
- Data: each rank reads its own slice of every global draw (`TokenBlocks(..., rank, world_size)`): a
  draw of `world_size * B` windows, rank r taking windows [r*B, (r+1)*B). So rank r's micro-batch at
  accumulation index a of an N-process run is micro-batch `a * N + r` of a one-process run with N times
  the accumulation: the two see the same sequences in every optimiser step, and as the loop normalises
  by the step's total target tokens, their updates are equal (tests/train/test_distributed_torchrun.py).
- Gradient accumulation: `sync_context(model, sync=False)` on the inner micro-steps skips the gradient
  all-reduce (DDP `no_sync`) or reduce-scatter (FSDP2 `set_requires_gradient_sync(False)`, which holds
  the unsharded fp32 gradients until the last micro-step; `foundry plan` counts them).
- `train.global_batch_size` (sequences per optimiser step over all ranks), when set, fixes the global
  batch whatever the world size: grad_accum_steps = global / (micro_batch_size * world_size), and a
  world size that does not divide it is a ConfigError raised on every rank before any collective.
- Checkpoints: weights are always written whole (safetensors, rank 0). Under FSDP the full state dict
  is gathered to rank 0 on the CPU (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`),
  and the optimiser state stays sharded: every rank writes its shard with torch.distributed.checkpoint
  (DCP), which reshards on load, so an FSDP run may resume on a different number of processes (one
  included, unsharded). A DDP
  or single-process checkpoint holds the whole optimiser state and must resume on the world size it
  was saved with (a CheckpointError on every rank otherwise). DCP's `.metadata` file is a pickle: we
  read it with an unpickler that only builds DCP's own metadata dataclasses and torch dtypes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from foundry.checkpoints import is_sharded, pick_device, unwrap
from foundry.errors import CheckpointError, ConfigError

OPTIMIZER_DIR = "optimizer"  # DCP shards of the optimiser state inside an FSDP checkpoint


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none | ddp | fsdp: what wrap_model does
    grad_accum_steps: int = 1  # micro-batches per step per rank (`resolve_batch`; the config is not changed)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def log(message: str, env: DistEnv | None = None) -> None:
    """A line on stderr from rank 0 only."""
    if env is None or env.is_main:
        print(f"foundry: {message}", file=sys.stderr, flush=True)


def resolve_strategy(cfg, world_size: int) -> str:
    """`cfg.distributed` -> none | ddp | fsdp for this world size (ConfigError for `none` under torchrun)."""
    choice = getattr(cfg, "distributed", "auto")
    if world_size == 1:
        return "none"
    if choice == "none":
        raise ConfigError(f"train.distributed=none, but torchrun started {world_size} processes; set "
                          "train.distributed to ddp or fsdp, or run a single process")
    return "fsdp" if choice == "fsdp" else "ddp"


def resolve_batch(cfg, world_size: int) -> int:
    """Micro-batches per step per rank: `cfg.grad_accum_steps`, or derived from `cfg.global_batch_size`."""
    global_batch = getattr(cfg, "global_batch_size", None)
    if global_batch is None:
        return cfg.grad_accum_steps
    per_pass = cfg.micro_batch_size * world_size
    if global_batch % per_pass:
        raise ConfigError(f"train.global_batch_size={global_batch} is not divisible by micro_batch_size "
                          f"({cfg.micro_batch_size}) x world size ({world_size}) = {per_pass}; choose a global "
                          f"batch that is a multiple of {per_pass}, or another micro_batch_size")
    return global_batch // per_pass


def setup_distributed(cfg) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process when absent.

    Everything that can be wrong with the config is checked before the process group starts, so a bad
    config fails the same way on every rank and no rank waits in a collective for one that has gone.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    strategy = resolve_strategy(cfg, world_size)
    accum = resolve_batch(cfg, world_size)
    device = pick_device(cfg.device, local_rank)
    env = DistEnv(rank, world_size, local_rank, device, strategy, accum)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        log(f"{world_size} processes, {strategy.upper()}, backend {dist.get_backend()}, "
            f"{cfg.micro_batch_size} x {accum} sequences per rank per step", env)
    elif world_size == 1 and getattr(cfg, "distributed", "auto") in ("ddp", "fsdp") and not _told_single[0]:
        _told_single[0] = True
        log(f"train.distributed={cfg.distributed} with one process: nothing to "
            f"{'shard' if cfg.distributed == 'fsdp' else 'replicate'}; training on one device")
    return env


_told_single = [False]


# ---- wrapping -----------------------------------------------------------------------------------
def mixed_precision_policy(cfg, device: torch.device):
    """FSDP2 keeps fp32 master weights; on CUDA with bf16 it gathers bf16 weights, reduces in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    if device.type == "cuda" and bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def wrap_model(model: torch.nn.Module, cfg, env: DistEnv) -> torch.nn.Module:
    """Identity for one process; DDP or FSDP2 under torchrun (see the module docstring)."""
    strategy = env.strategy if env.enabled else "none"
    if strategy == "none":
        return model
    model.to(env.device)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Gradients live in DDP's buckets (no second copy), which `foundry plan` assumes.
        ddp = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                  gradient_as_bucket_view=True)
        ddp.register_comm_hook(None, _allreduce_sum_hook)
        return ddp
    from torch.distributed.fsdp import FSDPModule, fully_shard

    policy = mixed_precision_policy(cfg, env.device)
    layers = getattr(getattr(model, "model", None), "layers", None)
    for block in layers if layers is not None else []:
        fully_shard(block, mp_policy=policy)  # one all-gather / reduce-scatter unit per block
    fully_shard(model, mp_policy=policy)  # root: embeddings, final norm, lm_head (a tied pair stays together)
    for module in model.modules():  # sum, not average, across ranks (see _allreduce_sum_hook)
        if isinstance(module, FSDPModule):
            setter = getattr(module, "set_gradient_divide_factor", None) or module.set_reduce_scatter_divide_factor
            setter(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):  # plain SUM: gloo has no PREMUL_SUM
                module.set_force_sum_reduction_for_comms(True)
    return model


def _allreduce_sum_hook(process_group, bucket):
    """DDP comm hook: SUM the gradients across ranks instead of DDP's default average.

    The loop divides every micro-batch's loss sum by the target tokens of the whole step summed over
    all ranks, so each rank's gradient is already its share of the global mean; averaging would divide
    by the world size a second time.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


@contextlib.contextmanager
def sync_context(model: torch.nn.Module, sync: bool):
    """Skip gradient all-reduce / reduce-scatter on inner accumulation micro-steps (the last one syncs)."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if sync:
        yield
    elif hasattr(inner, "no_sync"):  # DDP
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):  # FSDP2
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if it is True on any (a stop request seen by one rank stops them all together)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---- checkpoint state -----------------------------------------------------------------------------
def full_model_state(model: torch.nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """The whole state dict on rank 0 (on the CPU), None elsewhere. A collective under FSDP: call on all ranks."""
    base = unwrap(model)
    if is_sharded(base):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(base, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if env.is_main else None
    if not env.is_main:
        return None
    return {k: v.detach().to("cpu") for k, v in base.state_dict().items()}


def save_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shard of the optimiser state to `directory` (DCP). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(unwrap(model), optimizer)
    dcp.save({"optimizer": state}, storage_writer=dcp.FileSystemWriter(str(directory)))


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read the optimiser state DCP wrote, resharded to this run's ranks. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    directory = Path(directory)
    if not (directory / ".metadata").is_file():
        raise CheckpointError(f"{directory}: no sharded optimiser state (.metadata missing); the checkpoint is "
                              "incomplete")
    base = unwrap(model)
    state = get_optimizer_state_dict(base, optimizer)  # the shapes to fill (initialises empty AdamW state)
    dcp.load({"optimizer": state}, storage_reader=_SafeFileSystemReader(str(directory)))
    set_optimizer_state_dict(base, optimizer, state)


def optimizer_state_for_checkpoint(model, optimizer, env: DistEnv, staging: Path) -> dict:
    """What train_state.pt records about the optimiser. Under FSDP the shards go to `staging` (DCP, all
    ranks) and the record names the directory; otherwise it is the whole state dict."""
    if is_sharded(model):
        if env.is_main and Path(staging).exists():  # left by a run killed mid-save
            import shutil

            shutil.rmtree(staging)
        barrier(env)
        save_sharded_optimizer(model, optimizer, staging)
        return {"optimizer_format": "dcp", "optimizer_dir": OPTIMIZER_DIR, "world_size": env.world_size}
    return {"optimizer": optimizer.state_dict(), "optimizer_format": "full", "world_size": env.world_size}


def restore_optimizer(model, optimizer, state: dict, checkpoint: Path, env: DistEnv) -> None:
    """Load the optimiser state a checkpoint holds, checking that it can be used on this world size.

    Raised on every rank alike (they all read the same train_state), so no rank is left waiting.
    """
    fmt = state.get("optimizer_format", "full")
    saved_world = int(state.get("world_size", 1))
    sharded = is_sharded(model)
    if fmt == "dcp":  # DCP reshards: any world size, FSDP or not (one process reads every shard)
        load_sharded_optimizer(model, optimizer, Path(checkpoint) / state.get("optimizer_dir", OPTIMIZER_DIR))
        return
    if saved_world != env.world_size:
        raise CheckpointError(f"{checkpoint}: saved by {saved_world} process(es) but this run has {env.world_size}; "
                              f"a non-sharded checkpoint resumes on the same world size (torchrun "
                              f"--nproc_per_node/--nnodes giving {saved_world}), or start a new run from its weights")
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only DCP's metadata dataclasses/enums, torch dtypes, layouts, memory formats and Size."""

    SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "slice", "int", "float", "str", "bytes"}
    # _get_layout maps a name such as "torch.strided" to the layout; paths are the checkpoint id
    SAFE_GLOBALS = {("collections", "OrderedDict"), ("torch.serialization", "_get_layout"),
                    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath")}

    def find_class(self, module, name):
        if module == "builtins" and name in self.SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in self.SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if obj is torch.Size or isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        if module.startswith("torch.distributed.checkpoint"):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from checkpoint metadata")


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = Path(str(self.path)) / ".metadata"
            try:
                metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
                raise CheckpointError(f"{path}: not valid checkpoint metadata ({exc})") from None
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    return SafeFileSystemReader


def _SafeFileSystemReader(path: str):
    return _safe_reader_class()(path)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process (for printing once per run)."""
    return int(os.environ.get("RANK", "0")) == 0
