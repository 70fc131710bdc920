"""Training throughput: foundry's Llama vs transformers' LlamaForCausalLM, same config, batch and threads.

One training step = forward, loss, backward, AdamW step (foundry's is the loop's own
`foundry.train.step.optimizer_step`, which also measures the gradient norm and checks the loss is finite). Both models start from the same weights and
are timed alternately in one process (rounds of `--steps` steps: A B, B A, A B, ...) so drift in a shared
machine's load hits both; printed: the median tokens/s over rounds with its min-max, and the median of
the per-round ratio with its min-max. Writes `benchmarks/results/NAME.json`.
MFU is against a 2048x2048 fp32 matmul rate measured in the same run on CPU (the practical peak), or
the GPU's bf16 table peak on CUDA (bf16 autocast there).

    python benchmarks/train_throughput.py                        # ~4M and ~14M configs, CPU
    python benchmarks/train_throughput.py --configs 124m --batch 16 --block 1024   # on a GPU
    python benchmarks/train_throughput.py --compile              # also time torch.compile'd foundry
    python benchmarks/train_throughput.py --profile 4m           # where foundry's step spends its time
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from foundry.config import TrainConfig
from foundry.model.llama import Llama, config_from_preset
from foundry.hardware import accelerator_named, measure_matmul_flops
from foundry.train.step import optimizer_step
from foundry.train.objectives import NextTokenObjective
from foundry.train.optim import build_optimizer
from record import load_average, machine, write_result


def hf_model_from(ours: Llama):
    """transformers' LlamaForCausalLM with our config and, via the shared key names, our weights."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    c = ours.config
    hf = LlamaForCausalLM(HFConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
        head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rope_theta=c.rope_theta,
        rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings, attention_bias=c.attention_bias,
        attn_implementation="sdpa"))
    hf.load_state_dict(ours.state_dict(), strict=False)
    return hf.to(next(ours.parameters()).device)


def make_step(model, is_hf: bool, device: torch.device, amp: bool):
    # foundry: the loop's own optimiser; transformers: Trainer's default for torch >= 2.8, fused AdamW.
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if is_hf
           else build_optimizer(model, TrainConfig(lr=1e-4)))
    objective = NextTokenObjective()
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        if not is_hf:  # foundry: the training loop's own step (foundry.train.step.optimizer_step)
            optimizer_step(model, objective, [batch], opt, params, device, torch.bfloat16 if amp else torch.float32)
            return
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            # the library's own loss path: labels shifted inside, float32 cross-entropy
            loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, batch, n: int, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step(batch)
    sync()
    return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_config(name: str, args, device, peak: float) -> dict:
    torch.manual_seed(0)
    ours = Llama(config_from_preset(name, max_seq_len=args.block)).to(device)
    hf = hf_model_from(ours)
    amp = device.type == "cuda"
    contenders = {"foundry": make_step(ours, False, device, amp), "transformers": make_step(hf, True, device, amp)}
    if args.compile:
        torch.manual_seed(0)
        compiled = Llama(config_from_preset(name, max_seq_len=args.block)).to(device)
        contenders["foundry+compile"] = make_step(torch.compile(compiled), False, device, amp)
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(0, ours.config.vocab_size, (args.batch, args.block + 1), generator=gen)
    batch = {"input_ids": window[:, :-1].to(device), "targets": window[:, 1:].to(device)}
    for step in contenders.values():  # warm-up (allocator, kernels, compilation)
        time_steps(step, batch, args.warmup, device)
    tokens = args.batch * args.block * args.steps
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    load = [load_average()]
    for r in range(args.rounds):  # A, B, A, B: the round order alternates so neither always goes first
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for key in order:
            rates[key].append(tokens / time_steps(contenders[key], batch, args.steps, device))
        load.append(load_average())
    flops = ours.config.flops_per_token(args.block)
    params = {"foundry": ours.num_params(), "transformers": sum(p.numel() for p in hf.parameters())}
    print(f"\n{name}: foundry {params['foundry'] / 1e6:.2f}M params, transformers {params['transformers'] / 1e6:.2f}M, "
          f"batch {args.batch}x{args.block}, {args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} "
          f"threads, {device}")
    for key, r in rates.items():
        s = spread(r)
        print(f"  {key:<16} {s['median']:>10,.0f} tokens/s (min {s['min']:,.0f}, max {s['max']:,.0f})   "
              f"MFU {s['median'] * flops / peak:6.1%}")
    # The ratio per round (the two ran back to back there, under nearly the same load), then its spread.
    ratio = spread([a / b for a, b in zip(rates["foundry"], rates["transformers"])])
    print(f"  ratio foundry / transformers: {ratio['median']:.2f}x (per-round min {ratio['min']:.2f}x, "
          f"max {ratio['max']:.2f}x)")
    result = {"preset": name, "params": params, "batch": args.batch, "block": args.block, "steps_per_round": args.steps,
              "rounds": args.rounds, "tokens_per_s": {k: {"rounds": v, **spread(v)} for k, v in rates.items()},
              "mfu_median": {k: spread(v)["median"] * flops / peak for k, v in rates.items()},
              "ratio_foundry_over_transformers": ratio, "load_average_per_round": load}
    if args.compile:
        result["compile_effect"] = spread([a / b for a, b in zip(rates["foundry+compile"], rates["foundry"])])
        print(f"  torch.compile effect: {result['compile_effect']['median']:.2f}x")
    return result


def profile_config(name: str, args, device) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    ours = Llama(config_from_preset(name, max_seq_len=args.block)).to(device)
    step = make_step(ours, False, device, device.type == "cuda")
    window = torch.randint(0, ours.config.vocab_size, (args.batch, args.block + 1))
    batch = {"input_ids": window[:, :-1].to(device), "targets": window[:, 1:].to(device)}
    time_steps(step, batch, 2, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        time_steps(step, batch, args.steps, device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total" if device.type == "cpu" else "self_cuda_time_total",
                                    row_limit=25))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["4m", "14m"], help="model presets to compare")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="steps per timed run")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed runs per contender")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(foundry)")
    p.add_argument("--profile", metavar="PRESET", help="profile foundry's training step instead")
    p.add_argument("--name", default="train_throughput", help="results file: benchmarks/results/NAME.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.profile:
        profile_config(args.profile, args, device)
        return
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        peak = getattr(accelerator_named(name), "peak_bf16_flops", None) or measure_matmul_flops(
            device, dtype=torch.bfloat16)
        print(f"{name}: peak {peak / 1e12:.0f} TFLOP/s (bf16)")
    else:
        peak = measure_matmul_flops(device, n=2048, seconds=2.0)
        print(f"CPU: 2048x2048 fp32 matmul {peak / 1e9:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    results = [bench_config(name, args, device, peak) for name in args.configs]
    write_result(args.name, info, "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
                 {"device": str(device), "threads": torch.get_num_threads(), "peak_flops": peak,
                  "peak_flops_source": "table (bf16)" if device.type == "cuda" else "2048x2048 fp32 matmul, measured",
                  "configs": results})


if __name__ == "__main__":
    main()
