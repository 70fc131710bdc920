"""Post-training a real model's architecture: foundry against TRL, in speed and in memory, on the same model.

    python benchmarks/real_model_posttrain.py [--models smollm2-135m,llama3.2-1b] [--layers 135m=30,1b=16]
        [--rounds 3] [--steps-per-round 1] [--combos sft-full,sft-lora,dpo-full,dpo-lora] [--name NAME]

What is compared, and how (each side in its own subprocess, so its peak RSS is its own):
- the model: a Hugging Face `LlamaForCausalLM` built from a config with random weights (seed 0; nothing is
  downloaded), saved once; foundry imports that directory (`foundry.checkpoints.load_start`), TRL loads it with
  `from_pretrained`, so both start from the same weights. Shapes: SmolLM2-135M (hidden 576, 30 layers, 9 heads,
  3 kv heads, intermediate 1536, vocabulary 49,152, tied) and Llama-3.2-1B (2048, 16 layers, 32 / 8 heads,
  8192, vocabulary 128,256, tied; rope_theta 500,000 with Llama 3's rope scaling, factor 32); `--layers`
  reduces the depth on a CPU, and the results say by how much;
- the data: chats of ~700 tokens (a system prompt and two exchanges; the assistant continues a passage)
  and preference pairs (prompt ~300 tokens, the true continuation chosen, another passage rejected) cut from
  the bundled corpora (data/general, data/domain), tokenised ONCE by foundry (its chat template and
  assistant mask) with a tokenizer trained on them; TRL gets the same token ids and masks (SFT: `input_ids`
  + `assistant_masks`; DPO: `prompt_ids` / `chosen_ids` / `rejected_ids`) in foundry's epoch order, read
  sequentially, so every step of both sides sees the same rows;
- the math: SFT loss on assistant tokens (each turn's `<|end|>` included) normalised by their count; DPO
  sigmoid loss, beta 0.1, summed completion log-probs, reference log-probs computed once before training
  (foundry always; TRL `precompute_ref_log_probs=True`); AdamW (0.9, 0.999, eps 1e-8), no weight decay,
  constant lr, clip 1.0; two sequences (SFT) or two pairs (DPO) per step, rows right-padded to the batch's
  longest on both sides (no packing: TRL cannot pack correctly without flash-attention); fp32 on CPU; LoRA
  rank 8, alpha 16, on q_proj and v_proj, no dropout (TRL through peft), both sides' A matrices drawn from
  the same seeded generator (`seeded_lora_a`), B zero; gradient checkpointing on both
  (TRL's default, foundry's `train.activation_checkpointing`);
- the timing: after one warm-up step, `--rounds` rounds of `--steps-per-round` steps, the two sides in
  alternating order (A B, B A, ...) while both processes stay alive, so load from other users of a shared
  machine falls on both alike; a round runs from the moment it is released to the end of its last optimiser
  step (a post-step hook of torch's optimiser, the same on both sides). Real tokens/s counts non-padding
  tokens of the rows trained on (the same rows on both sides); median and spread over rounds, and the ratio per
  round; load average before and after every round;
- memory: each process's peak resident set (`ru_maxrss`) at the end of its last round, whole process
  (libraries included, as a user sees it) and its growth above the process after imports;
- agreement: the loss of every step on both sides (same weights, same rows, same optimiser: equal up to
  floating-point differences of the two implementations).
Needs the `bench` extra (`pip install -e .[bench]`, which brings peft for TRL's LoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import load_average, machine, write_result  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         rms_norm_eps=1e-5, head_dim=64),
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                        rms_norm_eps=1e-5, head_dim=64, max_position_embeddings=131072,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
BLOCK = 1024
BATCH = 2  # sequences (SFT) or pairs (DPO) per step
LORA = dict(rank=8, alpha=16.0, targets=["q_proj", "v_proj"])
LR = {"full": 5e-5, "lora": 5e-4}
SYSTEM = "You are a careful literary assistant. You continue passages in the voice of their author."
SOURCES = [ROOT / "data" / "general" / "kjv", ROOT / "data" / "general" / "shakespeare", ROOT / "data" / "domain" / "pydocs"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- data and model (parent) ----------------------------------------------------------------------------

def corpus_words() -> list[list[str]]:
    texts = []
    for folder in SOURCES:
        for f in sorted(folder.glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace").split())
    return [t for t in texts if len(t) > 2000]


def passage(rng: random.Random, texts, words: int) -> tuple[str, str, list[str]]:
    t = rng.choice(texts)
    start = rng.randrange(0, len(t) - 3 * words)
    return " ".join(t[start:start + words]), " ".join(t[start + words:start + 2 * words]), t


def make_data(work: Path, n_chats: int, n_pairs: int, seed: int = 0) -> dict:
    """Tokenizer, chat JSONL and preference JSONL of realistic length; returns their paths and token stats."""
    from foundry.data.tokenizer import Tokenizer

    texts = corpus_words()
    rng = random.Random(seed)
    sample = [" ".join(t[i:i + 400]) for t in texts for i in range(0, min(len(t), 40000), 400)]
    tok = Tokenizer.train(sample, vocab_size=16384, min_frequency=2)
    tok.save(work / "tok")
    chats, pairs = [], []
    for _ in range(n_chats):
        a, b, _ = passage(rng, texts, 130)
        c, d, _ = passage(rng, texts, 110)
        chats.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Continue this passage:\n\n{a}"},
            {"role": "assistant", "content": b},
            {"role": "user", "content": f"Good. Now another one, in the same manner:\n\n{c}"},
            {"role": "assistant", "content": d}]})
    for _ in range(n_pairs):
        a, b, _ = passage(rng, texts, 190)
        _, other, _ = passage(rng, texts, 190)
        pairs.append({"messages": [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": f"Continue this passage:\n\n{a}"}],
                      "chosen": b, "rejected": other})
    (work / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return {"tokenizer": str(work / "tok"), "chats": str(work / "chats.jsonl"), "pairs": str(work / "pairs.jsonl")}


def make_model(work: Path, shape: str, layers: int, tok_dir: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # a shape's own context (Llama 3.2's 131,072 with its rope scaling) wins over the 2,048 default
    cfg = LlamaConfig(**{"max_position_embeddings": 2048, **SHAPES[shape], "num_hidden_layers": layers},
                      hidden_act="silu", attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=0,
                      pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)  # random init, transformers' own (std 0.02)
    out = work / f"hf-{shape}-{layers}"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    del model
    return out


def encoded_rows(data: dict, stage: str, seed: int = 0):
    """foundry's own encoding of the data and the order its batch source visits it in (epoch 0)."""
    from foundry.data.tokenizer import Tokenizer

    tok = Tokenizer.load(data["tokenizer"])
    if stage == "sft":
        from foundry.data.chat import TruncationStats, fit_conversation, read_chat_jsonl
        from foundry.train.sft import ChatBatches

        stats, rows = TruncationStats(), []
        for messages in read_chat_jsonl(data["chats"]):
            fitted = fit_conversation(tok, messages, BLOCK, stats)
            rows.append({"input_ids": fitted.ids, "assistant_masks": [int(m) for m in fitted.mask]})
        order = ChatBatches([(r["input_ids"], r["input_ids"]) for r in rows], BLOCK, seed, tok.pad_id,
                            pack=False).epoch_order(0)
        return [rows[i] for i in order], tok
    from foundry.data.prefs import read_preferences
    from foundry.train.dpo import PairBatches, encode_pairs

    encoded, _ = encode_pairs(tok, read_preferences(data["pairs"]), BLOCK)
    order = PairBatches(encoded, seed, tok.pad_id).epoch_order(0)
    return [{"prompt_ids": encoded[i][0], "chosen_ids": encoded[i][1], "rejected_ids": encoded[i][2]}
            for i in order], tok


def step_tokens(rows, stage: str, steps: int) -> list[dict]:
    """Real (non-pad) and supervised tokens of each step's rows, the same for both sides."""
    out = []
    for s in range(steps):
        batch = rows[s * BATCH:(s + 1) * BATCH]
        if stage == "sft":
            real = sum(len(r["input_ids"]) for r in batch)
            sup = sum(sum(r["assistant_masks"]) for r in batch)
            padded = BATCH * max(len(r["input_ids"]) for r in batch)
        else:
            seqs = [len(r["prompt_ids"]) + len(r[k]) for r in batch for k in ("chosen_ids", "rejected_ids")]
            real, padded = sum(seqs), len(seqs) * max(seqs)
            sup = sum(len(r[k]) for r in batch for k in ("chosen_ids", "rejected_ids"))
        out.append({"real": real, "supervised": sup, "padded": padded})
    return out


# ---- the same adapters on both sides ---------------------------------------------------------------------

def seeded_lora_a(layer: int, target: str, rank: int, fan_in: int):
    """LoRA's A for one Linear, as both libraries initialise it (kaiming-uniform, a = sqrt(5): bound
    1/sqrt(fan_in)), drawn from a generator seeded by its place, so foundry and peft start from the same
    adapters (B is zero on both) and their losses can be compared step by step."""
    import torch

    g = torch.Generator().manual_seed(1000 + 10 * layer + LORA["targets"].index(target))
    bound = 1 / fan_in ** 0.5
    return torch.empty(rank, fan_in).uniform_(-bound, bound, generator=g)


def set_lora_a(named_a) -> int:
    """Overwrite every (layer, target, A parameter) with `seeded_lora_a`; returns how many."""
    import torch

    n = 0
    with torch.no_grad():
        for layer, target, a in named_a:
            a.copy_(seeded_lora_a(layer, target, a.shape[0], a.shape[1]))
            n += 1
    return n


def _place(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if "layers" not in parts:
        return None
    layer = int(parts[parts.index("layers") + 1])
    target = next((t for t in LORA["targets"] if t in parts), None)
    return (layer, target) if target else None


# ---- the round gate (children) ---------------------------------------------------------------------------

class RoundGate:
    """Holds a contender after its warm-up and after every round until the parent releases the next one.

    Driven by torch's optimiser post-step hook, so both sides are cut at the same point of a step."""

    def __init__(self, warmup: int, rounds: int, per_round: int):
        self.warmup, self.rounds, self.per_round = warmup, rounds, per_round
        self.steps, self.round, self.started = 0, 0, None
        self.base_rss = rss_mb()

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda opt, args, kwargs: self.after_step())

    def _wait(self) -> None:
        print("WAITING", flush=True)
        line = sys.stdin.readline()
        if line.strip() != "GO":
            sys.exit(f"gate: expected GO, got {line!r}")
        self.started = time.perf_counter()

    def after_step(self) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self._wait()
        elif self.steps > self.warmup and (self.steps - self.warmup) % self.per_round == 0:
            seconds = time.perf_counter() - self.started
            self.round += 1
            last = self.round == self.rounds
            print("ROUND " + json.dumps({"round": self.round, "seconds": seconds,
                                         **({"peak_rss_mb": peak_rss_mb(), "base_rss_mb": self.base_rss}
                                            if last else {})}), flush=True)
            if not last:
                self._wait()


def child_foundry(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import torch.distributed.fsdp  # noqa: F401  (imported lazily by the optimiser: before the baseline RSS)

    from foundry.utils.io import read_metrics

    gate = RoundGate(1, args.rounds, args.steps_per_round)
    gate.install()
    steps = 1 + args.rounds * args.steps_per_round
    train = dict(max_steps=steps, micro_batch_size=BATCH, block_size=BLOCK, lr=LR[args.method], warmup_steps=0,
                 schedule="constant", weight_decay=0.0, grad_clip=1.0, beta1=0.9, beta2=0.999, log_every=1,
                 eval_every=10**6, checkpoint_every=10**6, threads=args.threads, progress=False,
                 activation_checkpointing=not args.no_checkpointing, seed=0)
    lora = LORA if args.method == "lora" else None
    if lora is not None:
        from foundry.train.stage import StageRunner

        apply = StageRunner.apply_lora

        def apply_then_seed(self, model, spec):
            apply(self, model, spec)
            names = [(*_place(n), p) for n, p in model.named_parameters() if n.endswith("lora_A") and _place(n)]
            assert set_lora_a(names) == len(LORA["targets"]) * model.config.n_layer
            return model

        StageRunner.apply_lora = apply_then_seed
    out = Path(args.work) / f"foundry-{args.stage}-{args.method}"
    if args.stage == "sft":
        from foundry.train.sft import SFTConfig, run_sft

        run_sft(SFTConfig(init=args.model, data=args.data["chats"], out_dir=str(out), overwrite=True, pack=False,
                          lora=lora, train=train))
    else:
        from foundry.train.dpo import DPOConfig, run_dpo

        run_dpo(DPOConfig(init=args.model, data=args.data["pairs"], out_dir=str(out), overwrite=True, loss="dpo",
                          beta=0.1, lora=lora, train=train))
    return {"losses": [m["loss"] for m in read_metrics(out) if "loss" in m]}


def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, LlamaForCausalLM

    gate = RoundGate(1, args.rounds, args.steps_per_round)
    rows, _ = encoded_rows(args.data, args.stage)
    steps = 1 + args.rounds * args.steps_per_round
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    common = dict(output_dir=str(Path(args.work) / f"trl-{args.stage}-{args.method}"), per_device_train_batch_size=BATCH,
                  max_steps=steps, learning_rate=LR[args.method], lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                  logging_steps=1, save_strategy="no", report_to=[], bf16=False, use_cpu=True, seed=0,
                  dataloader_num_workers=0, disable_tqdm=True, max_length=BLOCK,
                  gradient_checkpointing=not args.no_checkpointing)
    peft_config = None
    if args.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], target_modules=LORA["targets"],
                                 lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    if args.stage == "sft":
        from trl import SFTConfig, SFTTrainer

        class Trainer(SFTTrainer):  # foundry's order, read in sequence: the same rows per step as foundry
            def _get_train_sampler(self, *a, **kw):
                return SequentialSampler(self.train_dataset)

        trainer = Trainer(model=model, args=SFTConfig(**common), train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=peft_config)
    else:
        from trl import DPOConfig, DPOTrainer

        class Trainer(DPOTrainer):
            def _get_train_sampler(self, *a, **kw):
                return SequentialSampler(self.train_dataset)

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # already foundry's token ids (prompt_ids, chosen_ids, rejected_ids)

        trainer = Trainer(model=model, ref_model=None, args=DPOConfig(**common, beta=0.1, loss_type=["sigmoid"],
                                                                      precompute_ref_log_probs=True),
                          train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_config)
    if peft_config is not None:
        names = [(*_place(n), p) for n, p in trainer.model.named_parameters() if ".lora_A." in n and _place(n)]
        assert set_lora_a(names) == len(LORA["targets"]) * model.config.num_hidden_layers
    gate.install()
    trainer.train()
    return {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


# ---- the parent ----------------------------------------------------------------------------------------

def start(side: str, common: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--side", side, *common], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def expect(proc: subprocess.Popen, side: str, word: str) -> str:
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read()
            sys.exit(f"{side} ended before {word}:\n{err[-4000:]}")
        if line.startswith(word):
            return line[len(word):].strip()


def spread(values: list[float]) -> dict:
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "values": values}


def run_combo(model_dir: Path, work: Path, data: dict, stage: str, method: str, args) -> dict:
    rows, _ = encoded_rows(data, stage)
    steps = 1 + args.rounds * args.steps_per_round
    if len(rows) < steps * BATCH:
        sys.exit(f"{stage}: {len(rows)} rows for {steps} steps of {BATCH}")
    tokens = step_tokens(rows, stage, steps)
    common = ["--work", str(work), "--model", str(model_dir), "--data", json.dumps(data), "--stage", stage,
              "--method", method, "--rounds", str(args.rounds), "--steps-per-round", str(args.steps_per_round),
              "--threads", str(args.threads)] + (["--no-checkpointing"] if args.no_checkpointing else [])
    sides = ["foundry", "trl"]
    procs = {s: start(s, common) for s in sides}
    for s in sides:  # set-up (model, data, reference pass) and the warm-up step, untimed
        expect(procs[s], s, "WAITING")
    rounds = {s: [] for s in sides}
    loads = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            before = load_average()
            procs[s].stdin.write("GO\n")
            procs[s].stdin.flush()
            rec = json.loads(expect(procs[s], s, "ROUND"))
            if r < args.rounds - 1:
                expect(procs[s], s, "WAITING")
            rec["load_before"], rec["load_after"] = before, load_average()
            first = 1 + r * args.steps_per_round
            window = tokens[first:first + args.steps_per_round]
            rec["real_tokens"] = sum(t["real"] for t in window)
            rec["supervised_tokens"] = sum(t["supervised"] for t in window)
            rec["real_tokens_per_s"] = rec["real_tokens"] / rec["seconds"]
            rounds[s].append(rec)
            loads.append(rec["load_before"])
    results = {}
    for s in sides:
        out, err = procs[s].communicate()
        line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
        if procs[s].returncode != 0 or line is None:
            sys.exit(f"{s} failed:\n{err[-4000:]}")
        last = rounds[s][-1]
        results[s] = {**json.loads(line[7:]), "rounds": rounds[s], "peak_rss_mb": last["peak_rss_mb"],
                      "peak_rss_growth_mb": last["peak_rss_mb"] - last["base_rss_mb"],
                      "real_tokens_per_s": spread([x["real_tokens_per_s"] for x in rounds[s]]),
                      "seconds_per_step": spread([x["seconds"] / args.steps_per_round for x in rounds[s]])}
    per_round = [a["real_tokens_per_s"] / b["real_tokens_per_s"] for a, b in zip(rounds["foundry"], rounds["trl"])]
    f, t = results["foundry"], results["trl"]
    n = min(len(f["losses"]), len(t["losses"]))
    return {"stage": stage, "method": method, "steps": steps, "step_tokens": tokens, "results": results,
            "ratio_tokens_per_s": spread(per_round),
            "ratio_peak_rss": f["peak_rss_mb"] / t["peak_rss_mb"],
            "ratio_peak_rss_growth": f["peak_rss_growth_mb"] / t["peak_rss_growth_mb"],
            "loss_max_abs_diff": max(abs(a - b) for a, b in zip(f["losses"][:n], t["losses"][:n])) if n else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,llama3.2-1b")
    p.add_argument("--layers", default="", help="depth per model, e.g. smollm2-135m=4,llama3.2-1b=1 (default: full)")
    p.add_argument("--combos", default="sft-full,sft-lora,dpo-full,dpo-lora",
                   help="per model; MODEL:COMBO restricts one, e.g. llama3.2-1b:sft-lora")
    p.add_argument("--rounds", default="3", help="timed rounds: N, or N,MODEL=M,... per model")
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-checkpointing", action="store_true", help="both sides without activation checkpointing")
    p.add_argument("--name", default="real_model_posttrain")
    p.add_argument("--side", choices=["foundry", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", type=json.loads, help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.side:
        args.rounds = int(args.rounds)
        result = (child_foundry if args.side == "foundry" else child_trl)(args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    info = machine()
    layers = {k: int(v) for k, v in (x.split("=") for x in args.layers.split(",") if x)}
    combos = [c.strip() for c in args.combos.split(",") if c.strip()]
    parts = [x for x in args.rounds.split(",") if x]
    rounds = {k: int(v) for k, v in (x.split("=") for x in parts if "=" in x)}
    default_rounds = int(next((x for x in parts if "=" not in x), "3"))
    steps = 1 + max([default_rounds, *rounds.values()]) * args.steps_per_round
    out = {"models": {}, "rounds": args.rounds, "steps_per_round": args.steps_per_round, "threads": args.threads,
           "block": BLOCK, "batch": BATCH, "lora": LORA, "lr": LR, "checkpointing": not args.no_checkpointing}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_data(work, n_chats=steps * BATCH, n_pairs=steps * BATCH)
        for shape in [m.strip() for m in args.models.split(",") if m.strip()]:
            depth = layers.get(shape, SHAPES[shape]["num_hidden_layers"])
            model_dir = make_model(work, shape, depth, data["tokenizer"])
            mine = [c.split(":", 1)[1] for c in combos if c.startswith(shape + ":")] or [c for c in combos if ":" not in c]
            entry = {"layers": depth, "full_depth": SHAPES[shape]["num_hidden_layers"], "combos": {},
                     "rounds": rounds.get(shape, default_rounds)}
            args_for = argparse.Namespace(**{**vars(args), "rounds": entry["rounds"]})
            for combo in mine:
                stage, method = combo.split("-")
                print(f"{shape} ({depth} of {SHAPES[shape]['num_hidden_layers']} layers) {stage} {method} ...", flush=True)
                r = run_combo(model_dir, work, data, stage, method, args_for)
                entry["combos"][combo] = r
                f, t = r["results"]["foundry"], r["results"]["trl"]
                print(f"  real tok/s foundry {f['real_tokens_per_s']['median']:.1f} trl {t['real_tokens_per_s']['median']:.1f}"
                      f" -> {r['ratio_tokens_per_s']['median']:.2f}x ({r['ratio_tokens_per_s']['min']:.2f}-"
                      f"{r['ratio_tokens_per_s']['max']:.2f}); peak RSS {f['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} MB"
                      f" -> {r['ratio_peak_rss']:.2f}x (growth {r['ratio_peak_rss_growth']:.2f}x); loss diff "
                      f"{r['loss_max_abs_diff']:.2e}", flush=True)
            out["models"][shape] = entry
            import shutil

            shutil.rmtree(model_dir, ignore_errors=True)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    import trl

    import peft

    write_result(args.name, {**info, "trl": trl.__version__, "peft": peft.__version__},
                 "python benchmarks/real_model_posttrain.py " + " ".join(sys.argv[1:]), out)


if __name__ == "__main__":
    main()
