"""The training progress bar follows the budget that ends the run; the pipeline's stage list shows time boxes."""

import io

import pytest

from foundry.pipeline import stage_budget, stage_list
from foundry.train.progress import BudgetProgress, progress_state, progress_text
from foundry.utils.timefmt import clock


def test_a_time_boxed_run_follows_its_clock_not_max_steps():
    # The case: a 4-minute pretraining with max_steps=100000 as a ceiling, one minute in at step 250.
    s = progress_state(step=250, max_steps=100_000, elapsed=60.0, max_seconds=240.0)
    assert s["fraction"] == pytest.approx(0.25) and s["bound"] == "time" and s["left_s"] == pytest.approx(180.0)
    text = progress_text(250, 100_000, 60.0, 240.0, s, tokens_per_s=12345.6, mfu=0.0312, loss=3.21)
    assert text == "1:00 of 4:00 time box · step 250 · 12,346 tok/s · MFU 3.1% · 3:00 left · loss 3.2100"
    # The step budget ends a boxed run first when the steps run out sooner: 90 of 100 steps in 30 s of 240.
    s = progress_state(step=90, max_steps=100, elapsed=30.0, max_seconds=240.0)
    assert s["fraction"] == pytest.approx(0.9) and s["bound"] == "steps" and s["left_s"] == pytest.approx(30 / 90 * 10)


def test_a_step_run_and_a_resumed_run():
    s = progress_state(step=50, max_steps=200, elapsed=10.0, max_seconds=None)
    assert (s["fraction"], s["left_s"], s["bound"]) == (0.25, pytest.approx(30.0), "steps")
    assert "step 50/200" in progress_text(50, 200, 10.0, None, s) and "0:30 left" in progress_text(50, 200, 10.0, None, s)
    # Resumed at step 100 after 100 s: the rate counts this process only (10 steps in 5 s), not 110 in 105 s.
    s = progress_state(step=110, max_steps=200, elapsed=105.0, max_seconds=None, start_step=100, start_elapsed=100.0)
    assert s["left_s"] == pytest.approx(90 * 0.5)
    assert progress_state(step=100, max_steps=200, elapsed=100.0, max_seconds=None, start_step=100,
                          start_elapsed=100.0)["left_s"] is None  # no rate yet
    assert clock(None) == "?" and clock(9000) == "2:30:00" and clock(61.4) == "1:01"


def test_the_bar_shows_the_budget():
    out = io.StringIO()
    bar = BudgetProgress("pretrain", 100_000, 240.0, file=out, mininterval=0)
    bar.update(250, 60.0, tokens_per_s=1000.0, mfu=0.05, loss=3.0)
    bar.update(500, 120.0)  # metrics stay until the loop logs new ones
    bar.close()
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("pretrain:  50%|") and "2:00 of 4:00 time box" in last and "2:00 left" in last
    assert "1,000 tok/s" in last and "MFU 5.0%" in last and "2:30:00" not in out.getvalue()


def test_pipeline_stage_budgets():
    assert stage_budget({"train": {"max_seconds": 240, "max_steps": 100000}}, []) == 240.0
    assert stage_budget({"train": {"max_seconds": 240}}, ["train.max_seconds=60"]) == 60.0
    assert stage_budget(None, ["--out", "x"]) is None
    text = stage_list(["data", "pretrain", "sft"], {"data": None, "pretrain": 240.0, "sft": 200.0})
    assert text.splitlines() == ["[foundry run] 3 stage(s); time boxes add up to 7:20", "  1/3 data",
                                 "  2/3 pretrain (time box 4:00)", "  3/3 sft (time box 3:20)"]


def test_the_training_loop_bar_of_a_time_boxed_run(tmp_path, capsys):
    import torch

    from foundry.config import TrainConfig
    from foundry.model.llama import Llama, config_from_preset
    from foundry.train.loop import train
    from foundry.train.objectives import NextTokenObjective, SourceBase

    torch.manual_seed(0)
    model = Llama(config_from_preset("test", vocab_size=64, max_seq_len=32))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (2, 17), generator=gen)
    batch = {"input_ids": ids[:, :-1].clone(), "targets": ids[:, 1:].clone()}

    class Same(SourceBase):
        def next_batch(self, batch_size):
            return batch

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = TrainConfig(max_steps=100_000, max_seconds=1.5, micro_batch_size=2, block_size=16, lr=1e-3,
                      warmup_steps=0, schedule="constant", eval_every=10**6, checkpoint_every=10**6, log_every=5,
                      threads=1, progress=True, device="cpu")
    result = train(model, NextTokenObjective(), Same(), cfg, tmp_path / "run", None)
    assert result["stopped_by"] == "max_seconds" and result["step"] < 100_000
    err = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in err.splitlines() if "time box" in line][-1]
    # The bar ends full because the time box ended the run, not at a few steps out of 100,000.
    assert "100%|" in last and "of 0:02 time box" in last and "tok/s" in last and "0:00 left" in last
