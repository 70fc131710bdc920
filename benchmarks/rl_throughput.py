"""Our GRPO step (`foundry rl`) against TRL's `GRPOTrainer`: same model weights, prompts, G, lengths, one run.

    python benchmarks/rl_throughput.py [--preset 1m] [--steps 8] [--prompts 4] [--group 8] [--max-new 16]

Each side runs in its own subprocess on the bundled arithmetic prompts (data/rl/arithmetic/prompts.jsonl),
rendered as one user turn by the same chat template (ours natively; TRL through the exported
tokenizer_config.json's template), with a tokenizer trained on them and a model initialised from one seed:
- foundry: `foundry.train.grpo.run_grpo` (batched KV-cached sampling: each prompt prefilled once, its G
  rows decoded together), reference log-probs once per batch, the one training loop;
- TRL: `trl.GRPOTrainer` (its own generation through `transformers.generate`), on the same weights loaded
  through `transformers.LlamaForCausalLM` from a foundry export.
Both: Dr. GRPO (`loss_type=dr_grpo`, `scale_rewards=none`), beta 0.04, one update per batch, temperature
1.0, no top-k / top-p, constant lr, fp32, the same numeric reward function, no checkpoints mid-run. The
untrained model rarely emits its stop token, so on both sides nearly every completion runs to the length
cap: the same amount of generation.

Printed: completions/s over the timed steps (after `--warmup` steps), and the ratio. Raw figures go to
benchmarks/results/NAME.json. Needs the `bench` extra (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from record import load_average, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "rl" / "arithmetic" / "prompts.jsonl"


def prompts() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def setup(work: Path, args) -> None:
    from foundry.checkpoints import save_checkpoint
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.hf import export_hf
    from foundry.model.llama import Llama, config_from_preset

    texts = [f"{p['prompt']} {p['answer']}" for p in prompts()]
    tok = Tokenizer.train(texts * 4, vocab_size=512, min_frequency=2)
    torch.manual_seed(0)
    model = Llama(config_from_preset(args.preset, vocab_size=tok.vocab_size, max_seq_len=128))
    save_checkpoint(work / "ckpt", model, tok, None, {"step": 0, "stage": "bench"})
    export_hf(model, tok, work / "hf")


def run_ours(work: Path, args) -> dict:
    import torch.distributed.fsdp  # noqa: F401  (imported lazily by the optimiser: not part of the timing)

    from foundry.train.grpo import GRPOConfig, run_grpo
    from foundry.utils.io import read_metrics

    cfg = GRPOConfig(init=str(work / "ckpt"), prompts=str(DATA), out_dir=str(work / "ours"),
                     verifiers=[{"type": "numeric"}], group_size=args.group, max_new_tokens=args.max_new,
                     temperature=1.0, kl_beta=0.04, advantage="mean", loss_norm="constant",
                     train=dict(max_steps=args.steps, micro_batch_size=args.prompts, block_size=128, lr=1e-5,
                                log_every=1, threads=args.threads, eval_every=10**6, checkpoint_every=10**6,
                                progress=False, seed=0))
    start = time.perf_counter()
    run_grpo(cfg)
    total = time.perf_counter() - start
    steps = [m for m in read_metrics(work / "ours") if "elapsed_s" in m]
    t0 = next(m["elapsed_s"] for m in steps if m["step"] == args.warmup)
    split = {k: sum(m[k] for m in steps[args.warmup:]) / len(steps[args.warmup:])
             for k in ("time/generation_s", "time/scoring_s", "time/reference_s", "time/optimise_s")}
    return {"timed_s": steps[-1]["elapsed_s"] - t0, "total_s": total,
            "mean_completion_len": sum(m["completion_len"] for m in steps) / len(steps), "split_per_step": split}


def run_trl(work: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    number = re.compile(r"[-+]?\d+")

    def numeric(completions, answer, **kw):
        out = []
        for c, a in zip(completions, answer):
            text = c[0]["content"] if isinstance(c, list) else c
            found = number.findall(text)
            out.append(float(bool(found) and int(found[-1]) == int(a)))
        return out

    start = time.perf_counter()
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}], "answer": p["answer"]} for p in prompts()]
    tok = AutoTokenizer.from_pretrained(work / "hf")
    model = LlamaForCausalLM.from_pretrained(work / "hf", torch_dtype=torch.float32)
    cfg = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.group,
                     num_generations=args.group, max_completion_length=args.max_new, temperature=1.0, top_p=1.0,
                     top_k=0, beta=0.04, loss_type="dr_grpo", scale_rewards="none", learning_rate=1e-5,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                     max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                     dataloader_num_workers=0, disable_tqdm=True)
    times: dict[int, float] = {}
    lengths: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times[state.global_step] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer = GRPOTrainer(model=model, reward_funcs=numeric, args=cfg, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[StepTimer()])
    trainer.train()
    total = time.perf_counter() - start
    return {"timed_s": times[args.steps] - times[args.warmup], "total_s": total,
            "mean_completion_len": sum(lengths) / len(lengths) if lengths else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="1m")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timed window")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-new", type=int, default=16, help="completion length cap")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on both sides")
    p.add_argument("--name", default="rl_throughput", help="results file: benchmarks/results/NAME.json")
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result = (run_ours if args.side == "ours" else run_trl)(args.work, args)
        print("RESULT " + json.dumps(result))
        return

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup(work, args)
        common = ["--work", str(work), "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts",
                  str(args.prompts), "--group", str(args.group), "--max-new", str(args.max_new), "--preset",
                  args.preset, "--threads", str(args.threads)]
        results, load = {}, {"start": load_average()}
        for side in ("foundry", "trl"):  # one after the other, each in its own process
            proc = subprocess.run([sys.executable, __file__, "--side", "ours" if side == "foundry" else "trl", *common],
                                  capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
            results[side] = json.loads(line[7:])
            load[side] = load_average()
    n = (args.steps - args.warmup) * args.prompts * args.group
    print(f"GRPO throughput, preset {args.preset}, {args.prompts} prompts x G={args.group}, <= {args.max_new} new "
          f"tokens, {args.steps} steps ({args.warmup} warm-up), cpu ({args.threads} threads)")
    for side, r in results.items():
        r["completions_per_s_timed"] = n / r["timed_s"]
        print(f"{side:10} {r['completions_per_s_timed']:8.1f} completions/s (timed steps), whole run "
              f"{r['total_s']:.1f} s, mean completion length {r['mean_completion_len']}")
    ratio = results["foundry"]["completions_per_s_timed"] / results["trl"]["completions_per_s_timed"]
    split = results["foundry"]["split_per_step"]
    print("foundry time per step: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in split.items()))
    print(f"ratio foundry / trl: {ratio:.2f}x completions/s (timed steps)")
    import trl as trl_module

    write_result(args.name, {**info, "trl": trl_module.__version__},
                 "python benchmarks/rl_throughput.py " + " ".join(sys.argv[1:]),
                 {"preset": args.preset, "prompts": args.prompts, "group": args.group, "max_new": args.max_new,
                  "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "load_average": load,
                  "results": results, "ratio_foundry_over_trl": ratio})


if __name__ == "__main__":
    main()
