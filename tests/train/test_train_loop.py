"""The training loop: accumulation equals a bigger batch, loss falls, NaN guard rolls back, schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from foundry.train.loop import schedule_position, train
from foundry.utils.io import read_metrics
from foundry.train.objectives import NextTokenObjective
from foundry.train.optim import build_optimizer, lr_at
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.helpers.loop_fixtures import FixedBatches, cfg, random_batch, tiny_model

torch.set_num_threads(1)


def test_two_micro_batches_equal_one_batch_twice_as_large(tmp_path):
    gen = torch.Generator().manual_seed(0)
    # Uneven masking: the halves hold different numbers of targets, so averaging per micro-batch would differ.
    half_a, half_b = random_batch(gen, 4, masked_fraction=0.7), random_batch(gen, 4, masked_fraction=0.1)
    assert (half_a["targets"] != -100).sum() != (half_b["targets"] != -100).sum()
    whole = {k: torch.cat([half_a[k], half_b[k]]) for k in half_a}

    captured = []  # the gradients AdamW is about to apply, per run
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: captured.append([p.grad.clone() for g in opt.param_groups for p in g["params"]]))
    try:
        big, accumulated = tiny_model(), tiny_model()
        train(big, NextTokenObjective(), FixedBatches([whole]), cfg(micro_batch_size=8), tmp_path / "a", None)
        train(accumulated, NextTokenObjective(), FixedBatches([half_a, half_b]),
              cfg(micro_batch_size=4, grad_accum_steps=2), tmp_path / "b", None)
    finally:
        hook.remove()
    grads_big, grads_acc = captured
    assert len(grads_big) == len(list(big.parameters()))
    for g_big, g_acc in zip(grads_big, grads_acc):
        torch.testing.assert_close(g_acc, g_big, rtol=0, atol=1e-6)
    # ...and so the weights after the step agree (Adam's first step is ~lr * sign(grad), so 1e-6 of
    # gradient noise on a near-zero entry can move a weight by up to lr; compare nearly all of them).
    untouched = tiny_model()
    for p_big, p_acc, p_init in zip(big.parameters(), accumulated.parameters(), untouched.parameters()):
        close = ((p_acc - p_big).abs() <= 1e-6).float().mean().item()
        assert close > 0.99
        assert (p_big - p_init).abs().max() > 1e-3  # the step really changed the weights
    loss_big = read_metrics(tmp_path / "a")[0]["loss"]
    loss_acc = read_metrics(tmp_path / "b")[0]["loss"]
    assert abs(loss_big - loss_acc) < 1e-6


def test_overfits_one_batch(tmp_path):
    gen = torch.Generator().manual_seed(1)
    batch = random_batch(gen, 2)
    model = tiny_model()
    result = train(model, NextTokenObjective(), FixedBatches([batch]), cfg(max_steps=80, micro_batch_size=2),
                   tmp_path / "run", None)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses[0] > 3.5  # ~ln(64) at random init
    assert result["loss"] < 0.3, losses[-5:]
    assert (tmp_path / "run" / "run.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_0000080" / "model.safetensors").is_file()


class NaNOnCalls(NextTokenObjective):
    """Next-token loss, except the loss is NaN on the given (1-based) call numbers: an injected blow-up."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    def loss(self, model, batch):
        self.calls += 1
        loss_sum, metrics = super().loss(model, batch)
        if self.calls in self.bad_calls:
            loss_sum = loss_sum * float("nan")
        return loss_sum, metrics


def test_nan_guard_skips_then_rolls_back_with_lower_lr(tmp_path):
    gen = torch.Generator().manual_seed(2)
    source = FixedBatches([random_batch(gen, 2) for _ in range(4)])
    model = tiny_model()
    # Steps 5, 6 and 7 blow up: two skips, the third in a row rolls back to the step-4 checkpoint.
    objective = NaNOnCalls({5, 6, 7})
    result = train(model, objective, source, cfg(max_steps=10, micro_batch_size=2, checkpoint_every=4,
                                                 max_bad_steps=3, rollback_lr_factor=0.5), tmp_path / "run", None)
    records = read_metrics(tmp_path / "run")
    skipped = [r for r in records if r.get("event") == "skipped_non_finite"]
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    assert [r["step"] for r in skipped] == [5, 6, 7]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 4 and rollbacks[0]["lr_scale"] == 0.5
    assert result["step"] == 10 and result["lr_scale"] == 0.5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(result["loss"])
    after = [r for r in records if "loss" in r and "event" not in r and r["step"] > 4]
    assert after and all(r["lr"] == pytest.approx(0.5 * 1e-2) for r in after)


def test_nan_guard_without_checkpoint_stops_with_one_line_error(tmp_path):
    from foundry.errors import TrainingError

    gen = torch.Generator().manual_seed(3)
    with pytest.raises(TrainingError, match="non-finite steps in a row before any checkpoint"):
        train(tiny_model(), NaNOnCalls(range(1, 100)), FixedBatches([random_batch(gen, 2)]),
              cfg(max_steps=5, micro_batch_size=2, max_bad_steps=2), tmp_path / "run", None)


def test_schedules():
    c = cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.55)  # halfway through the cosine: midpoint of lr and min_lr
    assert lr_at(100, c) == pytest.approx(0.1)
    w = cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, w) == 1.0 and lr_at(79, w) == 1.0
    assert lr_at(90, w) == pytest.approx(1 - math.sqrt(0.5)) and lr_at(100, w) == pytest.approx(0.0)
    assert lr_at(60, cfg(max_steps=100, warmup_steps=10, lr=1.0, schedule="constant")) == 1.0


def test_weight_decay_only_on_projection_matrices():
    model = tiny_model()
    decay, no_decay = build_optimizer(model, cfg(weight_decay=0.1)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("proj.weight") for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "model.embed_tokens.weight" in no_decay_names and "model.norm.weight" in no_decay_names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_time_budget_drives_the_schedule_so_the_cool_down_ends_in_time():
    c = cfg(max_steps=1000, warmup_steps=10, max_seconds=100.0, schedule="wsd", decay_fraction=0.2, lr=1.0,
            min_lr_ratio=0.0)
    assert schedule_position(5, 99.0, c) == 5  # warm-up counts real steps
    assert schedule_position(50, 50.0, c) == 500  # half the time gone: half the schedule, though few steps ran
    assert lr_at(schedule_position(60, 99.9, c), c) < 0.05  # nearly annealed when time is nearly up
    assert schedule_position(50, 50.0, cfg(max_steps=1000, warmup_steps=10)) == 50  # no time budget: steps


def test_early_stopping_stops_when_validation_stops_improving_and_keeps_best(tmp_path):
    from foundry.checkpoints import load_weights, read_meta, resolve_checkpoint
    from foundry.utils.io import read_json

    gen = torch.Generator().manual_seed(4)
    # Memorising one batch of random tokens: loss on other random tokens first falls (unigram statistics)
    # and then rises as the model overfits, the shape early stopping is for.
    train_batch, val_batch = random_batch(gen, 2), random_batch(gen, 8)
    objective = NextTokenObjective()

    def val_loss(model):
        with torch.no_grad():
            loss_sum, _ = objective.loss(model, val_batch)
        return float(loss_sum) / objective.units(val_batch)

    evaluators = {"val": lambda model: {"loss": val_loss(model)}}
    run = tmp_path / "run"
    result = train(tiny_model(), objective, FixedBatches([train_batch]),
                   cfg(max_steps=300, micro_batch_size=2, eval_every=2, checkpoint_every=10, early_stop_patience=3),
                   run, None, evaluators=evaluators)
    evals = [r for r in read_metrics(run) if "val/loss" in r]
    best = min(evals, key=lambda r: r["val/loss"])
    assert result["stopped_by"] == "early_stop" and result["step"] < 300
    # it stopped at the third evaluation in a row without a new best, and no later
    assert [r["step"] for r in evals if r["step"] > best["step"]] == [best["step"] + 2, best["step"] + 4,
                                                                       best["step"] + 6]
    assert result["step"] == best["step"] + 6 and result["best_step"] == best["step"]
    record = read_json(run / "run.json")["results"]
    assert record["stopped_by"] == "early_stop" and record["best_step"] == best["step"]
    assert [r for r in read_metrics(run) if r.get("event") == "early_stop"][0]["best_step"] == best["step"]
    # downstream stages load the run directory: that resolves to the best step's weights
    ckpt = resolve_checkpoint(run)
    assert ckpt == run / "checkpoints" / "best" and read_meta(ckpt)["step"] == best["step"]
    reloaded = tiny_model(seed=9)
    load_weights(reloaded, ckpt)
    assert val_loss(reloaded) == pytest.approx(best["val/loss"], rel=1e-5)
    assert val_loss(reloaded) < evals[-1]["val/loss"]


def test_early_stopping_without_a_validation_set_is_a_one_line_error(tmp_path):
    from foundry.errors import ConfigError

    gen = torch.Generator().manual_seed(5)
    with pytest.raises(ConfigError, match="early_stop_patience is set but the stage has no validation set"):
        train(tiny_model(), NextTokenObjective(), FixedBatches([random_batch(gen, 2)]),
              cfg(max_steps=5, micro_batch_size=2, early_stop_patience=2), tmp_path / "run", None)
    assert not (tmp_path / "run").exists()


def test_muon_overfits_one_batch_and_resumes_to_the_same_weights(tmp_path):
    """`optimizer: muon` (hidden matrices on Muon, the rest on AdamW) trains, and its state
    (momentum buffers of both optimisers) survives a checkpoint: 3 + 3 steps equal 6 uninterrupted."""
    gen = torch.Generator().manual_seed(4)
    batches = [random_batch(gen, 2) for _ in range(3)]
    muon = dict(optimizer="muon", micro_batch_size=2, lr=2e-2)
    whole = tiny_model()
    train(whole, NextTokenObjective(), FixedBatches(batches), cfg(max_steps=6, **muon), tmp_path / "whole", None)
    halves = tiny_model()
    train(halves, NextTokenObjective(), FixedBatches(batches), cfg(max_steps=3, checkpoint_every=3, **muon),
          tmp_path / "halves", None)
    resumed = tiny_model(seed=9)  # different weights: the checkpoint must supply them
    train(resumed, NextTokenObjective(), FixedBatches(batches), cfg(max_steps=6, **muon), tmp_path / "halves",
          None, resume=True)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    model = tiny_model()
    result = train(model, NextTokenObjective(), FixedBatches(batches[:1]), cfg(max_steps=60, **muon),
                   tmp_path / "overfit", None)
    assert result["loss"] < 0.5
    opt = build_optimizer(tiny_model(), cfg(**muon))
    assert isinstance(opt.optimizers[0], torch.optim.Muon)
    assert all(p.ndim == 2 for p in opt.optimizers[0].param_groups[0]["params"])
    assert opt.optimizers[0].param_groups[0]["ns_steps"] == 5
    assert build_optimizer(tiny_model(), cfg(muon_ns_steps=3, **muon)).optimizers[0].param_groups[0]["ns_steps"] == 3


def test_muon_takes_torchs_step_with_fp32_newton_schulz_on_cpu():
    """foundry's Muon (same-shape matrices batched, Newton-Schulz in fp32 off CUDA) takes torch.optim.Muon's
    step to within bf16 rounding, and its orthogonalisation in bf16 is torch's to bf16 precision."""
    from foundry.train.optim import Muon, orthogonalise

    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 16), (16, 16), (40, 16), (16, 40)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opts = [Muon(ours, lr=0.05, adjust_lr_fn="match_rms_adamw"),
            torch.optim.Muon(theirs, lr=0.05, adjust_lr_fn="match_rms_adamw")]
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    for a, b in zip(ours, theirs):
        assert 0 < (a - b).abs().max() < 2e-3  # different precisions, the same update
    assert opts[0].state_dict()["state"][0].keys() == opts[1].state_dict()["state"][0].keys()

    g = torch.randn(2, 40, 16, generator=gen)
    mine = orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.bfloat16)
    torchs = torch.optim._muon._zeropower_via_newtonschulz(g[1], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(mine[1].float(), torchs.float(), atol=2e-2, rtol=0)
    singular = torch.linalg.svdvals(orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, None))
    assert singular.min() > 0.5 and singular.max() < 1.3  # orthogonal up to the quintic's (0.5, 1.5) band


def test_profile_steps_write_the_operator_table_trace_and_arithmetic_share(tmp_path, capsys):
    gen = torch.Generator().manual_seed(5)
    train(tiny_model(), NextTokenObjective(), FixedBatches([random_batch(gen, 2)]),
          cfg(max_steps=6, micro_batch_size=2, profile_steps=2), tmp_path / "run", None)
    out = tmp_path / "run" / "profile"
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["arithmetic_share"] < 1 and summary["top_other_ops"]
    assert "aten::mm" in (out / "ops.txt").read_text() or "aten::addmm" in (out / "ops.txt").read_text()
    assert json.loads((out / "trace.json").read_text())["traceEvents"]
    assert "of the profiled steps' time in matmul and attention kernels" in capsys.readouterr().err
