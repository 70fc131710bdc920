"""The stage runner's one door for a starting model: `sft` and `dpo` start from an imported Hugging Face
directory exactly as from the foundry checkpoint it was exported from."""

from __future__ import annotations

import json

import pytest

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, book_chats, tiny_tokenizer

from foundry.checkpoints import load_model
from foundry.cli import main as cli
from foundry.model.hf import export_hf

TRAIN = dict(max_steps=3, micro_batch_size=4, block_size=64, lr=3e-3, warmup_steps=1, eval_every=3, log_every=1,
             checkpoint_every=3, threads=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    base_checkpoint(root / "base", tiny_tokenizer())
    model, tok = load_model(root / "base")
    export_hf(model, tok, root / "hf")
    write_jsonl(root / "chats.jsonl", book_chats())
    write_jsonl(root / "pairs.jsonl", [{"prompt": f"Which book follows {a}?", "chosen": b, "rejected": "No idea"}
                                        for a, b in zip(BOOKS, BOOKS[1:])])
    return root


def _run(root, verb, init, name, data, **extra):
    recipe = write_yaml(root / f"{name}.yaml", {"init": str(root / init), "data": str(root / data),
                                                "val_data": str(root / data), "out_dir": str(root / name),
                                                "train": TRAIN, **extra})
    assert cli([verb, "--config", str(recipe)]) == 0
    return json.loads((root / name / "run.json").read_text())


@pytest.mark.parametrize("verb, data", [("sft", "chats.jsonl"), ("dpo", "pairs.jsonl")])
def test_stage_starts_from_an_imported_hugging_face_directory(starts, verb, data, capsys):
    from_hf = _run(starts, verb, "hf", f"{verb}-hf", data)
    from_foundry = _run(starts, verb, "base", f"{verb}-foundry", data)
    assert from_hf["parents"]["checkpoint_kind"] == "huggingface"
    assert from_foundry["parents"]["checkpoint_kind"] == "foundry"
    assert from_hf["results"]["status"] == "finished" and from_hf["results"]["step"] == 3
    # the same starting weights, so the same training: the imported directory is not a fresh model
    assert from_hf["results"]["val/loss"] == pytest.approx(from_foundry["results"]["val/loss"], rel=1e-4)
    assert f"foundry {verb}: done: step 3" in capsys.readouterr().out


def test_distributed_set_up_leaves_the_config_alone():
    from foundry.config import TrainConfig
    from foundry.train.distributed import setup_distributed

    cfg = TrainConfig(micro_batch_size=2, global_batch_size=8, device="cpu")
    env = setup_distributed(cfg)
    assert env.grad_accum_steps == 4 and cfg.grad_accum_steps == 1  # the recipe as written, for config.yaml


def test_a_stage_whose_pieces_do_not_fit_the_loop_is_refused_before_training(tmp_path):
    from foundry.train.objectives import NextTokenObjective
    from foundry.train.stage import StageConfig, StageRunner

    cfg = StageConfig(out_dir=str(tmp_path / "run"), train={"device": "cpu", "progress": False})
    with StageRunner("probe", cfg) as runner:
        runner.open_run_dir()
        assert (tmp_path / "run" / "config.yaml").is_file()
        with pytest.raises(TypeError, match="list is not a BatchSource"):
            runner.train(None, NextTokenObjective(), [], None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
