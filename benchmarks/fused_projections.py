"""Does fusing the decoder's projections speed up a CPU training step? (An experiment; the model stays unfused.)

    python benchmarks/fused_projections.py [--configs 4m 14m] [--batch 8] [--steps 6] [--rounds 4] [--threads 1]

Fusion here keeps the parameters (and so the state dict, the optimiser, Muon's per-matrix
orthogonalisation and the Hugging Face export) as they are and concatenates the weights inside the forward
pass: q, k and v become one matmul, gate and up another. The step is foundry's own (forward, next-token loss,
backward, AdamW), timed in alternating rounds in one process, so a shared machine's load hits every
variant alike. Printed and written to `benchmarks/results/NAME.json`: the median tokens/s per variant and
each variant's per-round ratio against the unfused model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from foundry.config import TrainConfig
from foundry.model import llama
from foundry.model.rope import apply_rotary
from foundry.train.step import optimizer_step
from foundry.train.objectives import NextTokenObjective
from foundry.train.optim import build_optimizer
from record import load_average, machine, write_result


def attention_fused_qkv(self, x, cos, sin, mask, kv_cache):
    """`llama.Attention.forward` with q, k and v from one matmul over the concatenated weights."""
    B, T, _ = x.shape
    weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
    n_q, n_kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
    q, k, v = F.linear(x, weight).split([n_q, n_kv, n_kv], dim=-1)
    q, k = q.view(B, T, self.n_head, self.head_dim), k.view(B, T, self.n_kv_head, self.head_dim)
    if hasattr(self, "q_norm"):
        q, k = self.q_norm(q), self.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = v.reshape(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                       enable_gqa=self.n_kv_head != self.n_head)
    return self.o_proj(y.transpose(1, 2).reshape(B, T, n_q))


def mlp_fused_gate_up(self, x):
    """`llama.MLP.forward` with gate and up from one matmul over the concatenated weights."""
    gate, up = F.linear(x, torch.cat([self.gate_proj.weight, self.up_proj.weight])).chunk(2, dim=-1)
    return self.down_proj(self.act(gate) * up)


UNFUSED = (llama.Attention.forward, llama.MLP.forward)
VARIANTS = {"unfused": UNFUSED, "fused qkv + gate/up": (attention_fused_qkv, mlp_fused_gate_up),
            "fused qkv": (attention_fused_qkv, UNFUSED[1]), "fused gate/up": (UNFUSED[0], mlp_fused_gate_up)}


def bench(preset: str, args) -> dict:
    torch.manual_seed(0)
    model = llama.Llama(llama.config_from_preset(preset, max_seq_len=args.block))
    optimizer, objective = build_optimizer(model, TrainConfig(lr=1e-4)), NextTokenObjective()
    window = torch.randint(0, model.config.vocab_size, (args.batch, args.block + 1))
    batch = {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    params, cpu = [p for p in model.parameters() if p.requires_grad], torch.device("cpu")

    def steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):  # the training loop's own step
            optimizer_step(model, objective, [batch], optimizer, params, cpu)
        return time.perf_counter() - start

    with torch.no_grad():
        unfused = model(batch["input_ids"])
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name, (attention, mlp) in VARIANTS.items():  # the same function (before any step changes the weights)
        llama.Attention.forward, llama.MLP.forward = attention, mlp
        with torch.no_grad():
            torch.testing.assert_close(model(batch["input_ids"]), unfused, atol=1e-4, rtol=0)
    for name, (attention, mlp) in VARIANTS.items():  # warm-up
        llama.Attention.forward, llama.MLP.forward = attention, mlp
        steps(2)
    for r in range(args.rounds):  # the order alternates so no variant always runs first
        for name in (list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))):
            llama.Attention.forward, llama.MLP.forward = VARIANTS[name]
            rates[name].append(args.batch * args.block * args.steps / steps(args.steps))
    llama.Attention.forward, llama.MLP.forward = UNFUSED
    print(f"\n{preset}: batch {args.batch}x{args.block}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    result = {"preset": preset, "tokens_per_s": {}, "ratio_vs_unfused": {}}
    for name, values in rates.items():
        ratios = [a / b for a, b in zip(values, rates["unfused"])]
        result["tokens_per_s"][name] = {"rounds": values, "median": statistics.median(values)}
        result["ratio_vs_unfused"][name] = {"rounds": ratios, "median": statistics.median(ratios),
                                            "min": min(ratios), "max": max(ratios)}
        print(f"  {name:<20} {statistics.median(values):>8,.0f} tokens/s   {statistics.median(ratios):.3f}x "
              f"(per-round {min(ratios):.3f}x to {max(ratios):.3f}x)")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["4m", "14m"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="fused_projections")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info, load = machine(), load_average()
    configs = [bench(preset, args) for preset in args.configs]
    write_result(args.name, info, "python benchmarks/fused_projections.py " + " ".join(sys.argv[1:]),
                 {"configs": configs, "load_average_start": load, "load_average_end": load_average()})


if __name__ == "__main__":
    main()
