"""The Hugging Face peers for pretraining quality per compute, run by `benchmarks/pretrain_quality.py`.

HF `tokenizers` + `transformers.LlamaForCausalLM` + `Trainer`, trained for a wall-clock budget on a text
file, then scored in bits per byte on another text file with the shared scorer (`record.bits_per_byte`).

--recipe foundry   foundry's exact recipe (`recipes/pretrain-kjv.yaml`): its tokenizer file (the same
                   vocabulary), its shape (preset 1m), batch 4 x 256, AdamW lr 3e-3, betas (0.9, 0.95),
                   eps 1e-8, weight decay 0.1 on matrices only (not the embedding, not norm gains), 50
                   warm-up steps, grad clip 1.0, then Trainer's `warmup_stable_decay` schedule with a
                   1 - sqrt cool-down over the last 30% of steps to 0. Trainer's schedule counts steps,
                   so the step count is calibrated by a short probe of the step time to end inside the
                   budget (foundry's schedule follows the clock instead).
--recipe defaults  what Trainer does by default, on a model a user might pick for this budget (~3.4M:
                   6 layers x 192, byte-level BPE of 4096): TrainingArguments' defaults (AdamW lr 5e-5,
                   betas (0.9, 0.999), no weight decay, no warm-up, linear decay to 0, batch 8), with the
                   step count calibrated the same way so the linear schedule also ends in the budget.

Both stop at the budget regardless (a hard stop), and print steps, tokens and the final learning rate.

    python benchmarks/hf_baseline_pretrain.py --train TRAIN.txt --score HELD.txt --recipe foundry \
        --tokenizer RUN/tokenizer/tokenizer.json --seconds 300 --out /tmp/hf-run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from record import bits_per_byte

RECIPES = {
    # foundry's recipe, field for field (recipes/pretrain-kjv.yaml and foundry.model.llama preset "1m").
    "foundry": dict(shape=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=4, rope_theta=10000.0, rms_norm_eps=1e-5),
                    vocab_size=2048, block=256, batch=4, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup=50,
                    schedule="warmup_stable_decay", decay_fraction=0.3),
    # Trainer's defaults (TrainingArguments: learning_rate 5e-5, adam betas (0.9, 0.999), weight_decay 0,
    # warmup 0, lr_scheduler_type linear, per_device_train_batch_size 8) on the earlier baseline's shape.
    "defaults": dict(shape=dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=6,
                                num_key_value_heads=6),
                     vocab_size=4096, block=256, batch=8, lr=None, betas=None, weight_decay=None, warmup=None,
                     schedule=None, decay_fraction=None),
}


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
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="training text (UTF-8)")
    parser.add_argument("--score", type=Path, required=True, help="text to score in bits per byte")
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json to use (default: train a byte-level BPE)")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--probe-steps", type=int, default=30, help="steps timed to calibrate the step count")
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
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=block, tie_word_embeddings=True,
                                            **recipe["shape"]))

    def optimizers(model):
        if args.recipe != "foundry":
            return (None, None)  # Trainer's own
        from foundry.train.optim import parameter_groups  # the same decay rule: matrices only

        opt = torch.optim.AdamW(parameter_groups(model, recipe["weight_decay"]), lr=args.lr or recipe["lr"],
                                betas=recipe["betas"], eps=1e-8, fused=True)
        return (opt, None)  # Trainer builds the schedule below on it

    def training_args(max_steps: int, out: Path) -> TrainingArguments:
        common = dict(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=recipe["batch"],
                      logging_steps=50, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                      dataloader_num_workers=0, seed=0, disable_tqdm=True)
        if args.recipe == "defaults":
            return TrainingArguments(**common, **({"learning_rate": args.lr} if args.lr else {}))
        decay_steps = max(1, round(recipe["decay_fraction"] * max_steps))
        return TrainingArguments(**common, learning_rate=args.lr or recipe["lr"], warmup_steps=recipe["warmup"],
                                 lr_scheduler_type=recipe["schedule"], max_grad_norm=1.0,
                                 lr_scheduler_kwargs={"num_decay_steps": decay_steps, "decay_type": "1-sqrt",
                                                      "min_lr_ratio": 0.0})

    class Clock(TrainerCallback):
        """Step end times; a hard stop at the budget; the learning rate of the last step."""

        def __init__(self, budget: float):
            self.budget, self.times, self.last_lr = budget, {}, None

        def on_train_begin(self, _args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, control, lr_scheduler=None, **kw):
            self.times[state.global_step] = time.perf_counter() - self.start
            if lr_scheduler is not None:
                self.last_lr = lr_scheduler.get_last_lr()[0]
            if self.times[state.global_step] >= self.budget:
                control.should_training_stop = True

    # Probe: the step time of this exact set-up on this machine now, on a throwaway model.
    probe = Clock(float("inf"))
    probe_model = new_model()
    Trainer(model=probe_model, args=training_args(args.probe_steps, args.out / "probe"), train_dataset=Blocks(),
            optimizers=optimizers(probe_model), callbacks=[probe]).train()
    skip = min(5, args.probe_steps // 3)  # the first steps carry allocation and warm-up costs
    step_s = (probe.times[args.probe_steps] - probe.times[skip]) / (args.probe_steps - skip)
    max_steps = max(1, int(args.seconds * 0.97 / step_s))  # 3% margin for load drift; the hard stop is at 100%

    model = new_model()
    n_params = sum(p.numel() for p in model.parameters())
    if args.ready:  # contenders run together start their clocks together
        args.ready.touch()
        while args.go and not args.go.exists():
            time.sleep(0.1)
    train_start = time.time()
    clock = Clock(args.seconds)
    Trainer(model=model, args=training_args(max_steps, args.out), train_dataset=Blocks(),
            optimizers=optimizers(model), callbacks=[clock]).train()
    steps = max(clock.times)
    model.eval()
    score_ids = tok.encode(score_text, add_special_tokens=False).ids
    scored = bits_per_byte(lambda x: model(x).logits, score_ids, len(score_text.encode("utf-8")), block)
    print(json.dumps({
        "system": f"hf-trainer ({args.recipe} recipe)", "params": n_params, "vocab_size": vocab,
        "probe_step_s": round(step_s, 4), "planned_steps": max_steps, "steps": steps,
        "reached_schedule_end": steps >= max_steps, "train_seconds": round(clock.times[steps], 1),
        "tokens": steps * recipe["batch"] * block, "final_lr": clock.last_lr, "batch": recipe["batch"], "block": block,
        "train_tokens_available": len(data), "train_start_unix": round(train_start, 1), "held_out_bpb": scored["bpb"], "scored_bytes": scored["bytes"]}))


if __name__ == "__main__":
    main()
