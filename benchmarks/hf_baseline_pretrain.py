"""The peer baseline for pretraining quality per compute, run by hand.

Hugging Face `tokenizers` byte-level BPE + `LlamaForCausalLM` (~4.2M parameters) + `Trainer`, trained
for a fixed wall-clock budget on a text file with its last 1% held out, then scored in bits per byte
on the held-out part. `benchmarks/pretrain_quality.py` runs this and foundry's pretraining on the same
split and budget and prints the ratio.

    python benchmarks/hf_baseline_pretrain.py TEXT_FILE --seconds 300 --out /tmp/hf-baseline
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def split_text(path: Path, held_out: float = 0.01) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * (1 - held_out))
    cut = text.rfind("\n", 0, cut) + 1 or cut  # cut at a line boundary
    return text[:cut], text[cut:]


def bits_per_byte(model, ids: list[int], text: str, block: int, device: str = "cpu") -> float:
    """Sum of next-token NLL over the held-out tokens (non-overlapping windows), in bits per UTF-8 byte."""
    model.eval()
    total_nll, data = 0.0, torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(data) - 1, block):
            x = data[start:start + block + 1]
            if len(x) < 2:
                break
            logits = model(x[None, :-1].to(device)).logits.float()
            total_nll += torch.nn.functional.cross_entropy(logits[0], x[1:].to(device), reduction="sum").item()
    return total_nll / math.log(2) / len(text.encode("utf-8"))


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", type=Path)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hf-baseline"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_text, held_text = split_text(args.text)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_text.splitlines(keepends=True), trainer)
    train_ids = tok.encode(train_text).ids
    held_ids = tok.encode(held_text).ids

    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=args.block,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    data = torch.tensor(train_ids, dtype=torch.long)
    n_blocks = (len(data) - 1) // args.block

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return n_blocks

        def __getitem__(self, i):
            x = data[i * args.block:(i + 1) * args.block]
            return {"input_ids": x, "labels": x.clone()}

    class StopAfter(TrainerCallback):
        def __init__(self):
            self.start = time.time()

        def on_step_end(self, _args, state, control, **kw):
            if time.time() - self.start > args.seconds:
                control.should_training_stop = True

    steps_guess = 10_000
    training_args = TrainingArguments(
        output_dir=str(args.out), per_device_train_batch_size=args.batch, learning_rate=args.lr,
        max_steps=steps_guess, warmup_steps=50, lr_scheduler_type="cosine", weight_decay=0.1,
        logging_steps=50, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
    )
    stopper = StopAfter()
    Trainer(model=model, args=training_args, train_dataset=Blocks(), callbacks=[stopper]).train()
    seconds = time.time() - stopper.start
    bpb = bits_per_byte(model, held_ids, held_text, args.block)
    result = {"peer": "hf-trainer", "params": n_params, "train_seconds": round(seconds, 1), "held_out_bpb": bpb,
              "train_tokens": len(train_ids), "held_out_bytes": len(held_text.encode())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
