"""`foundry sft`: supervised instruction tuning of any foundry checkpoint on chat JSONL.

    foundry sft --config recipes/sft.yaml [--resume] [train.max_steps=200 lora.rank=8 ...]

SFT is next-token training with a loss mask, so this module adds only a batch source to the one loop:
- Conversations are rendered by the one chat template (`foundry.data.chat`); the loss is taken on
  assistant tokens, each assistant turn's `<|end|>` included, so the model learns to stop (trl #1623).
- Conversations longer than `train.block_size` are fitted by `chat.fit_conversation`'s stated rule
  (drop whole early exchanges, keeping the system prompt; else cut the tail; skip if nothing is left to
  learn) and every branch is counted in the output and in run.json.
- `pack: true` concatenates whole conversations into block_size rows with per-conversation
  `position_ids` and `segment_ids`, so attention stays inside each conversation (torchtune #892) and
  the loss equals the unpacked loss; the objective is the plain `NextTokenObjective`.
- Optional LoRA (`foundry.model.lora`): only adapters train; at the end they are merged and
  `checkpoints/best` holds plain merged weights, so the output is a normal foundry checkpoint.
"""

from __future__ import annotations


import torch
from pydantic import Field

from foundry.config import TrainConfig
from foundry.errors import DataError
from foundry.lm_metrics import IGNORE_INDEX
from foundry.train.batches import ShuffledRows
from foundry.train.stage import FineTuneConfig, LoRASpec, StageRunner


class SFTTrainConfig(TrainConfig):
    """TrainConfig with fine-tuning defaults: short run, short warm-up, lower peak lr."""

    max_steps: int = Field(300, gt=0)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    eval_every: int = Field(50, gt=0)
    micro_batch_size: int = Field(8, gt=0)


class SFTConfig(FineTuneConfig):
    data: str = Field(description="chat JSONL: {\"messages\": [{\"role\", \"content\"}, ...]} per line")
    val_data: str | None = Field(None, description="held-out chat JSONL for validation loss")
    pack: bool = Field(True, description="concatenate whole conversations into block_size rows (attention stays "
                       "inside each conversation)")
    lora: LoRASpec | None = Field(None, description="train low-rank adapters only (merged into the saved best)")
    train: SFTTrainConfig = SFTTrainConfig()


# ---- the batch source ----------------------------------------------------------------------------------

def encode_conversations(tokenizer, conversations: list[list[dict]], block_size: int, where: str = "data"):
    """(ids, targets) per conversation, fitted to block_size; plus the truncation counts."""
    from foundry.data.chat import TruncationStats, assistant_loss_targets, fit_conversation

    stats = TruncationStats()
    examples = []
    for messages in conversations:
        fitted = fit_conversation(tokenizer, messages, block_size, stats)
        if fitted is not None:
            examples.append((fitted.ids, assistant_loss_targets(fitted.ids, fitted.mask)))
    if not examples:
        raise DataError(f"{where}: no conversation has an assistant token left within block_size={block_size}")
    return examples, stats


def pack_rows(lengths: list[int], order: list[int], block_size: int) -> list[list[int]]:
    """Group example indices (taken in `order`) into rows of at most block_size tokens, whole examples only."""
    rows, row, used = [], [], 0
    for i in order:
        if row and used + lengths[i] > block_size:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += lengths[i]
    if row:
        rows.append(row)
    return rows


def collate_rows(examples, rows: list[list[int]], block_size: int, pad_id: int, packed: bool) -> dict:
    """Rows of examples -> {"input_ids", "targets"} (B, T), plus "position_ids" and "segment_ids" if packed.

    T is the batch's longest row (at most block_size), so no step computes on padding beyond it. Padding
    has target -100; in packed rows it forms its own segment (id 0) so no example attends to it.
    """
    lengths = [sum(len(examples[i][0]) for i in row) for row in rows]
    B, T = len(rows), min(block_size, max(lengths, default=1))
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    segment_ids = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        pos = 0
        for seg, i in enumerate(row, 1):
            ids, tgt = examples[i]
            n = len(ids)
            input_ids[b, pos:pos + n] = torch.tensor(ids)
            targets[b, pos:pos + n] = torch.tensor(tgt)  # an example's last target is -100: no cross-talk
            position_ids[b, pos:pos + n] = torch.arange(n)
            segment_ids[b, pos:pos + n] = seg
            pos += n
        position_ids[b, pos:] = torch.arange(T - pos)
    batch = {"input_ids": input_ids, "targets": targets}
    if packed:
        batch.update(position_ids=position_ids, segment_ids=segment_ids)
    return batch


class ChatBatches(ShuffledRows):
    """SFT rows: with `pack`, whole conversations concatenated into block_size rows (per-epoch order),
    otherwise one conversation per row; either way right-padded to the batch's longest row only."""

    def __init__(self, examples, block_size: int, seed: int, pad_id: int, pack: bool = True,
                 rank: int = 0, world_size: int = 1):
        super().__init__(len(examples), seed, rank, world_size)
        self.examples, self.block_size, self.pad_id, self.pack = examples, block_size, pad_id, pack
        self.lengths = [len(ids) for ids, _ in examples]

    def rows_for_epoch(self, epoch: int) -> list[list[int]]:
        order = self.epoch_order(epoch)
        return pack_rows(self.lengths, order, self.block_size) if self.pack else [[i] for i in order]

    def eval_rows(self) -> list[list[int]]:
        order = list(range(len(self.examples)))
        return pack_rows(self.lengths, order, self.block_size) if self.pack else [[i] for i in order]

    def collate(self, rows: list[list[int]]) -> dict:
        return collate_rows(self.examples, rows, self.block_size, self.pad_id, self.pack)


# ---- the verb --------------------------------------------------------------------------------------------

def run_sft(cfg: SFTConfig, resume: bool = False) -> dict:
    """Fine-tune as `cfg` says; returns the final metrics plus the truncation counts."""
    from foundry.data.chat import read_chat_jsonl
    from foundry.model.lora import lora_parameter_count
    from foundry.train.loop import loss_evaluator
    from foundry.train.objectives import NextTokenObjective

    with StageRunner("sft", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        start = runner.load_start(cfg.init)
        model, tokenizer = start.model, start.tokenizer
        examples, stats = encode_conversations(tokenizer, read_chat_jsonl(cfg.data), tc.block_size, cfg.data)
        source = ChatBatches(examples, tc.block_size, tc.seed, tokenizer.pad_id, cfg.pack, env.rank, env.world_size)
        objective = NextTokenObjective()
        evaluators, val_stats = {}, None
        if cfg.val_data:
            val_examples, val_stats = encode_conversations(tokenizer, read_chat_jsonl(cfg.val_data), tc.block_size,
                                                           cfg.val_data)
            val_source = ChatBatches(val_examples, tc.block_size, tc.seed, tokenizer.pad_id, cfg.pack)
            evaluators["val"] = loss_evaluator(objective, lambda: val_source.eval_batches(tc.micro_batch_size,
                                                                                          tc.eval_batches))
        runner.apply_lora(model, cfg.lora)

        out_dir = runner.open_run_dir(data_files=[cfg.data] + ([cfg.val_data] if cfg.val_data else []))
        trainable, total = lora_parameter_count(model)
        runner.log(f"foundry sft: {len(examples)} conversations ({stats.supervised:,} supervised of {stats.tokens:,} "
                   f"tokens), truncated: {stats.dropped_turns} lost early turns, {stats.cut_tail} cut at the tail, "
                   f"{stats.skipped} skipped; {'packed' if cfg.pack else 'unpacked'} rows of {tc.block_size}; "
                   f"{trainable:,} of {total:,} parameters trainable -> {out_dir}")
        results = runner.train(model, objective, source, tokenizer, evaluators=evaluators,
                               best_metric="val/loss" if evaluators else None, lora=cfg.lora)
        results["truncation"] = stats.as_dict()
        if val_stats is not None:
            results["val_truncation"] = val_stats.as_dict()
        t = results["truncation"]
        return runner.finish(results, summary=["loss", "val/loss"],
                             extra=[f"truncated {t['dropped_turns'] + t['cut_tail']}, skipped {t['skipped']}"])
