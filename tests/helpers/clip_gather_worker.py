"""Run under torchrun by tests/train/test_clip_distributed.py: each rank scores its slice of one global batch with
the gathered contrastive loss; the loss sums and the parameter gradients are summed over ranks (as the
loop's DDP hook sums them) and rank 0 saves them for the test to compare with one process."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from foundry.model.clip import Clip, config_from_preset
from foundry.train.clip import ContrastiveObjective


def global_batch(n: int, config) -> dict:
    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(n, 3, config.image_size, config.image_size, generator=g)
    ids = torch.randint(2, config.vocab_size, (n, config.text_len), generator=g)
    lengths = torch.randint(3, config.text_len, (n,), generator=g)
    for i, length in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, length], ids[i, length + 1:] = config.bos_id, config.eos_id, config.pad_id
    return {"pixel_values": pixels, "input_ids": ids}


def model_for(kind: str) -> Clip:
    torch.manual_seed(0)
    extra = {"logit_bias_init": -10.0, "logit_scale_init": 2.3} if kind == "siglip" else {}
    return Clip(config_from_preset("test", vocab_size=64, **extra))


def loss_and_grads(kind: str, batch: dict, gather: bool = True) -> tuple[float, dict[str, torch.Tensor]]:
    model = model_for(kind)
    loss, _ = ContrastiveObjective(kind, gather=gather).loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def main(out: str, n: int = 8) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for kind in ("clip", "siglip"):
        batch = global_batch(n, model_for(kind).config)
        per = n // world
        mine = {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}
        loss, grads = loss_and_grads(kind, mine)
        dist.all_reduce(loss)
        for g in grads.values():
            dist.all_reduce(g)  # SUM, as distributed._allreduce_sum_hook does
        results[kind] = {"loss": loss, "grads": grads}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
