"""The training loop's `val/bpb` is the validation text's summed negative log-likelihood per UTF-8 byte.

The loop estimates bits per byte as mean loss per target token x (tokens / bytes) of the split, over
non-overlapping windows; here the same trained weights score every token of the validation stream
directly (each document followed by <|endoftext|>, as the shards store it) and the NLL is summed over
the bytes of the documents' text. The two must agree within 0.5%.
"""

from __future__ import annotations

import json
import math

import torch

from foundry.cli import main
from foundry.checkpoints import latest_checkpoint, load_model

from tests.helpers.train_data import make_dataset, make_texts, write_recipe


def summed_nll_bits_per_byte(model, tokenizer, docs: list[str], block: int) -> float:
    """Every token after the first predicted once, in windows of block + 1 overlapping by one token."""
    ids = [t for d in docs for t in tokenizer.encode(d) + [tokenizer.eos_id]]
    data, total = torch.tensor(ids), 0.0
    with torch.no_grad():
        for start in range(0, len(data) - 1, block):
            x = data[start:start + block + 1]
            total += torch.nn.functional.cross_entropy(model(x[None, :-1])[0].float(), x[1:], reduction="sum").item()
    return total / math.log(2) / sum(len(d.encode("utf-8")) for d in docs)


def test_loop_bpb_equals_summed_nll_over_validation_bytes(tmp_path):
    # Non-ASCII words make bytes differ from characters, so a character count would be caught.
    val = [d.replace("lord", "seigneur é").replace("land", "terre ü") for d in make_texts(40, seed=1)]
    data = make_dataset(tmp_path / "data", texts=(make_texts(60, seed=0), val))
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", max_steps=40, eval_every=40,
                          eval_batches=10_000, block_size=32)  # eval covers the whole validation split
    assert main(["pretrain", "--config", str(recipe)]) == 0
    results = json.loads((tmp_path / "run" / "run.json").read_text())["results"]
    model, tokenizer = load_model(latest_checkpoint(tmp_path / "run"))
    assert results["val/loss"] < 0.8 * math.log(tokenizer.vocab_size)  # trained: losses differ token to token
    direct = summed_nll_bits_per_byte(model, tokenizer, val, block=32)
    loop_bpb = results["val/bpb"]
    assert abs(loop_bpb / direct - 1) < 0.005, (loop_bpb, direct)
