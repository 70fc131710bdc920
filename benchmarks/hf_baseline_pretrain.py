"""The Hugging Face peers for pretraining quality per compute, run by `benchmarks/pretrain_quality.py`.

HF `tokenizers` + `transformers` (`LlamaForCausalLM`, or `Qwen3ForCausalLM` for QK-norm) + `Trainer`,
trained for a wall-clock budget on a text file, then scored in bits per byte on another text file with
the shared scorer (`record.bits_per_byte`).

--recipe foundry   foundry's exact recipe (`recipes/pretrain-kjv.yaml`): its tokenizer file (the same
                   vocabulary), its shape (preset 1m) with QK-norm (`Qwen3ForCausalLM`, which holds it),
                   batch 4 x 256, Muon for the hidden matrices and AdamW for the rest through foundry's own
                   optimiser classes (lr 3e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices only,
                   not the embedding, not norm gains), 50 warm-up steps, grad clip 1.0, then Trainer's
                   `warmup_stable_decay` schedule with a 1 - sqrt cool-down over the last 30% of steps to 0
                   (foundry's formula, as a LambdaLR per optimiser in Trainer). Trainer's schedules count
                   steps, so the step count is planned from the step time of the run's own first 30 steps
                   (warm-up, whose lr does not depend on it) and re-checked until the cool-down starts
                   (`StepPlan`); foundry's schedule follows the clock.
--recipe foundry-adamw   the recipe before 2026-12-01: the same with AdamW on a plain `LlamaForCausalLM`.
--recipe defaults  what Trainer does by default, on a model a user might pick for this budget (~3.4M:
                   6 layers x 192, byte-level BPE of 4096): TrainingArguments' defaults (AdamW lr 5e-5,
                   betas (0.9, 0.999), no weight decay, no warm-up, linear decay to 0, batch 8), with the
                   step count planned from the first 30 steps so the linear schedule ends in the budget.

All stop at the budget regardless (a hard stop), and print steps, tokens and the final learning rate.

    python benchmarks/hf_baseline_pretrain.py --train TRAIN.txt --score HELD.txt --recipe foundry \
        --tokenizer RUN/tokenizer/tokenizer.json --seconds 300 --out /tmp/hf-run
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from pathlib import Path

import torch

from record import bits_per_byte

FOUNDRY_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-5)
RECIPES = {
    # foundry's recipe, field for field (recipes/pretrain-kjv.yaml and foundry.model.llama preset "1m"):
    # Muon for the hidden matrices (foundry's optimiser class, as foundry uses it) and QK-norm, which
    # transformers holds as Qwen3 (Llama's attention plus the per-head q/k RMSNorm).
    "foundry": dict(shape=FOUNDRY_SHAPE, vocab_size=2048, block=256, batch=4, lr=3e-3, betas=(0.9, 0.95),
                    weight_decay=0.1, warmup=50, schedule="warmup_stable_decay", decay_fraction=0.3,
                    optimizer="muon", qk_norm=True),
    # the recipe before 2026-12-01: AdamW on a plain Llama (the 1.397 of the issue)
    "foundry-adamw": dict(shape=FOUNDRY_SHAPE, vocab_size=2048, block=256, batch=4, lr=3e-3, betas=(0.9, 0.95),
                          weight_decay=0.1, warmup=50, schedule="warmup_stable_decay", decay_fraction=0.3,
                          optimizer="adamw", qk_norm=False),
    # Trainer's defaults (TrainingArguments: learning_rate 5e-5, adam betas (0.9, 0.999), weight_decay 0,
    # warmup 0, lr_scheduler_type linear, per_device_train_batch_size 8) on the earlier baseline's shape.
    "defaults": dict(shape=dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=6,
                                num_key_value_heads=6),
                     vocab_size=4096, block=256, batch=8, lr=None, betas=None, weight_decay=None, warmup=None,
                     schedule=None, decay_fraction=None, optimizer=None, qk_norm=False),
}


class Schedules:
    """One LambdaLR per optimiser of foundry's Muon + AdamW pair, stepped as one (Trainer steps one)."""

    def __init__(self, optimizers, factor):
        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]

    def step(self):
        for s in self.schedules:
            s.step()

    def get_last_lr(self):
        return self.schedules[0].get_last_lr()

    def state_dict(self):
        return [s.state_dict() for s in self.schedules]


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def main() -> None:
    from tokenizers import Tokenizer
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM, Trainer, TrainerCallback,
                              TrainingArguments)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="training text (UTF-8)")
    parser.add_argument("--score", type=Path, required=True, help="text to score in bits per byte")
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json to use (default: train a byte-level BPE)")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--probe-steps", type=int, default=30, help="steps of the run timed to plan its step count")
    parser.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--ready", type=Path, help="touch this file when set up, then wait for --go to exist")
    parser.add_argument("--go", type=Path, help="start training only once this file exists")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hf-baseline"))
    args = parser.parse_args()
    recipe = RECIPES[args.recipe]
    if args.threads:
        torch.set_num_threads(args.threads)
    train_text, score_text = args.train.read_text(encoding="utf-8"), args.score.read_text(encoding="utf-8")
    tok = Tokenizer.from_file(str(args.tokenizer)) if args.tokenizer else train_tokenizer(train_text, recipe["vocab_size"])
    vocab = tok.get_vocab_size(with_added_tokens=True)
    data = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    block = recipe["block"]
    n_blocks = len(data) // block

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return n_blocks

        def __getitem__(self, i):
            x = data[i * block:(i + 1) * block]
            return {"input_ids": x, "labels": x.clone()}

    def new_model():
        torch.manual_seed(0)
        config, model_class = (Qwen3Config, Qwen3ForCausalLM) if recipe["qk_norm"] else (LlamaConfig, LlamaForCausalLM)
        return model_class(config(vocab_size=vocab, max_position_embeddings=block, tie_word_embeddings=True,
                                  **recipe["shape"]))

    def optimizer(model):
        if recipe["optimizer"] is None:
            return None  # Trainer's own default
        from foundry.config import TrainConfig  # Muon's momentum and Newton-Schulz steps: foundry's defaults
        from foundry.train.optim import build_optimizer  # the same optimisers and decay rule (matrices only)

        return build_optimizer(model, TrainConfig(
            optimizer=recipe["optimizer"], lr=args.lr or recipe["lr"], beta1=recipe["betas"][0],
            beta2=recipe["betas"][1], weight_decay=recipe["weight_decay"]))

    class StepPlan(TrainerCallback):
        """The step count, from the step time measured on this run's own first steps under the load it meets.

        After `--probe-steps` steps (inside foundry's 50 warm-up steps, whose lr does not depend on the step
        count) the plan becomes: steps so far + what 97% of the budget leaves at the recent step time. For
        the WSD recipe the plan is re-checked each step while the lr is still constant (the stable phase),
        then fixed when the cool-down starts; the linear default decays from step 0, so it is fixed at the
        probe. A hard stop at 100% of the budget holds whatever happens.
        """

        def __init__(self, budget: float):
            self.budget, self.times, self.total, self.fixed, self.last_lr, self.probe_step_s = budget, {}, 10**9, False, None, None

        def factor(self, step: int) -> float:
            """lr multiplier at `step` for the current plan (LambdaLR)."""
            if recipe["schedule"] is None:  # Trainer's "linear" with no warm-up: (T - step) / T
                return max(0.0, (self.total - step) / self.total)
            from foundry.train.optim import lr_at  # foundry's WSD formula itself, not a re-typed copy

            cfg = SimpleNamespace(lr=1.0, min_lr_ratio=0.0, warmup_steps=recipe["warmup"], schedule="wsd",
                                  decay_fraction=recipe["decay_fraction"], max_steps=self.total)
            return lr_at(step, cfg)

        def decay_start(self) -> int:
            return self.total - max(1, round(recipe["decay_fraction"] * self.total))

        def on_train_begin(self, _args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, control, lr_scheduler=None, **kw):
            step = state.global_step
            now = self.times[step] = time.perf_counter() - self.start
            if step >= args.probe_steps and not self.fixed:
                first = max(5, step - 50)  # the recent step time; the first steps carry warm-up costs
                step_s = (now - self.times[first]) / (step - first)
                self.probe_step_s = self.probe_step_s or step_s
                self.total = max(step + 1, step + int((self.budget * 0.97 - now) / step_s))
                self.fixed = recipe["schedule"] is None or step >= self.decay_start()
            if lr_scheduler is not None:
                self.last_lr = lr_scheduler.get_last_lr()[0]
            if step >= self.total or now >= self.budget:
                control.should_training_stop = True

    model = new_model()
    n_params = sum(p.numel() for p in model.parameters())
    plan = StepPlan(args.seconds)
    train_args = TrainingArguments(
        output_dir=str(args.out), max_steps=10**7, per_device_train_batch_size=recipe["batch"], logging_steps=50,
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
        disable_tqdm=True, **({"learning_rate": args.lr or recipe["lr"], "max_grad_norm": 1.0}
                              if recipe["optimizer"] else ({"learning_rate": args.lr} if args.lr else {})))
    trainer = Trainer(model=model, args=train_args, train_dataset=Blocks(), optimizers=(optimizer(model), None),
                      callbacks=[plan])
    trainer.create_optimizer()  # Trainer's default optimiser for "defaults", foundry's above for the others
    optimizers = getattr(trainer.optimizer, "optimizers", [trainer.optimizer])  # Muon + AdamW, or one
    trainer.lr_scheduler = Schedules(optimizers, plan.factor)
    if args.ready:  # contenders run together start their clocks together
        args.ready.touch()
        while args.go and not args.go.exists():
            time.sleep(0.1)
    train_start = time.time()
    trainer.train()
    steps = max(plan.times)
    model.eval()
    score_ids = tok.encode(score_text, add_special_tokens=False).ids
    scored = bits_per_byte(lambda x: model(x).logits, score_ids, len(score_text.encode("utf-8")), block)
    print(json.dumps({
        "system": f"hf-trainer ({args.recipe} recipe)", "model_class": type(model).__name__,
        "optimizer_kind": recipe["optimizer"] or "trainer-default", "params": n_params, "vocab_size": vocab,
        "probe_step_s": plan.probe_step_s, "planned_steps": plan.total, "steps": steps,
        "reached_schedule_end": steps >= plan.total, "train_seconds": round(plan.times[steps], 1),
        "tokens": steps * recipe["batch"] * block, "final_lr": plan.last_lr, "optimizer": repr(trainer.optimizer.optimizer
                                                                                              if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).replace("\n", " "), "batch": recipe["batch"], "block": block,
        "train_tokens_available": len(data), "train_start_unix": round(train_start, 1), "held_out_bpb": scored["bpb"], "scored_bytes": scored["bytes"]}))


if __name__ == "__main__":
    main()
