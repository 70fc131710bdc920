"""GRPO (`foundry rl`): the loss against hand-computed numbers, zero-advantage groups give no gradient, the
KL term is zero for identical policies (the sampler is the serving engine's decoder: tests/model/test_decoding.py),
a killed run resumes to the same weights, and bad inputs fail in one line without touching the run directory."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers.files import write_jsonl, write_yaml
from tests.helpers.posttrain import BOOKS, base_checkpoint, tiny_tokenizer

from foundry.cli import main as cli
from foundry.lm_metrics import IGNORE_INDEX
from foundry.train.grpo import (
    GRPOObjective, group_advantages, grpo_token_loss, token_logps,
)

TRAIN = dict(max_steps=4, micro_batch_size=2, block_size=64, lr=1e-3, log_every=1, eval_every=100,
             checkpoint_every=2, threads=1, progress=False, seed=3)


# ---- the loss on hand-computed numbers ----------------------------------------------------------------

class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are its parameter: log-probs are known by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids):
        return self.logits


def _toy_batch():
    torch.manual_seed(0)
    N, T, V = 4, 3, 5  # 2 prompts x G=2, 3 positions
    logits = torch.randn(N, T, V)
    targets = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 3, IGNORE_INDEX], [IGNORE_INDEX, 0, 4],
                            [IGNORE_INDEX, 2, 2]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])  # second group: all equal -> zero advantage
    return logits, targets, rewards


@pytest.mark.parametrize("norm", ["constant", "token", "sequence"])
def test_loss_equals_hand_computed_grpo(norm):
    logits, targets, rewards = _toy_batch()
    N, T, V = logits.shape
    adv = group_advantages(rewards, 2)
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]
    old = torch.full((N, T), -1.2)  # an older sampling policy, so the ratio and the clip are exercised
    ref = torch.full((N, T), -2.0)
    eps, beta, L = 0.2, 0.1, 7
    batch = {"input_ids": torch.zeros(N, T, dtype=torch.long), "targets": targets, "advantages": adv,
             "old_logps": old, "ref_logps": ref}
    obj = GRPOObjective(clip_eps=eps, kl_beta=beta, loss_norm=norm, max_new_tokens=L)
    loss_sum, metrics = obj.loss(FixedLogits(logits), batch)

    # by hand, token by token
    total, seq_means, n_tokens = 0.0, [], 0
    for i in range(N):
        row = []
        for t in range(T):
            y = int(targets[i, t])
            if y == IGNORE_INDEX:
                continue
            lp = float(torch.log_softmax(logits[i, t], -1)[y])
            ratio = math.exp(lp - (-1.2))
            a = float(adv[i])
            pg = -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            d = -2.0 - lp
            kl = math.exp(d) - d - 1
            row.append(pg + beta * kl)
        total += sum(row)
        seq_means.append(sum(row) / len(row))
        n_tokens += len(row)
    expected = {"constant": total / (N * L), "token": total / n_tokens, "sequence": sum(seq_means) / N}[norm]
    assert float(loss_sum.detach()) / obj.units(batch) == pytest.approx(expected, rel=1e-5)


def test_advantage_scaled_by_group_std_as_in_grpo():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # sample std, as torch and TRL compute it
    expected = [(1 - 0.25) / (std + 1e-4)] + [(0 - 0.25) / (std + 1e-4)] * 3
    assert group_advantages(r, 4, scale=True).tolist() == pytest.approx(expected)


# ---- gradients on a real model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from foundry.model.llama import Llama, config_from_preset

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = Llama(config_from_preset("test", max_seq_len=64))
    return model, tok


def _real_batch(tok, rewards, G=2):
    torch.manual_seed(1)
    N, T = len(rewards), 12
    ids = torch.randint(10, tok.vocab_size, (N, T))
    targets = torch.full((N, T), IGNORE_INDEX)
    targets[:, 5:-1] = ids[:, 6:]  # completion tokens only
    rewards = torch.tensor(rewards)
    return {"input_ids": ids, "targets": targets, "rewards": rewards, "advantages": group_advantages(rewards, G)}


def _grads(model, objective, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, _ = objective.loss(model, batch)
    loss_sum.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_zero_advantage_groups_contribute_no_gradient(tiny):
    model, tok = tiny
    obj = GRPOObjective(kl_beta=0.0, max_new_tokens=8)
    flat = _real_batch(tok, [1.0, 1.0, 0.0, 0.0])  # every group all-right or all-wrong: nothing to learn
    assert all(float(g.abs().max()) == 0.0 for g in _grads(model, obj, flat).values())

    mixed = _real_batch(tok, [1.0, 0.0, 1.0, 1.0])  # group 2 has zero advantage
    only_first = {k: v[:2] for k, v in mixed.items()}
    g_mixed, g_first = _grads(model, obj, mixed), _grads(model, obj, only_first)
    assert any(float(g.abs().max()) > 0 for g in g_first.values())
    for name in g_mixed:
        torch.testing.assert_close(g_mixed[name], g_first[name], rtol=1e-5, atol=1e-7)


def test_kl_is_zero_for_identical_policies(tiny):
    model, tok = tiny
    batch = _real_batch(tok, [1.0, 1.0, 0.0, 0.0])  # zero advantages: the loss is the KL term alone
    with torch.no_grad():
        batch["ref_logps"] = token_logps(model, batch["input_ids"], batch["targets"])
    obj = GRPOObjective(kl_beta=1.0, max_new_tokens=8)
    loss_sum, metrics = obj.loss(model, batch)
    assert float(metrics["kl"]) == 0.0 and float(loss_sum.detach()) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in _grads(model, obj, batch).values())
    # a different reference gives a positive KL (the estimator is not identically zero)
    batch["ref_logps"] = batch["ref_logps"] - 0.3 * (batch["targets"] != IGNORE_INDEX)
    _, metrics = obj.loss(model, batch)
    assert float(metrics["kl"]) > 0.0


def test_k3_estimator_matches_its_formula():
    logps, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    _, kl = grpo_token_loss(logps, logps, ref, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), 0.2, 1.0)
    d = ref - logps
    torch.testing.assert_close(kl, torch.exp(d) - d - 1)


# ---- end to end: the verb, resume after a kill, bad inputs ------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    tok = tiny_tokenizer()
    base_checkpoint(root / "base", tok, max_seq_len=64)
    items = [{"prompt": f"Which book follows {a}?", "answer": b} for a, b in zip(BOOKS, BOOKS[1:])]
    write_jsonl(root / "prompts.jsonl", items[:8])
    write_jsonl(root / "val.jsonl", items[8:11])
    write_jsonl(root / "noanswer.jsonl", [{"prompt": "Which book follows Ruth?"}])
    return root


def _recipe(root, name, **extra):
    train = {**TRAIN, **extra.pop("train", {})}
    data = {"init": str(root / "base"), "prompts": str(root / "prompts.jsonl"), "val_prompts": str(root / "val.jsonl"),
            "out_dir": str(root / name), "group_size": 3, "max_new_tokens": 6, "kl_beta": 0.1,
            "verifiers": [{"type": "exact"}, {"type": "regex", "pattern": "[aeiou]"},  # random text: rewards vary
                          {"type": "length_penalty", "free_tokens": 2, "per_token": 0.05}],
            "train": train, **extra}
    return write_yaml(root / f"{name}.yaml", data)


def _weights(run):
    from safetensors.torch import load_file

    ckpts = sorted((run / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


@pytest.mark.slow
def test_rl_runs_logs_and_resumes_after_a_kill_to_the_same_weights(workdir, capsys):
    assert cli(["rl", "--config", str(_recipe(workdir, "full"))]) == 0
    out = capsys.readouterr().out
    assert "held-out pass@1" in out and "time per step: generation" in out
    records = [json.loads(line) for line in (workdir / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("reward", "kl", "zero_adv_groups", "completion_len", "capped", "time/generation_s",
                "time/scoring_s", "time/optimise_s"):
        assert key in steps[-1], key
    assert 0.0 <= steps[-1]["zero_adv_groups"] <= 1.0 and steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert records[0]["step"] == 0 and "heldout/pass@1" in records[0] and "heldout/pass@3" in records[0]
    assert any(r["grad_norm"] > 0 for r in steps) and min(r["zero_adv_groups"] for r in steps) < 1.0
    results = json.loads((workdir / "full" / "run.json").read_text())["results"]
    # random text rarely stops within 6 tokens: the run counts its capped completions, as its log did
    assert results["status"] == "finished" and results["capped_total"] == steps[-1]["capped_total"] > 0
    assert [r["capped_total"] for r in steps] == sorted(r["capped_total"] for r in steps)

    # the same run, SIGKILLed once its step-2 checkpoint is on disk, then resumed
    recipe = _recipe(workdir, "killed", train={"max_steps": 4, "checkpoint_every": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys, foundry.cli; sys.exit(foundry.cli.main(sys.argv[1:]))",
                             "rl", "--config", str(recipe)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = workdir / "killed" / "checkpoints" / "step_0000002"
    deadline = time.time() + 120
    while not (ckpt / "meta.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (workdir / "killed" / "checkpoints" / "step_0000004").exists()  # killed mid-run
    assert cli(["rl", "--config", str(recipe), "--resume"]) == 0
    a, b = _weights(workdir / "full"), _weights(workdir / "killed")
    assert a.keys() == b.keys()
    from safetensors.torch import load_file

    init = load_file(str(workdir / "base" / "model.safetensors"))
    assert any(not torch.equal(a[name], init[name]) for name in a)  # the policy moved
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def _fails(capsys, argv, *needles):
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_fail_in_one_line_and_write_nothing(workdir, capsys, tmp_path, monkeypatch):
    r = _recipe(workdir, "bad1", prompts=str(workdir / "noanswer.jsonl"))
    _fails(capsys, ["rl", "--config", str(r)], "noanswer.jsonl:1", "answer", "exact")
    r = _recipe(workdir, "bad2", group_size=1)
    _fails(capsys, ["rl", "--config", str(r)], "group_size", "at least 2")
    r = _recipe(workdir, "bad3", verifiers=[{"type": "python", "function": "no_such_module_xyz:check"}])
    _fails(capsys, ["rl", "--config", str(r)], "no_such_module_xyz", "cannot import")
    for name in ("bad1", "bad2", "bad3"):
        assert not (workdir / name).exists()

    # a verifier that raises: an error naming the prompt, not a zero reward
    (tmp_path / "myverifiers.py").write_text("def picky(completion, item):\n    raise ValueError('cannot parse')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = _recipe(workdir, "bad4", verifiers=[{"type": "python", "function": "myverifiers:picky"}])
    _fails(capsys, ["rl", "--config", str(r)], ".jsonl:", "(prompt 'Which book follows", "myverifiers:picky", "cannot parse")

    # an existing run is never overwritten by a new one
    (workdir / "keep").mkdir()
    (workdir / "keep" / "marker").write_text("x")
    r = _recipe(workdir, "keep")
    _fails(capsys, ["rl", "--config", str(r)], "already holds a run")
    assert (workdir / "keep" / "marker").read_text() == "x"


def test_length_cap_ends_and_counts_runaway_completions(workdir, capsys):
    # a random model rarely emits <|end|> within 2 tokens: the cap ends its completions and counts them
    r = _recipe(workdir, "capped", max_new_tokens=2, val_prompts=None, train={"max_steps": 1})
    assert cli(["rl", "--config", str(r)]) == 0
    run_json = json.loads((workdir / "capped" / "run.json").read_text())["results"]
    step = [json.loads(line) for line in (workdir / "capped" / "metrics.jsonl").read_text().splitlines()][-1]
    assert run_json["capped_total"] == round(step["capped"] * 2 * 3) > 0
    assert "completions capped at 2 tokens" in capsys.readouterr().out


def test_rl_help_lists_every_recipe_key_with_its_description(capsys):
    from foundry.commands import recipe_keys
    from foundry.train.grpo import GRPOConfig

    with pytest.raises(SystemExit) as stop:
        cli(["rl", "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    keys = recipe_keys(GRPOConfig)
    assert {"group_size", "kl_beta", "loss_norm", "verifiers[].type", "train.micro_batch_size"} <= {k for k, *_ in keys}
    for key, _, _, description in keys:
        assert description, f"rl: recipe key '{key}' has no description"
        assert description[:40] in out
