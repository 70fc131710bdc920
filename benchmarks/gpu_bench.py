"""The GPU path, measured: a correctness smoke test of every training stage, then tokens/s and MFU.

    PYTHONPATH=src python benchmarks/gpu_bench.py [--sizes 124m,350m,1b] [--steps 20] [--warmup 6]
                                                 [--block 2048] [--no-compile] [--smoke-only | --bench-only]

(`benchmarks/gpu.sh` runs it.) Needs only torch, numpy, safetensors, tokenizers, transformers (for tqdm),
pyyaml and pydantic: what a bare GPU machine with PyTorch has. Uses APIs present in torch 2.11 and 2.13.

1. Smoke test, on a tiny generated corpus, through the real CLI verbs and the one training loop, with
   no setting changed from CPU (device auto -> CUDA, dtype auto -> bf16 autocast, fused AdamW):
   data tokenize, pretrain (with torch.compile), continue, sft, dpo, a few steps each; a stage passes
   when it exits 0 with finite losses (pretraining must also lower its loss). With 2 or more GPUs, a
   2-process torchrun pretraining under DDP and under FSDP too.
2. Throughput of one optimiser step as the loop runs it (bf16 autocast, fused AdamW, torch.compile,
   gradient clipping, the loop's host syncs for loss and gradient norm), with SDPA forced onto the flash
   attention kernel, at the ~124M, ~350M and ~1B presets. The micro-batch is the largest power of two
   `foundry plan` says fits 85% of the device (halved on an out-of-memory error). MFU = tokens/s x
   training FLOPs per token (LlamaConfig.flops_per_token: 6N + attention, PaLM appendix B) / the GPU's
   dense bf16 peak. The table also shows the measured peak memory beside `foundry plan`'s estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WORDS = ("the lord said unto moses and aaron , go forth into the land which i give thee ; and they went up out "
         "of egypt with all their flocks and herds . in the beginning god created the heaven and the earth").split()
BOOKS = ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "Samuel", "Kings"]


# ---- 1. smoke test -----------------------------------------------------------------------------------
def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(WORDS))
        out.append(" ".join(WORDS[(start + i) % len(WORDS)] if rng.random() > 0.1 else rng.choice(WORDS)
                            for i in range(80)))
    return out


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _losses(run: Path) -> list[float]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and isinstance(record["loss"], (int, float)):
            out.append(float(record["loss"]))
    return out


def _stage(name: str, argv: list[str], run: Path, must_learn: bool = False) -> tuple[str, str]:
    from foundry.cli import main as cli

    t0 = time.perf_counter()
    try:
        code = cli(argv)
    except ModuleNotFoundError as exc:
        return "SKIP", f"missing package {exc.name}"
    except Exception as exc:  # noqa: BLE001 - report every failure in the table, keep going
        traceback.print_exc()
        return "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    seconds = time.perf_counter() - t0
    if code != 0:
        return "FAIL", f"exit code {code}"
    losses = _losses(run) if (run / "metrics.jsonl").exists() else []
    if not losses or not all(math.isfinite(x) for x in losses):
        return "FAIL", f"losses {losses}"
    if must_learn and not losses[-1] < losses[0]:
        return "FAIL", f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    return "PASS", f"{len(losses)} logged steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {seconds:.0f}s"


def smoke(work: Path, compile_model: bool) -> list[tuple[str, str, str]]:
    """Every stage for a few steps on CUDA through the CLI; returns (stage, PASS/FAIL/SKIP, detail)."""
    from foundry.cli import main as cli
    from foundry.data.tokenizer import Tokenizer

    results = []
    data = work / "dataset"
    data.mkdir(parents=True)
    train_texts = _texts(400, 0)
    _write_jsonl(data / "train.jsonl", [{"id": f"t{i}", "source": "gen", "text": t} for i, t in enumerate(train_texts)])
    _write_jsonl(data / "val.jsonl", [{"id": f"v{i}", "source": "gen", "text": t} for i, t in enumerate(_texts(40, 1))])
    (data / "manifest.json").write_text(json.dumps({"sources": ["generated"]}))
    chats = [{"messages": [{"role": "user", "content": f"Which book follows {a}?"},
                           {"role": "assistant", "content": b}]} for a, b in zip(BOOKS, BOOKS[1:])]
    tok = Tokenizer.train(train_texts + [m["content"] for c in chats for m in c["messages"]], vocab_size=512,
                          min_frequency=1)
    tok.save(work / "tokenizer")
    code = cli(["data", "tokenize", str(data), "--tokenizer", str(work / "tokenizer"), "--workers", "1",
                "--no-progress"])
    results.append(("data tokenize", "PASS" if code == 0 else "FAIL", f"exit code {code}"))

    common = {"log_every": 1, "eval_every": 1000, "eval_batches": 2, "checkpoint_every": 1000, "progress": False,
              "warmup_steps": 2, "block_size": 128, "micro_batch_size": 8}
    pre = work / "pretrain"
    _write_yaml(work / "pretrain.yaml", {"out_dir": str(pre), "data": str(data), "tokenizer": str(work / "tokenizer"),
                                         "model": {"preset": "test"},
                                         "train": {**common, "max_steps": 30, "lr": 3e-3, "compile": compile_model}})
    results.append(("pretrain" + (" (compiled)" if compile_model else ""),
                    *_stage("pretrain", ["pretrain", "--config", str(work / "pretrain.yaml")], pre, must_learn=True)))

    cont = work / "continue"
    _write_yaml(work / "continue.yaml", {"init": str(pre), "out_dir": str(cont),
                                         "mixture": [{"name": "gen", "data": str(data), "weight": 1.0}],
                                         "train": {**common, "max_steps": 6}})
    results.append(("continue", *_stage("continue", ["continue", "--config", str(work / "continue.yaml")], cont)))

    _write_jsonl(work / "chats.jsonl", chats)
    sft = work / "sft"
    _write_yaml(work / "sft.yaml", {"init": str(pre), "data": str(work / "chats.jsonl"), "out_dir": str(sft),
                                    "train": {**common, "max_steps": 6, "block_size": 64}})
    results.append(("sft", *_stage("sft", ["sft", "--config", str(work / "sft.yaml")], sft)))

    pairs = [{"prompt": f"Which book follows {a}?", "chosen": b, "rejected": "I do not know"}
             for a, b in zip(BOOKS, BOOKS[1:])]
    _write_jsonl(work / "pairs.jsonl", pairs)
    dpo = work / "dpo"
    init = sft if (sft / "checkpoints").exists() else pre
    _write_yaml(work / "dpo.yaml", {"init": str(init), "data": str(work / "pairs.jsonl"), "out_dir": str(dpo),
                                    "train": {**common, "max_steps": 6, "block_size": 64, "micro_batch_size": 4}})
    results.append(("dpo", *_stage("dpo", ["dpo", "--config", str(work / "dpo.yaml")], dpo)))

    if torch.cuda.device_count() >= 2:
        for strategy in ("ddp", "fsdp"):
            out = work / f"torchrun_{strategy}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "foundry.cli", "pretrain", "--config", str(work / "pretrain.yaml"), f"out_dir={out}",
                   f"train.distributed={strategy}", "train.compile=false", "train.max_steps=10"]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                results.append((f"pretrain x2 GPUs {strategy.upper()}", "FAIL", " | ".join(tail)[:160]))
            else:
                losses = _losses(out)
                results.append((f"pretrain x2 GPUs {strategy.upper()}", "PASS",
                                f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {time.perf_counter() - t0:.0f}s"))
    else:
        results.append(("torchrun DDP/FSDP", "SKIP", "fewer than 2 GPUs"))
    return results


# ---- 2. throughput -----------------------------------------------------------------------------------
def _flash_context():
    """SDPA restricted to the flash kernel, so a silent fallback to another kernel cannot happen."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def bench_size(preset: str, block: int, steps: int, warmup: int, compile_model: bool,
               micro: int | None) -> dict:
    from foundry.model.llama import config_from_preset
    from foundry.hardware import peak_flops
    from foundry.train.plan import GIB, estimate_memory

    device = torch.device("cuda")
    cfg = config_from_preset(preset, max_seq_len=max(block, 2048))
    total_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    micro = micro or _largest_fitting(cfg, block, total_gib)
    while True:
        try:
            seconds, flash = _measure(cfg, micro, block, steps, warmup, compile_model, device)
            break
        except torch.cuda.OutOfMemoryError:
            if micro == 1:
                raise
            micro //= 2
            torch._dynamo.reset()
            print(f"  {preset}: out of memory, retrying with micro-batch {micro}", flush=True)
    tokens_per_s = micro * block * steps / seconds
    peak = peak_flops(device, torch.bfloat16)
    estimate = estimate_memory(cfg, micro, block, 1, "ddp", "bfloat16").total / GIB
    result = {"preset": preset, "params_m": cfg.num_params() / 1e6, "micro": micro, "block": block,
              "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * cfg.flops_per_token(block) / peak,
              "step_s": seconds / steps, "peak_gib": torch.cuda.max_memory_allocated(device) / GIB,
              "plan_gib": estimate, "flash": flash, "compiled": compile_model, "peak_tflops": peak / 1e12}
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return result


def _measure(cfg, micro: int, block: int, steps: int, warmup: int, compile_model: bool,
             device: torch.device) -> tuple[float, bool]:
    """Seconds for `steps` optimiser steps after `warmup`, and whether SDPA ran on the flash kernel."""
    from foundry.config import TrainConfig
    from foundry.model.llama import Llama
    from foundry.train.objectives import NextTokenObjective
    from foundry.train.optim import build_optimizer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = Llama(cfg).to(device)
    optimizer = build_optimizer(model, TrainConfig(micro_batch_size=micro, block_size=block, device="cuda"))
    fwd = torch.compile(model) if compile_model else model
    params = [p for p in model.parameters() if p.requires_grad]
    objective = NextTokenObjective()
    ids = torch.randint(0, cfg.vocab_size, (micro, block + 1), device=device)
    batch = {"input_ids": ids[:, :-1].contiguous(), "targets": ids[:, 1:].contiguous()}
    flash = True
    try:
        with _flash_context():
            _train_step(fwd, objective, batch, optimizer, params, device)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as exc:  # "No available kernel": flash cannot run this shape on this GPU
        print(f"  flash attention unavailable ({str(exc).splitlines()[0][:100]}); using SDPA's default choice")
        flash = False
    with _flash_context() if flash else contextlib.nullcontext():
        for _ in range(warmup):
            _train_step(fwd, objective, batch, optimizer, params, device)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            _train_step(fwd, objective, batch, optimizer, params, device)
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, flash


def _largest_fitting(cfg, block: int, device_gib: float) -> int:
    from foundry.train.plan import GIB, estimate_memory

    micro = 1
    while estimate_memory(cfg, micro * 2, block, 1, "ddp", "bfloat16").total <= 0.85 * device_gib * GIB:
        micro *= 2
    return micro


def _train_step(model, objective, batch, optimizer, params, device) -> None:
    """One optimiser step: the training loop's own (`foundry.train.step.optimizer_step`, one micro-batch,
    bf16 autocast, clipping at 1.0, its host syncs for the loss and the gradient norm)."""
    from foundry.train.step import optimizer_step

    optimizer_step(model, objective, [batch], optimizer, params, device, torch.bfloat16, grad_clip=1.0)


def print_table(rows: list[dict]) -> None:
    name = torch.cuda.get_device_name(0)
    print(f"\nthroughput on {name}, torch {torch.__version__}, bf16 autocast, fused AdamW, "
          f"peak {rows[0]['peak_tflops']:.0f} TFLOP/s bf16 dense" if rows else "")
    print(f"{'preset':>7} {'params':>8} {'micro x T':>11} {'tokens/s':>11} {'MFU':>6} {'step s':>7} "
          f"{'peak GiB':>9} {'plan GiB':>9} {'flash':>6} {'compile':>8}")
    for r in rows:
        print(f"{r['preset']:>7} {r['params_m']:7.0f}M {r['micro']:>4} x {r['block']:<4} {r['tokens_per_s']:11,.0f} "
              f"{r['mfu']:6.1%} {r['step_s']:7.3f} {r['peak_gib']:9.1f} {r['plan_gib']:9.1f} "
              f"{'yes' if r['flash'] else 'NO':>6} {'yes' if r['compiled'] else 'no':>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="124m,350m,1b")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per size")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps first (compilation happens here)")
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, help="default: the largest power of two foundry plan says fits")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--smoke-only", action="store_true")
    p.add_argument("--bench-only", action="store_true")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--cpu-check", action="store_true", help="run the smoke test on the CPU (checks the script)")
    args = p.parse_args(argv)
    if args.cpu_check:
        with tempfile.TemporaryDirectory(prefix="foundry-gpu-smoke-") as tmp:
            rows = smoke(Path(tmp), compile_model=False)
        for stage, verdict, detail in rows:
            print(f"  {stage:<26} {verdict:<5} {detail}")
        return 1 if any(v == "FAIL" for _, v, _ in rows) else 0
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    failed = False
    if not args.bench_only:
        with tempfile.TemporaryDirectory(prefix="foundry-gpu-smoke-") as tmp:
            rows = smoke(Path(tmp), compile_model=not args.no_compile)
        print("\nsmoke test (CUDA, settings as on CPU: device auto, dtype auto)")
        for stage, verdict, detail in rows:
            print(f"  {stage:<26} {verdict:<5} {detail}")
        failed = any(v == "FAIL" for _, v, _ in rows)
        report["smoke"] = rows
    if not args.smoke_only:
        results = []
        for preset in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            print(f"benchmarking {preset} ...", flush=True)
            results.append(bench_size(preset, args.block, args.steps, args.warmup, not args.no_compile,
                                      args.micro_batch))
            torch.cuda.empty_cache()
        print_table(results)
        report["throughput"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
