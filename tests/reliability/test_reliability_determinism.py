"""Determinism on CPU (docs/DETERMINISM.md): the same seed and config give the same losses, weights and
samples twice; a different seed gives different ones (so these tests can tell)."""

from __future__ import annotations

from tests.helpers.reliability import losses, pretrain_recipe, sft_recipe

from foundry.cli import main as cli
from foundry.checkpoints import MODEL_FILE, step_checkpoints


def _weights(run):
    return (step_checkpoints(run)[-1] / MODEL_FILE).read_bytes()


def test_same_seed_same_losses_and_weights_twice(ws, tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("other-seed", 8)):
        recipe = pretrain_recipe(ws, tmp_path / f"{name}.yaml", tmp_path / name, max_steps=6, seed=seed,
                                 checkpoint_every=6)
        assert cli(["pretrain", "--config", str(recipe)]) == 0
        runs[name] = (losses(tmp_path / name), _weights(tmp_path / name))
    assert runs["a"] == runs["b"] and len(runs["a"][0]) == 6
    assert runs["a"][0] != runs["other-seed"][0] and runs["a"][1] != runs["other-seed"][1]
    # fine-tuning from the same start is deterministic too (shuffled conversation order, packing, loss mask)
    for name in ("sft-a", "sft-b"):
        recipe = sft_recipe(ws, tmp_path / f"{name}.yaml", tmp_path / "a", tmp_path / name, max_steps=4)
        assert cli(["sft", "--config", str(recipe)]) == 0
    assert losses(tmp_path / "sft-a") == losses(tmp_path / "sft-b") and len(losses(tmp_path / "sft-a")) == 4
    assert _weights(tmp_path / "sft-a") == _weights(tmp_path / "sft-b")


def test_same_seed_same_samples_twice(ws, tmp_path, capsys):
    recipe = pretrain_recipe(ws, tmp_path / "r.yaml", tmp_path / "run", max_steps=3, checkpoint_every=3)
    assert cli(["pretrain", "--config", str(recipe)]) == 0
    capsys.readouterr()

    def sample(seed: int, extra=()) -> str:
        assert cli(["generate", str(tmp_path / "run"), "--prompt", "river town", "--max-new-tokens", "24",
                    "--temperature", "1.0", "--seed", str(seed), "--no-stream", *extra]) == 0
        return capsys.readouterr().out

    first, second = sample(3), sample(3)
    assert first == second and len(first) > len("river town")
    assert sample(3, ["--no-cache"]) == first  # the KV cache does not change what is drawn
    assert {sample(s) for s in (4, 5, 6)} != {first}, "different seeds should give different samples"
