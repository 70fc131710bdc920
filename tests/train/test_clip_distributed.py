"""Under `torchrun --nproc_per_node 2` (gloo, CPU) the contrastive losses gather every rank's embeddings, so
the negatives are the global batch: the ranks' loss sums and summed gradients equal one process scoring
the same global batch (CLIP and SigLIP). Without the gather the two differ, so the comparison can fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import clip_gather_worker
from tests.helpers.clip_gather_worker import global_batch, loss_and_grads, model_for

WORKER = Path(clip_gather_worker.__file__)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """{kind: {"loss", "grads"}} from one 2-process torchrun (both objectives, to start torch once)."""
    out = tmp_path_factory.mktemp("gather") / "two.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_gathered_loss_and_gradients_equal_one_process(kind, two_ranks):
    two = two_ranks[kind]
    batch = global_batch(8, model_for(kind).config)
    loss, grads = loss_and_grads(kind, batch)
    assert torch.allclose(two["loss"], loss, rtol=1e-5, atol=1e-5), (float(two["loss"]), float(loss))
    assert set(two["grads"]) == set(grads)
    # float32 sums taken in another order: equal up to rounding, measured against each tensor's largest
    # entry (or, for a gradient that is zero in exact arithmetic, such as a key bias's, the whole model's)
    scale = max(float(g.abs().max()) for g in grads.values())
    for name, grad in grads.items():
        error = float((two["grads"][name] - grad).abs().max())
        assert error <= 1e-5 * max(float(grad.abs().max()), 1e-3 * scale), (name, error, float(grad.abs().max()))
    # the comparison has teeth: each half scored only against its own half gives another loss
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    local = sum(float(loss_and_grads(kind, h, gather=False)[0]) for h in halves)
    assert abs(local - float(loss)) > 1e-3
