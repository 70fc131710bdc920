"""The training loop's test pieces: a fixed batch source, a tiny 64-token model and a one-step config, shared by
the loop and activation-checkpointing tests."""

from __future__ import annotations

import torch

from foundry.config import TrainConfig
from foundry.model.llama import Llama, config_from_preset
from foundry.train.objectives import SourceBase


class FixedBatches(SourceBase):
    """A source serving a fixed list of micro-batches in order (cycling), with a resumable position."""

    def __init__(self, batches):
        self.batches, self.pos = batches, 0

    def next_batch(self, batch_size):
        batch = self.batches[self.pos % len(self.batches)]
        assert batch["input_ids"].shape[0] == batch_size
        self.pos += 1
        return batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Llama(config_from_preset("test", vocab_size=64, max_seq_len=32))


def cfg(**kw):
    base = dict(max_steps=1, micro_batch_size=4, block_size=16, lr=1e-2, warmup_steps=0, schedule="constant",
                eval_every=1000, checkpoint_every=1000, log_every=1, threads=1, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def random_batch(gen, B, T=16, masked_fraction=0.0):
    ids = torch.randint(0, 64, (B, T + 1), generator=gen)
    targets = ids[:, 1:].clone()
    targets[torch.rand(B, T, generator=gen) < masked_fraction] = -100
    return {"input_ids": ids[:, :-1].clone(), "targets": targets}
