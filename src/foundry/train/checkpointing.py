"""Activation checkpointing per transformer block, applied from the training side.

Autograd normally keeps every block's intermediate tensors from forward to backward: at 576 wide,
1,536 intermediate and 30 blocks that is about 70 kB per token per block in fp32 (`foundry.train.plan`),
2 GB for 1,024 tokens. With `train.activation_checkpointing` each block keeps only its input; its
backward runs the block's forward again first (Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost"; torch.utils.checkpoint, non-reentrant, which restores the RNG state so LoRA dropout
draws the same mask). Gradients are unchanged; the price is one more forward of the blocks per step.

The model file is left alone: each block's `forward` is replaced on the instance by a method that runs
the class's forward under `checkpoint` when gradients are being recorded (generation, evaluation and
reference passes run it plain). A bound method, so `copy.deepcopy` rebinds it to the copy.
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self, *args, **kwargs):
    forward = type(self).forward
    if torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Checkpoint every block in `model.model.layers` (the Llama inside); returns how many."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return 0
    for block in layers:
        block.forward = types.MethodType(_checkpointed_forward, block)
    return len(layers)


def is_checkpointed(block: torch.nn.Module) -> bool:
    return getattr(block.forward, "__func__", None) is _checkpointed_forward
