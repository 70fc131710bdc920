"""distributed.py in one process: the fallbacks, the config checks made before any collective, the
world-size check on resume, and the safe reading of DCP's pickled metadata."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed as dist

from foundry.config import TrainConfig
from foundry.errors import CheckpointError, ConfigError
from foundry.model.llama import Llama, config_from_preset
from foundry.train import distributed as D


@pytest.fixture
def torchrun_env(monkeypatch):
    """Pretend torchrun started us as rank 0 of `n` (without starting a process group)."""

    def set_world(n: int):
        monkeypatch.setenv("WORLD_SIZE", str(n))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return set_world


def test_fsdp_with_one_process_trains_unsharded_and_says_so(torchrun_env, capsys, monkeypatch):
    monkeypatch.setattr(D, "_told_single", [False])
    cfg = TrainConfig(distributed="fsdp", device="cpu")
    env = D.setup_distributed(cfg)
    assert (env.world_size, env.strategy, env.enabled) == (1, "none", False)
    assert "distributed=fsdp with one process: nothing to shard" in capsys.readouterr().err
    model = Llama(config_from_preset("test"))
    assert D.wrap_model(model, cfg, env) is model
    assert not D.is_sharded(model) and not dist.is_initialized()


def test_distributed_none_under_torchrun_is_refused_before_any_collective(torchrun_env):
    torchrun_env(2)
    with pytest.raises(ConfigError, match="train.distributed=none, but torchrun started 2 processes"):
        D.setup_distributed(TrainConfig(distributed="none", device="cpu"))
    assert not dist.is_initialized()


def test_world_size_must_divide_the_global_batch(torchrun_env):
    torchrun_env(2)
    cfg = TrainConfig(micro_batch_size=3, global_batch_size=8, device="cpu")
    with pytest.raises(ConfigError, match=r"global_batch_size=8 is not divisible by .* = 6"):
        D.setup_distributed(cfg)
    assert not dist.is_initialized()  # failed on this rank before waiting for the others
    # a global batch the world divides sets the accumulation, the same on every world size
    assert D.resolve_batch(TrainConfig(micro_batch_size=2, global_batch_size=8), 2) == 2
    assert D.resolve_batch(TrainConfig(micro_batch_size=2, global_batch_size=8), 1) == 4
    assert D.resolve_batch(TrainConfig(micro_batch_size=2, grad_accum_steps=3), 4) == 3


def test_auto_is_ddp_and_fsdp_is_kept_for_several_processes():
    assert D.resolve_strategy(TrainConfig(distributed="auto"), 4) == "ddp"
    assert D.resolve_strategy(TrainConfig(distributed="fsdp"), 4) == "fsdp"
    assert D.resolve_strategy(TrainConfig(distributed="fsdp"), 1) == "none"


def test_resume_on_another_world_size_is_refused_for_a_full_checkpoint():
    model = Llama(config_from_preset("test"))
    opt = torch.optim.AdamW(model.parameters())
    env = D.DistEnv()
    state = {"optimizer": opt.state_dict(), "optimizer_format": "full", "world_size": 2}
    with pytest.raises(CheckpointError, match=r"saved by 2 process\(es\) but this run has 1"):
        D.restore_optimizer(model, opt, state, "ckpt", env)
    sharded = {"optimizer_format": "dcp", "optimizer_dir": "optimizer", "world_size": 2}
    with pytest.raises(CheckpointError, match="no sharded optimiser state"):  # shards missing
        D.restore_optimizer(model, opt, sharded, "ckpt", env)
    D.restore_optimizer(model, opt, {**state, "world_size": 1}, "ckpt", env)  # same world size: fine


def test_single_process_helpers_are_identities():
    model = Llama(config_from_preset("test"))
    env = D.DistEnv()
    t = torch.tensor([2.0])
    assert D.all_reduce_sum(t, env) is t and float(t) == 2.0
    assert D.any_rank(True, env) and not D.any_rank(False, env)
    assert D.unwrap(torch.compile(model)) is model
    with D.sync_context(model, sync=False):
        pass
    state = D.full_model_state(model, env)
    assert set(state) == set(model.state_dict()) and all(v.device.type == "cpu" for v in state.values())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_dcp_metadata_is_read_without_unpickling_code(tmp_path):
    """A real DCP checkpoint round-trips through the safe reader; a pickle that would run code is refused."""
    import torch.distributed.checkpoint as dcp

    weights = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(7)}
    dcp.save({"state": weights}, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ok")))
    loaded = {"state": {"w": torch.zeros(2, 3), "step": torch.tensor(0)}}
    dcp.load(loaded, storage_reader=D._SafeFileSystemReader(str(tmp_path / "ok")))
    assert torch.equal(loaded["state"]["w"], weights["w"]) and int(loaded["state"]["step"]) == 7

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system|refusing to load os.system"):
        D._MetadataUnpickler(open(evil / ".metadata", "rb")).load()
    with pytest.raises(CheckpointError, match="not valid checkpoint metadata"):
        D._SafeFileSystemReader(str(evil)).read_metadata()
