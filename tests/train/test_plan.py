"""`foundry plan`: the memory estimate against what autograd saves and the measured peak on CPU,
the FSDP sharding arithmetic, the batch suggestion, time and cost, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from foundry.cli import main as cli_main
from foundry.model.llama import Llama, config_from_preset
from foundry.train.plan import GIB, activation_bytes, estimate_memory, suggest_batch

# One training step measured in a fresh process. MALLOC_MMAP_THRESHOLD_ makes glibc map and unmap every
# allocation over 64 KiB, so the resident set follows the tensors alive; a first step on a tiny model
# loads the library code that the measured steps run, so code pages are not counted as tensors.
MEASURE = r"""
import json, sys, torch, torch.nn.functional as F
from foundry.model.llama import Llama, config_from_preset
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
def step(model, opt, x, y):
    logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1), reduction="sum")
    del logits
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
torch.manual_seed(0)
B, T, overrides = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
cfg = config_from_preset("test", **overrides)
x, y = torch.randint(0, cfg.vocab_size, (2, B, T))
tiny = Llama(config_from_preset("test"))
tiny_opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3)
for _ in range(2):
    step(tiny, tiny_opt, x[:1, :8] % 512, y[:1, :8] % 512)
del tiny, tiny_opt
base = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident set
model = Llama(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(2):  # the second step has AdamW's state allocated from the start
    step(model, opt, x, y)
print(json.dumps({"peak": kib("VmHWM") - base}))
"""

SHAPES = {
    # activations and logits dominate
    "activation-heavy": (8, 256, dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=2, vocab_size=4096)),
    # parameters, gradients and AdamW state dominate
    "parameter-heavy": (1, 32, dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=2, vocab_size=16384)),
}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_estimate_within_35_percent_of_measured_peak_on_cpu(shape):
    batch, block, overrides = SHAPES[shape]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(batch), str(block), json.dumps(overrides)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    cfg = config_from_preset("test", **overrides)
    # CPU training: fp32, one process, torch's default (foreach, not fused) AdamW
    est = estimate_memory(cfg, batch, block, 1, "ddp", "float32", fused_optimizer=False).total
    print(f"{shape}: estimated {est / 1e6:.1f} MB, measured peak {measured / 1e6:.1f} MB")
    assert 0.65 * measured <= est <= 1.35 * measured, (shape, est, measured)


def test_activation_formula_counts_what_autograd_saves():
    """The per-layer formula against the bytes of every distinct tensor saved for backward (fp32)."""
    cfg = config_from_preset("test", n_layer=3, n_embd=128, n_head=4, n_kv_head=2, vocab_size=1024)
    model = Llama(cfg)
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in param_storages:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    B, T = 4, 64
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids)
        F.cross_entropy(logits.float().view(-1, cfg.vocab_size), ids.view(-1), reduction="sum")
    # saved: the blocks' activations plus the fp32 log-softmax (4 V bytes per token)
    expected = activation_bytes(cfg, B * T, "float32") + 4 * cfg.vocab_size * B * T
    assert abs(total - expected) / expected < 0.10, (total, expected)


def test_fsdp_shards_parameters_gradients_and_optimizer():
    cfg = config_from_preset("1b")
    ddp = estimate_memory(cfg, 4, 2048, 8, "ddp")
    fsdp = estimate_memory(cfg, 4, 2048, 8, "fsdp")
    n = cfg.num_params()
    assert (ddp.params, ddp.grads, ddp.optimizer) == (4 * n, 4 * n, 8 * n)
    assert (fsdp.params, fsdp.grads, fsdp.optimizer) == (4 * n // 8, 4 * n // 8, 8 * n // 8)
    assert fsdp.activations == ddp.activations  # activations are per device either way
    assert fsdp.total < ddp.total - 10 * n  # saves most of the 16 bytes per parameter
    # accumulating without sync holds the unsharded gradients until the last micro-step
    assert estimate_memory(cfg, 4, 2048, 8, "fsdp", grad_accum=4).grads == 4 * n // 8 + 4 * n
    assert estimate_memory(cfg, 4, 2048, 8, "ddp", grad_accum=4).grads == 4 * n
    # one device: FSDP has nothing to shard
    assert estimate_memory(cfg, 4, 2048, 1, "fsdp").params == 4 * n


def test_activations_scale_with_tokens_and_bf16_halves_most():
    cfg = config_from_preset("124m")
    a1 = estimate_memory(cfg, 1, 1024, dtype="float32").activations
    assert estimate_memory(cfg, 4, 1024, dtype="float32").activations == 4 * a1
    bf16 = estimate_memory(cfg, 1, 1024, dtype="bfloat16").activations
    assert 0.5 * a1 < bf16 < 0.75 * a1  # fp32 residual stream and norms keep it above one half


def test_suggest_batch_fits_and_reaches_the_target():
    cfg = config_from_preset("350m")
    micro, accum = suggest_batch(cfg, 2048, device_gib=24, target_batch_tokens=524288, world_size=2)
    fits = estimate_memory(cfg, micro, 2048, 2, "ddp").total
    assert fits <= 24 * GIB * 0.85
    assert estimate_memory(cfg, micro * 2, 2048, 2, "ddp").total > 24 * GIB * 0.85
    assert micro * 2048 * 2 * accum >= 524288
    assert micro * 2048 * 2 * (accum - 1) < 524288
    # a 1B model in 16 GiB does not fit with DDP at all, but does fit sharded over 8 devices
    big = config_from_preset("1b")
    assert suggest_batch(big, 2048, 16, 524288, 8, "ddp") is None
    assert suggest_batch(big, 2048, 16, 524288, 8, "fsdp") is not None


def test_cli_prints_time_and_cost_from_the_flop_count(capsys):
    code = cli_main(["plan", "--preset", "124m", "--micro-batch", "8", "--block-size", "1024",
                     "--grad-accum", "4", "--world-size", "8", "--tokens", "10B", "--mfu", "0.5",
                     "--peak-tflops", "1000", "--price", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    cfg = config_from_preset("124m")
    seconds = 10e9 * cfg.flops_per_token(1024) / (8 * 1000e12 * 0.5)
    assert out["tokens_per_step"] == 8 * 1024 * 4 * 8
    assert out["hours"] == pytest.approx(seconds / 3600)
    assert out["cost"] == pytest.approx(seconds / 3600 * 8 * 2)
    assert out["steps"] == -(-10_000_000_000 // (8 * 1024 * 4 * 8))
    assert out["suggestion"] is not None


def test_cli_reads_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  model: {preset: 14m}\n  train: {micro_batch_size: 3, block_size: 128, "
                      "grad_accum_steps: 5, distributed: fsdp}\n")
    assert cli_main(["plan", "--config", str(recipe), "--world-size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["micro_batch"], out["block_size"], out["grad_accum"], out["strategy"]) == (3, 128, 5, "fsdp")
    assert out["params"] == config_from_preset("14m").num_params()


def test_cli_derives_accumulation_from_a_recipes_global_batch(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: test, vocab_size: null}\ntrain: {micro_batch_size: 2, block_size: 64, "
                      "global_batch_size: 32}\n")
    assert cli_main(["plan", "--config", str(recipe), "--world-size", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grad_accum"] == 4  # 32 / (2 x 4)
    assert cli_main(["plan", "--config", str(recipe), "--world-size", "3"]) == 1
    assert "global_batch_size=32 is not divisible" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--preset", "test", "--block-size", "100000"], "exceeds the model's max_seq_len"),
    (["--preset", "nope"], "unknown preset"),
    (["--preset", "test", "--tokens", "lots"], "is not a number"),
    (["--preset", "test", "--micro-batch", "0"], "must be at least 1"),
    ([], "no model preset"),
])
def test_cli_bad_input_is_one_line_error(args, message, capsys):
    assert cli_main(["plan", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("foundry: error:") and message in err and "\n" not in err


# ---- `foundry plan MODEL --context N --method full|lora`: fine-tuning through foundry's own loop --------

FINETUNE_MEASURE = r"""
import json, sys, torch
from foundry.config import TrainConfig
from foundry.model.llama import Llama, config_from_preset
from foundry.model.lora import apply_lora
from foundry.train.loop import train
from foundry.train.objectives import NextTokenObjective, SourceBase
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
class Repeat(SourceBase):
    def __init__(self, batch): self.batch = batch
    def next_batch(self, n): return self.batch
    def state_dict(self): return {}
    def load_state_dict(self, state): pass
B, T, method, ac, overrides, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1",
                                    json.loads(sys.argv[5]), sys.argv[6])
def run(cfg, B, T, run_dir):
    torch.manual_seed(0)
    model = Llama(cfg)
    if method == "lora":
        apply_lora(model, 8, 16.0, 0.0, ["q_proj", "v_proj"])
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1))
    tc = TrainConfig(max_steps=2, micro_batch_size=B, block_size=T, lr=1e-4, warmup_steps=0, log_every=1,
                     eval_every=100, checkpoint_every=100, threads=1, progress=False, device="cpu",
                     activation_checkpointing=ac)
    train(model, NextTokenObjective(), Repeat({"input_ids": ids[:, :-1], "targets": ids[:, 1:]}), tc, run_dir, None)
run(config_from_preset("test"), 1, 8, out + "/warm")  # library code paged in before the measurement
base = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
run(config_from_preset("test", **overrides), B, T, out + "/run")  # two steps: AdamW's state exists in the second
print(json.dumps({"peak": kib("VmHWM") - base}))
"""

FINETUNE_SHAPES = {
    "activations": (4, 256, dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=2, vocab_size=8192, max_seq_len=512)),
    "parameters": (1, 64, dict(n_layer=4, n_embd=256, n_head=4, n_kv_head=2, vocab_size=32768, max_seq_len=512)),
}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("shape,method,checkpointing", [("activations", "full", False), ("activations", "lora", True),
                                                        ("parameters", "full", True), ("parameters", "lora", False)])
def test_finetune_estimate_within_15_percent_of_the_loops_measured_peak(tmp_path, shape, method, checkpointing):
    from foundry.train.plan import estimate_finetune_memory

    batch, context, overrides = FINETUNE_SHAPES[shape]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FINETUNE_MEASURE, str(batch), str(context), method,
                          "1" if checkpointing else "0", json.dumps(overrides), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    est = estimate_finetune_memory(config_from_preset("test", **overrides), batch, context, method,
                                   checkpointing).total
    print(f"{shape} {method} checkpointing={checkpointing}: estimated {est / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB")
    assert 0.85 * measured <= est <= 1.15 * measured, (est, measured)


def test_checkpointing_and_lora_shrink_the_plan_and_the_cli_reads_a_hugging_face_directory(tmp_path, capsys):
    from foundry.train.plan import estimate_finetune_memory

    cfg = config_from_preset("1b")
    full = estimate_finetune_memory(cfg, 1, 2048, "full")
    assert estimate_finetune_memory(cfg, 1, 2048, "full", activation_checkpointing=True).total < full.total
    lora = estimate_finetune_memory(cfg, 1, 2048, "lora")
    assert lora.optimizer < 0.01 * full.optimizer and lora.total < 0.5 * full.total
    # a transformers config.json, as an imported model directory holds it
    hf = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_hidden_layers": 30,
          "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
          "tie_word_embeddings": True, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
          "hidden_act": "silu"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert cli_main(["plan", str(tmp_path), "--context", "1024", "--method", "lora", "--activation-checkpointing",
                     "--gpu", "l4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 130e6 < out["params"] < 140e6 and out["fits"] is True and out["method"] == "lora"
    assert cli_main(["plan", str(tmp_path), "--context", "1024", "--method", "full"]) == 0
    text = capsys.readouterr().out
    assert "peak" in text and "this machine" in text
    assert cli_main(["plan", str(tmp_path), "--method", "full"]) == 1  # --context is required
