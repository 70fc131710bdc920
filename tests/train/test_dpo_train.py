"""`foundry dpo` end to end on a tiny model: one model in memory, reference log-probs cached, the
chosen-over-rejected margin rises on held-out pairs, every loss variant starts where theory says."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, tiny_tokenizer

from foundry.cli import main as cli
from foundry.data.prefs import read_preferences
from foundry.checkpoints import load_model
from foundry.train.dpo import PairBatches, encode_pairs, pair_logps

TRAIN = dict(max_steps=40, micro_batch_size=4, block_size=64, lr=3e-3, warmup_steps=2, eval_every=20,
             log_every=1, checkpoint_every=20, threads=1, progress=False)


def _pairs(books):
    return [{"prompt": f"Which book follows {a}?", "chosen": b, "rejected": "I do not know that one"}
            for a, b in zip(books, books[1:])]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = tiny_tokenizer()
    base_checkpoint(root / "base", tok)
    write_jsonl(root / "train.jsonl", _pairs(BOOKS[:10]))
    write_jsonl(root / "val.jsonl", _pairs(BOOKS[9:]))
    return root


def _recipe(root, name, **extra):
    train = {**TRAIN, **extra.pop("train", {})}
    return write_yaml(root / f"{name}.yaml", {"init": str(root / "base"), "data": str(root / "train.jsonl"),
                                              "val_data": str(root / "val.jsonl"), "out_dir": str(root / name),
                                              "beta": 0.1, "train": train, **extra})


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _heldout_margin(model, tok, path):
    encoded, _ = encode_pairs(tok, read_preferences(path), 64)
    batch = next(PairBatches(encoded, 0, tok.pad_id).eval_batches(len(encoded)))
    with torch.no_grad():
        chosen, rejected = pair_logps(model, batch)
    return float((chosen - rejected).mean())


def test_dpo_raises_heldout_margin_with_one_model(workdir, monkeypatch, capsys):
    import foundry.model.llama as llama

    built = []
    original = llama.Llama.__init__

    def counting_init(self, *a, **kw):
        built.append(self)
        original(self, *a, **kw)

    monkeypatch.setattr(llama.Llama, "__init__", counting_init)
    root = workdir
    assert cli(["dpo", "--config", str(_recipe(root, "run"))]) == 0
    assert len(built) == 1  # the policy only: the reference exists as cached numbers
    monkeypatch.setattr(llama.Llama, "__init__", original)
    assert "reference log-probs computed once" in capsys.readouterr().out
    assert (root / "run" / "reference_logps.safetensors").is_file()

    metrics = _metrics(root / "run")
    first = next(m for m in metrics if m.get("step") == 1 and "loss" in m)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    results = json.loads((root / "run" / "run.json").read_text())["results"]
    assert results["val/reward_margin"] > 0 and results["val/reward_accuracy"] == 1.0
    assert results["rewards/accuracy"] == 1.0

    base, tok = load_model(root / "base")
    tuned, _ = load_model(root / "run" / "checkpoints" / f"step_{TRAIN['max_steps']:07d}")
    before = _heldout_margin(base, tok, root / "val.jsonl")
    after = _heldout_margin(tuned, tok, root / "val.jsonl")
    print(f"held-out chosen-over-rejected log-prob margin: before {before:.3f}, after {after:.3f}")
    assert after > before + 1.0

    # resume reuses the cached reference (no second reference pass) and continues training
    assert cli(["dpo", "--config", str(_recipe(root, "run")), "--resume", "train.max_steps=44"]) == 0
    assert "loaded from cache" in capsys.readouterr().out
    assert max(m["step"] for m in _metrics(root / "run")) == 44


@pytest.mark.parametrize("loss,first_loss", [("ipo", (0 - 1 / (2 * 0.1)) ** 2), ("cdpo", math.log(2))])
def test_variants_start_at_theoretical_value(workdir, loss, first_loss):
    root = workdir
    recipe = _recipe(root, f"run_{loss}", loss=loss, label_smoothing=0.2, train={"max_steps": 2, "eval_every": 100})
    assert cli(["dpo", "--config", str(recipe)]) == 0
    first = next(m for m in _metrics(root / f"run_{loss}") if m.get("step") == 1 and "loss" in m)
    assert first["loss"] == pytest.approx(first_loss, rel=1e-4)


@pytest.mark.parametrize("record,needle", [
    ({"prompt": "Which book follows Ruth?", "rejected": "x"}, "train.jsonl:2: missing 'chosen'"),
    ({"prompt": "Which book follows Ruth?", "chosen": "1 Samuel", "rejected": ""}, "train.jsonl:2: 'rejected' is empty"),
])
def test_bad_preferences_one_line_nothing_written(tmp_path, workdir, capsys, record, needle):
    write_jsonl(tmp_path / "train.jsonl", [_pairs(BOOKS[:2])[0], record])
    out = tmp_path / "out"
    recipe = write_yaml(tmp_path / "r.yaml", {"init": str(workdir / "base"), "data": str(tmp_path / "train.jsonl"),
                                              "out_dir": str(out), "train": TRAIN})
    assert cli(["dpo", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error: ") and needle in err and err.count("\n") == 1
    assert not out.exists()


def test_completion_only_logps_match_full_logits_with_the_same_gradient():
    """pair_logps projects only completion positions to the vocabulary; it must give the log-probs and the
    gradient of scoring the full (2B, T, V) logits."""
    from foundry.model.llama import Llama, config_from_preset
    from foundry.train.preference import sequence_logps

    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))
    input_ids = torch.randint(0, 512, (4, 12))
    targets = torch.full((4, 12), -100)
    for row, start in enumerate([2, 5, 3, 9]):  # prompts of different lengths, then completions
        targets[row, start:11] = input_ids[row, start + 1:12]
    batch = {"input_ids": input_ids, "targets": targets}

    chosen, rejected = pair_logps(model, batch)
    grads_scored = torch.autograd.grad((chosen - rejected).sum(), list(model.parameters()))
    full = sequence_logps(model(input_ids), targets)  # the (B, T, V) way
    grads_full = torch.autograd.grad((full[:2] - full[2:]).sum(), list(model.parameters()))

    torch.testing.assert_close(torch.cat([chosen, rejected]), full, rtol=0, atol=1e-5)
    for a, b in zip(grads_scored, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
