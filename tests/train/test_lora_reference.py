"""LoRA in DPO, GRPO and continual pretraining: the reference is the same weights with the adapters off
(no second model in memory), and each stage's best checkpoint holds plain merged weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, tiny_tokenizer

from foundry.checkpoints import load_model
from foundry.cli import main as cli
from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import LoRALinear, apply_lora, disable_adapters

LORA = {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "up_proj"]}


def test_adapters_off_is_exactly_the_base_model_and_comes_back_on():
    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))
    base = copy.deepcopy(model)
    apply_lora(model, 4, 8.0, 0.0, ["q_proj", "v_proj"])
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.1)  # a trained adapter: the outputs differ
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        adapted = model(ids)
        with disable_adapters(model):
            off = model(ids)
        again = model(ids)
        plain = base(ids)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(off, plain, rtol=0, atol=0)
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_ref")
    tok = tiny_tokenizer()
    base_checkpoint(root / "base", tok, max_seq_len=64)
    pairs = [{"prompt": f"Which book follows {a}?", "chosen": b, "rejected": "I do not know that one"}
             for a, b in zip(BOOKS[:10], BOOKS[1:11])]
    write_jsonl(root / "pairs.jsonl", pairs)
    items = [{"prompt": f"Which book follows {a}?", "answer": b} for a, b in zip(BOOKS, BOOKS[1:])]
    write_jsonl(root / "prompts.jsonl", items[:6])
    return root


def _plain_and_moved(run, base_dir):
    """The best checkpoint holds plain Llama keys (adapters merged) and differs from the start."""
    from safetensors.torch import load_file

    best = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    init = load_file(str(base_dir / "model.safetensors"))
    assert best.keys() == init.keys()
    assert any(not torch.equal(best[k], init[k]) for k in best)
    assert json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["lora_merged"] is True


def test_dpo_with_lora_one_model_reference_from_the_base_weights(workdir, monkeypatch):
    import foundry.model.llama as llama
    from safetensors.torch import load_file

    from foundry.data.prefs import read_preferences
    from foundry.train.dpo import PairBatches, encode_pairs, reference_logps

    built, original = [], llama.Llama.__init__
    monkeypatch.setattr(llama.Llama, "__init__", lambda self, *a, **kw: (built.append(self), original(self, *a, **kw))[1])
    recipe = write_yaml(workdir / "dpo.yaml", {
        "init": str(workdir / "base"), "data": str(workdir / "pairs.jsonl"), "out_dir": str(workdir / "dpo"),
        "lora": LORA, "train": dict(max_steps=6, micro_batch_size=4, block_size=64, lr=1e-2, warmup_steps=0,
                                    log_every=1, checkpoint_every=100, threads=1, progress=False)})
    assert cli(["dpo", "--config", str(recipe)]) == 0
    monkeypatch.setattr(llama.Llama, "__init__", original)
    assert len(built) == 1  # the policy only
    first = next(json.loads(line) for line in (workdir / "dpo" / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in line)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    base, tok = load_model(workdir / "base")
    encoded, _ = encode_pairs(tok, read_preferences(workdir / "pairs.jsonl"), 64)
    expected = reference_logps(base, PairBatches(encoded, 0, tok.pad_id), 4, "cpu")
    cached = load_file(str(workdir / "dpo" / "reference_logps.safetensors"))["train"]
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)
    _plain_and_moved(workdir / "dpo", workdir / "base")


def test_grpo_with_lora_and_kl_keeps_one_copy_of_the_weights(workdir, monkeypatch):
    import foundry.train.grpo as grpo

    real_deepcopy = copy.deepcopy

    def no_model_copy(obj, *a, **kw):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("a second copy of the model was made")
        return real_deepcopy(obj, *a, **kw)

    monkeypatch.setattr(grpo.copy, "deepcopy", no_model_copy)
    recipe = write_yaml(workdir / "rl.yaml", {
        "init": str(workdir / "base"), "prompts": str(workdir / "prompts.jsonl"), "out_dir": str(workdir / "rl"),
        "group_size": 3, "max_new_tokens": 6, "kl_beta": 0.1, "lora": LORA,
        "verifiers": [{"type": "exact"}, {"type": "regex", "pattern": "[aeiou]"}],
        "train": dict(max_steps=3, micro_batch_size=2, block_size=64, lr=3e-2, threads=1, progress=False,
                      checkpoint_every=100)})
    assert cli(["rl", "--config", str(recipe)]) == 0
    steps = [json.loads(line) for line in (workdir / "rl" / "metrics.jsonl").read_text().splitlines() if '"kl"' in line]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the starting policy
    assert max(s["kl"] for s in steps[1:]) > 0  # and stays there while the adapters move the policy
    best = workdir / "rl" / "checkpoints"
    assert any(best.glob("step_*"))


def test_continual_pretraining_with_lora_saves_merged_weights(tmp_path_factory, tmp_path):
    from tests.helpers.continual_corpora import build_base

    from foundry.train.continual import ContinueConfig, run_continue

    b = build_base(tmp_path_factory)  # shared with tests/train/test_continual.py (built once per session)
    cfg = ContinueConfig(init=str(b["base"]), mixture=[{"name": "fr", "data": str(b["fr"]), "weight": 1.0}],
                         out_dir=str(tmp_path / "run"), lora=LORA,
                         train=dict(max_steps=4, micro_batch_size=2, block_size=32, lr=1e-2, warmup_steps=0,
                                    eval_every=2, eval_batches=1, checkpoint_every=100, threads=1, progress=False))
    run_continue(cfg)
    from foundry.checkpoints import resolve_checkpoint

    _plain_and_moved(tmp_path / "run", Path(resolve_checkpoint(b["base"])))
