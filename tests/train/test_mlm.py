"""Masked-LM pretraining on the one loop: the loss falls, special tokens are never masked, packed documents
get their own segments and positions, the 80/10/10 split holds, and a decoder preset is refused."""

from __future__ import annotations

import pytest
import torch
import yaml

from foundry.checkpoints import load_model
from foundry.cli import main
from foundry.lm_metrics import IGNORE_INDEX
from foundry.model.encoder import Encoder
from foundry.train.mlm import MLMConfig, mask_tokens, packed_segments
from foundry.utils.io import read_metrics

from tests.helpers.train_data import make_dataset, write_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("mlm-data"), n_train=40)


def mlm_recipe(tmp_path, data, preset="bert-test", **train):
    path = write_recipe(tmp_path / "r.yaml", data, tmp_path / "run", **train)
    recipe = yaml.safe_load(path.read_text())
    recipe["objective"] = "mlm"
    recipe["model"] = {"preset": preset}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_mlm_loss_falls_and_the_checkpoint_is_an_encoder(tmp_path, data, capsys):
    recipe = mlm_recipe(tmp_path, data, max_steps=40, eval_every=20, lr=2e-3, warmup_steps=4)
    assert main(["pretrain", "--config", str(recipe)]) == 0
    assert "val/acc" in capsys.readouterr().out
    records = [r for r in read_metrics(tmp_path / "run") if "event" not in r]
    train_losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "val/loss" in r]
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 1.0
    assert len(evals) == 2 and evals[-1]["val/loss"] < evals[0]["val/loss"]
    assert 10 / 300 < evals[-1]["val/acc"] <= 1.0  # ten times chance over a 300-token vocabulary
    model, _ = load_model(tmp_path / "run")
    assert isinstance(model, Encoder)
    # domain-adaptive MLM: `foundry continue` on an encoder keeps the masked-LM objective
    cont = {"out_dir": str(tmp_path / "cont"), "init": str(tmp_path / "run"),
            "mixture": [{"name": "domain", "data": str(data["dataset"]), "weight": 1.0}],
            "train": {"max_steps": 4, "micro_batch_size": 4, "block_size": 32, "warmup_steps": 1, "eval_every": 4,
                      "eval_batches": 2, "threads": 1, "progress": False, "checkpoint_every": 4}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cont))
    assert main(["continue", "--config", str(tmp_path / "c.yaml")]) == 0
    cont_evals = [r for r in read_metrics(tmp_path / "cont") if "val/domain/acc" in r]
    assert [r["step"] for r in cont_evals] == [0, 4]
    assert isinstance(load_model(tmp_path / "cont")[0], Encoder)


def test_special_tokens_are_never_masked_and_the_split_is_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 300, (64, 128), generator=g)
    ids[:, ::5] = torch.randint(0, 7, (64, 26), generator=g)  # a special token every fifth position
    masked, targets = mask_tokens(ids, list(range(7)), 300, 300, MLMConfig(mask_rate=0.5), g)
    special = ids < 7
    assert (targets[special] == IGNORE_INDEX).all() and (masked[special] == ids[special]).all()
    chosen = targets != IGNORE_INDEX
    share = chosen[~special].float().mean().item()
    assert 0.47 < share < 0.53
    to_mask = (masked == 300)[chosen].float().mean().item()
    unchanged = (masked == ids)[chosen].float().mean().item()
    assert 0.77 < to_mask < 0.83 and 0.08 < unchanged < 0.13  # random 10% (plus rare same-token draws)
    assert (masked[~chosen] == ids[~chosen]).all()
    assert not ((masked < 7) & ~special).any()  # a random replacement is never a special token


def test_packed_segments_restart_positions_at_each_document():
    eos = 0
    ids = torch.tensor([[9, 9, 9, eos, 8, 8, eos, 7, 7, 7]])
    segments, positions = packed_segments(ids, eos)
    assert segments.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]]
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]


def test_mlm_on_a_decoder_preset_is_a_one_line_error(tmp_path, data, capsys):
    recipe = mlm_recipe(tmp_path, data, preset="test")
    assert main(["pretrain", "--config", str(recipe)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder preset" in err[0] and "bert-test" in err[0]
    assert not (tmp_path / "run").exists()
