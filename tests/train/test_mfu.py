"""An honest MFU: FLOPs counted for the work a step really does, a CPU peak measured once per machine
and cached, and no MFU shown when a run would beat its peak."""

import json

import torch

from foundry import hardware
from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import apply_lora
from foundry.train.loop import train
from foundry.train.throughput import FlopCounter
from foundry.train.objectives import NextTokenObjective, SourceBase


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "_MEASURED_PEAK", {})
    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a, **kw: calls.append(1) or 1e9 + len(calls))
    first = hardware.peak_flops(torch.device("cpu"), torch.float32)
    assert first == 1e9 + 5 and len(calls) == 5  # the best of five trials
    hardware._MEASURED_PEAK.clear()  # a new process: read from the cache, not measured again
    assert hardware.peak_flops(torch.device("cpu"), torch.float32) == first and len(calls) == 5
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [first]
    hardware.distrust_cpu_peak()
    assert json.loads((tmp_path / "peak_flops.json").read_text()) == {}


def test_flops_count_real_tokens_supervised_logits_and_what_trains():
    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))
    cfg = model.config
    ids = torch.full((2, 10), 2)
    ids[0, :10], ids[1, :6] = 5, 5  # rows of 10 and 6 real tokens, pad id 2
    targets = torch.full((2, 10), -100)
    targets[0, 4:9], targets[1, 2:5] = 1, 1  # 8 supervised tokens
    batch = {"input_ids": ids, "targets": targets}
    body, head = cfg.num_params(include_embedding=False), cfg.vocab_size * cfg.n_embd
    attention = 6 * cfg.n_layer * cfg.n_head * cfg.head_dim * (10 ** 2 + 6 ** 2)
    full = FlopCounter(model, 10)(batch, pad_id=2)
    assert full == 16 * 6 * body + attention + 8 * 6 * head
    apply_lora(model, 4, 8.0, 0.0, ["q_proj"])
    lora = FlopCounter(model, 10)(batch, pad_id=2)
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert lora == 16 * (4 * body + 2 * trainable) + attention + 8 * 4 * head
    assert lora < 0.75 * full


class _Repeat(SourceBase):
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self, n):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _run(tmp_path, name, peak):
    from foundry.config import TrainConfig
    from foundry.utils.io import read_metrics

    torch.manual_seed(0)
    model = Llama(config_from_preset("test", vocab_size=64, max_seq_len=32))
    ids = torch.randint(0, 64, (2, 17))
    cfg = TrainConfig(max_steps=2, micro_batch_size=2, block_size=16, lr=1e-3, warmup_steps=0, log_every=1,
                      eval_every=100, checkpoint_every=100, threads=1, progress=False, device="cpu")
    train(model, NextTokenObjective(), _Repeat({"input_ids": ids[:, :-1], "targets": ids[:, 1:]}), cfg,
          tmp_path / name, None)
    return [r for r in read_metrics(tmp_path / name) if "loss" in r]


def test_mfu_is_a_fraction_or_not_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    import foundry.train.loop as loop

    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: 1e11)  # far above what a tiny model reaches
    assert all(0 < r["mfu"] < 1 for r in _run(tmp_path, "a", 1e11))
    dropped = []
    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: 1.0)  # a peak every run beats
    monkeypatch.setattr(loop, "distrust_cpu_peak", lambda: dropped.append(1))
    records = _run(tmp_path, "b", 1.0)
    assert all(r["mfu"] is None for r in records) and dropped  # not shown; the peak measured again next time
