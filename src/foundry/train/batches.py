"""Batch sources shared by stages that train on a list of examples (SFT conversations, DPO pairs).

A source has `next_batch(batch_size)`, `state_dict()` and `load_state_dict(state)`
(`foundry.train.objectives.BatchSource`); `ShuffledRows` gives all three, seeded and resumable, and a
stage says only how an epoch's order becomes rows and how rows become a batch.
"""

from __future__ import annotations

import torch

from foundry.errors import CheckpointError
from foundry.train.objectives import SourceBase


class ShuffledRows(SourceBase):
    """Rows of examples visited in a fresh permutation each epoch, drawn from (seed, epoch).

    The state is (epoch, row cursor), so a resume continues at the exact row; every rank walks the same
    row sequence and rank r of w keeps every w-th row. Subclasses say how an epoch's order becomes rows
    (`rows_for_epoch`) and how rows become a batch (`collate`).
    """

    def __init__(self, n_examples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n_examples, self.seed, self.rank, self.world_size = n_examples, seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._rows: list[list[int]] | None = None

    def rows_for_epoch(self, epoch: int) -> list[list[int]]:
        return [[i] for i in self.epoch_order(epoch)]

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=g).tolist()

    def collate(self, rows: list[list[int]]) -> dict:
        raise NotImplementedError

    def _next_row(self) -> list[int]:
        if self._rows is None:
            self._rows = self.rows_for_epoch(self.epoch)
        if self.cursor >= len(self._rows):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._rows = self.rows_for_epoch(self.epoch)
        row = self._rows[self.cursor]
        self.cursor += 1
        return row

    def next_batch(self, batch_size: int) -> dict:
        rows = []
        for _ in range(batch_size):
            for r in range(self.world_size):
                row = self._next_row()
                if r == self.rank:
                    rows.append(row)
        return self.collate(rows)

    def eval_rows(self) -> list[list[int]]:
        return [[i] for i in range(self.n_examples)]

    def eval_batches(self, batch_size: int, max_batches: int | None = None):
        """Every example once, in file order, the same every call."""
        rows = self.eval_rows()
        for k, start in enumerate(range(0, len(rows), batch_size)):
            if max_batches is not None and k >= max_batches:
                break
            yield self.collate(rows[start:start + batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "examples": self.n_examples}

    def load_state_dict(self, state: dict) -> None:
        if int(state["examples"]) != self.n_examples:
            raise CheckpointError(f"resume: the checkpoint was trained on {state['examples']} examples, "
                                  f"the data now has {self.n_examples}; resume with the same data")
        self.epoch, self.cursor, self._rows = int(state["epoch"]), int(state["cursor"]), None
