"""Our DPO step against TRL's `DPOTrainer`: same model weights, same pairs, same batch, one run.

    python benchmarks/dpo_throughput.py [--preset 1m] [--steps 20] [--batch 8] [--block 128] [--together]

Each side runs in its own subprocess (so peak memory is measured cleanly) on the bundled preference
set (data/post/preferences.jsonl) with a tokenizer trained on it and a model initialised from one seed:
- foundry: `foundry.train.dpo.run_dpo` (reference log-probs computed once up front, then the one
  training loop; the reference pass is included in the timing);
- TRL, twice: `trl.DPOTrainer` with `precompute_ref_log_probs=True` (reference log-probs computed once up
  front, as ours: the like-for-like comparison), and with its default (a reference model,
  `copy.deepcopy(model).eval()`, run forward every step); both on the same weights loaded through
  `transformers.LlamaForCausalLM` from a foundry export.
Both: sigmoid loss, beta 0.1, constant lr, fp32 on CPU / bf16 autocast on CUDA, no checkpoints mid-run.

Printed: pairs/s over the timed steps (after `--warmup` steps) and for the whole run (model loading,
tokenisation, reference model or pass, training and, for foundry, its final checkpoint), peak memory (CUDA: max allocated during training; CPU: growth of the process's peak RSS from after
the imports to the end, so data preparation and the reference model or pass are counted on both sides;
at tiny model sizes it is dominated by library buffers, not model state), and the ratios.
Needs the `bench` extra (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from record import load_average, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "post" / "preferences.jsonl"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(work: Path, args) -> None:
    """Tokenizer, model (foundry checkpoint + HF export of the same weights)."""
    from foundry.data.prefs import read_preferences
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.hf import export_hf
    from foundry.model.llama import Llama, config_from_preset
    from foundry.checkpoints import save_checkpoint

    pairs = read_preferences(DATA)
    texts = [m["content"] for p in pairs for m in p.messages] + [t for p in pairs for t in (p.chosen, p.rejected)]
    tok = Tokenizer.train(texts * 4, vocab_size=args.vocab, min_frequency=2)
    torch.manual_seed(0)
    model = Llama(config_from_preset(args.preset, vocab_size=tok.vocab_size, max_seq_len=args.block))
    save_checkpoint(work / "ckpt", model, tok, None, {"step": 0, "stage": "bench"})
    export_hf(model, tok, work / "hf")


def run_ours(work: Path, args) -> dict:
    # Libraries the run imports lazily are imported before the baseline, as TRL's are on its side.
    import torch.distributed.fsdp  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    from foundry.train.dpo import DPOConfig, run_dpo
    from foundry.utils.io import read_metrics

    cfg = DPOConfig(init=str(work / "ckpt"), data=str(DATA), out_dir=str(work / "ours"), loss="dpo", beta=0.1,
                    train=dict(max_steps=args.steps, micro_batch_size=args.batch, block_size=args.block, lr=1e-5,
                               warmup_steps=0, schedule="constant", log_every=1, threads=args.threads,
                               eval_every=10**6, checkpoint_every=10**6, progress=False, weight_decay=0.0,
                               grad_clip=1.0))
    if device() == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_rss = rss_mb()
    start = time.perf_counter()
    run_dpo(cfg)
    total = time.perf_counter() - start
    steps = [m for m in read_metrics(work / "ours") if "elapsed_s" in m]
    t0 = next(m["elapsed_s"] for m in steps if m["step"] == args.warmup)
    t1 = steps[-1]["elapsed_s"]
    return {"timed_s": t1 - t0, "total_s": total, "timed_pairs": (args.steps - args.warmup) * args.batch,
            "total_pairs": args.steps * args.batch, **memory(base_rss)}


def run_trl(work: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from foundry.data.prefs import read_preferences

    base_rss = rss_mb()  # after imports: both sides count data preparation, reference and training
    start = time.perf_counter()  # and both time loading, tokenisation, the reference and training
    rows = [{"prompt": p.messages, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in read_preferences(DATA)]
    tok = AutoTokenizer.from_pretrained(work / "hf")
    model = LlamaForCausalLM.from_pretrained(work / "hf", torch_dtype=torch.float32)
    on_cuda = device() == "cuda"
    cfg = DPOConfig(output_dir=str(work / ("trl-precompute" if args.trl_precompute else "trl")), per_device_train_batch_size=args.batch, max_steps=args.steps,
                    learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                    max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], max_length=args.block, logging_steps=1,
                    save_strategy="no", report_to=[], bf16=on_cuda, use_cpu=not on_cuda, seed=0,
                    dataloader_num_workers=0, precompute_ref_log_probs=args.trl_precompute,
                    disable_tqdm=True)

    times: dict[int, float] = {}

    class StepTimer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if on_cuda:
                torch.cuda.synchronize()
            times[state.global_step] = time.perf_counter()

    # Precompute: no reference model kept (TRL runs the policy's initial weights once); default: a frozen copy.
    ref_model = None if args.trl_precompute else copy.deepcopy(model).eval()
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=cfg,
                         train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[StepTimer()])
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    total = time.perf_counter() - start
    return {"timed_s": times[args.steps] - times[args.warmup], "total_s": total,
            "timed_pairs": (args.steps - args.warmup) * args.batch, "total_pairs": args.steps * args.batch,
            **memory(base_rss)}


def memory(base_rss: float) -> dict:
    if device() == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20, "memory": "cuda max allocated"}
    return {"peak_mem_mb": max(peak_rss_mb() - base_rss, 0.0), "memory": "cpu peak RSS growth"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="1m")
    p.add_argument("--steps", type=int, default=None, help="default: one epoch of the preference set")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timed window")
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on both sides")
    p.add_argument("--trl-precompute", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--together", action="store_true", help="run the three sides at the same time (shared machine)")
    p.add_argument("--name", default="dpo_throughput", help="results file: benchmarks/results/NAME.json")
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps is None:
        from foundry.data.prefs import read_preferences

        args.steps = -(-len(read_preferences(DATA)) // args.batch)

    if args.side:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result = (run_ours if args.side == "ours" else run_trl)(args.work, args)
        print("RESULT " + json.dumps(result))
        return

    info = machine()
    sides = {"foundry": ["--side", "ours"], "trl-precompute": ["--side", "trl", "--trl-precompute"],
             "trl-default": ["--side", "trl"]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup(work, args)
        common = ["--work", str(work), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
                  str(args.batch), "--block", str(args.block), "--preset", args.preset, "--vocab", str(args.vocab),
                  "--threads", str(args.threads)]
        results, load = {}, {"start": load_average()}
        rounds = [list(sides)] if args.together else [[side] for side in sides]
        for group in rounds:  # --together: all sides at once, so a shared machine's load is the same for all
            procs = {side: subprocess.Popen([sys.executable, __file__, *sides[side], *common], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True) for side in group}
            for side, proc in procs.items():
                out, err = proc.communicate()
                line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{side} failed:\n{err[-3000:]}")
                results[side] = json.loads(line[7:])
            load[group[-1]] = load_average()
    dev = torch.cuda.get_device_name() if device() == "cuda" else f"cpu ({args.threads} threads)"
    print(f"DPO throughput, preset {args.preset}, {args.batch} pairs/step, block {args.block}, "
          f"{args.steps} steps ({args.warmup} warm-up), {dev}{', run together' if args.together else ''}")
    print(f"{'':16}{'pairs/s (timed)':>18}{'pairs/s (whole run)':>22}{'peak memory MB':>17}")
    for side, r in results.items():
        r["pairs_per_s_timed"] = r["timed_pairs"] / r["timed_s"]
        r["pairs_per_s_whole_run"] = r["total_pairs"] / r["total_s"]
        print(f"{side:16}{r['pairs_per_s_timed']:>18.1f}{r['pairs_per_s_whole_run']:>22.1f}{r['peak_mem_mb']:>17.1f}")
    o, ratios = results["foundry"], {}
    for trl in ("trl-precompute", "trl-default"):
        t = results[trl]
        ratios[trl] = {"pairs_per_s_timed": o["pairs_per_s_timed"] / t["pairs_per_s_timed"],
                       "pairs_per_s_whole_run": o["pairs_per_s_whole_run"] / t["pairs_per_s_whole_run"],
                       "peak_memory": o["peak_mem_mb"] / t["peak_mem_mb"] if t["peak_mem_mb"] > 0 else None}
        r = ratios[trl]
        print(f"ratio foundry / {trl}: {r['pairs_per_s_timed']:.2f}x pairs/s (timed steps), "
              f"{r['pairs_per_s_whole_run']:.2f}x (whole run incl. reference pass), "
              + (f"{r['peak_memory']:.2f}x peak memory ({o['memory']})" if r["peak_memory"] else ""))
    import trl as trl_module

    write_result(args.name, {**info, "trl": trl_module.__version__},
                 "python benchmarks/dpo_throughput.py " + " ".join(sys.argv[1:]),
                 {"preset": args.preset, "batch": args.batch, "block": args.block, "steps": args.steps,
                  "warmup": args.warmup, "threads": args.threads, "together": args.together, "device": dev,
                  "load_average": load, "results": results, "ratios_foundry_over": ratios})


if __name__ == "__main__":
    main()
