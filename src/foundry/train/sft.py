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

from pathlib import Path

import torch
from pydantic import Field

from foundry.config import StrictModel, TrainConfig, load_config
from foundry.errors import CheckpointError, ConfigError, DataError

IGNORE = -100


class LoRASpec(StrictModel):
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = ["q_proj", "v_proj"]


class SFTTrainConfig(TrainConfig):
    """TrainConfig with fine-tuning defaults: short run, short warm-up, lower peak lr."""

    max_steps: int = Field(300, gt=0)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    eval_every: int = Field(50, gt=0)
    micro_batch_size: int = Field(8, gt=0)


class SFTConfig(StrictModel):
    init: str = Field(description="foundry checkpoint or run directory to start from")
    data: str = Field(description="chat JSONL: {\"messages\": [{\"role\", \"content\"}, ...]} per line")
    val_data: str | None = Field(None, description="held-out chat JSONL for validation loss")
    out_dir: str
    pack: bool = True
    lora: LoRASpec | None = None
    train: SFTTrainConfig = SFTTrainConfig()
    overwrite: bool = False


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

    Padding has target -100; in packed rows it forms its own segment (id 0) so no example attends to it.
    """
    B, T = len(rows), block_size
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
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


class ShuffledRows:
    """Rows of examples visited in a fresh permutation each epoch, drawn from (seed, epoch).

    The state is (epoch, row cursor), so a resume continues at the exact row; every rank walks the same
    row sequence and rank r of w keeps every w-th row. Subclasses say how an epoch's order becomes rows
    (`rows_for_epoch`) and how rows become a batch (`collate`).
    """

    def __init__(self, n_examples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n_examples, self.seed, self.rank, self.world_size = n_examples, seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._rows: list[list[int]] | None = None

    def rows_for_epoch(self, epoch: int) -> list[list[int]]:
        return [[i] for i in self.epoch_order(epoch)]

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=g).tolist()

    def collate(self, rows: list[list[int]]) -> dict:
        raise NotImplementedError

    def _next_row(self) -> list[int]:
        if self._rows is None:
            self._rows = self.rows_for_epoch(self.epoch)
        if self.cursor >= len(self._rows):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._rows = self.rows_for_epoch(self.epoch)
        row = self._rows[self.cursor]
        self.cursor += 1
        return row

    def next_batch(self, batch_size: int) -> dict:
        rows = []
        for _ in range(batch_size):
            for r in range(self.world_size):
                row = self._next_row()
                if r == self.rank:
                    rows.append(row)
        return self.collate(rows)

    def eval_rows(self) -> list[list[int]]:
        return [[i] for i in range(self.n_examples)]

    def eval_batches(self, batch_size: int, max_batches: int | None = None):
        """Every example once, in file order, the same every call."""
        rows = self.eval_rows()
        for k, start in enumerate(range(0, len(rows), batch_size)):
            if max_batches is not None and k >= max_batches:
                break
            yield self.collate(rows[start:start + batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "examples": self.n_examples}

    def load_state_dict(self, state: dict) -> None:
        if int(state["examples"]) != self.n_examples:
            raise CheckpointError(f"resume: the checkpoint was trained on {state['examples']} examples, "
                                  f"the data now has {self.n_examples}; resume with the same data")
        self.epoch, self.cursor, self._rows = int(state["epoch"]), int(state["cursor"]), None


class ChatBatches(ShuffledRows):
    """SFT rows: with `pack`, whole conversations concatenated into block_size rows (per-epoch order),
    otherwise one conversation per row, right-padded."""

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

def load_stage_start(cfg, resume: bool):
    """Checks before anything is written, then the starting model: (init path, model, tokenizer).

    `cfg` is a stage config with out_dir, init, overwrite and train (SFTConfig, DPOConfig).
    """
    from foundry.train.checkpoint import check_run_dir, load_model, resolve_checkpoint

    check_run_dir(cfg.out_dir, resume, cfg.overwrite)
    init = resolve_checkpoint(cfg.init)
    model, tokenizer = load_model(init)
    if cfg.train.block_size > model.config.max_seq_len:
        raise ConfigError(f"train.block_size={cfg.train.block_size} exceeds the model's "
                          f"max_seq_len={model.config.max_seq_len}")
    return init, model, tokenizer


def save_merged_lora(model, tokenizer, out_dir: Path, stage: str, step: int) -> Path:
    """Merge the adapters into `model` (in place); `checkpoints/best` becomes a plain foundry checkpoint.

    With a validation set, the best-by-validation adapters are merged, else the final ones.
    """
    from foundry.model.lora import merge_lora
    from foundry.train.checkpoint import load_weights, read_meta, save_checkpoint, verify_checkpoint

    best = out_dir / "checkpoints" / "best"
    meta = {"step": step, "stage": stage, "val_loss": None}
    if best.is_dir() and verify_checkpoint(best) is None:
        load_weights(model, best)  # still LoRA-shaped: the loop saved the wrapped model
        meta = {k: v for k, v in read_meta(best).items() if k != "sha256"}
    merge_lora(model)
    meta["lora_merged"] = True
    return save_checkpoint(best, model, tokenizer, None, meta)


def run_sft(cfg: SFTConfig, resume: bool = False) -> dict:
    """Fine-tune as `cfg` says; returns the final metrics plus the truncation counts."""
    from foundry.data.chat import read_chat_jsonl
    from foundry.model.lora import apply_lora, lora_parameter_count
    from foundry.train.checkpoint import open_run_dir
    from foundry.train.distributed import setup_distributed
    from foundry.train.loop import loss_evaluator, train
    from foundry.train.objectives import NextTokenObjective
    from foundry.utils.io import sha256_file, write_run_record

    tc = cfg.train
    init, model, tokenizer = load_stage_start(cfg, resume)
    examples, stats = encode_conversations(tokenizer, read_chat_jsonl(cfg.data), tc.block_size, cfg.data)
    env = setup_distributed(tc)
    source = ChatBatches(examples, tc.block_size, tc.seed, tokenizer.pad_id, cfg.pack, env.rank, env.world_size)
    objective = NextTokenObjective()
    evaluators, val_stats = {}, None
    if cfg.val_data:
        val_examples, val_stats = encode_conversations(tokenizer, read_chat_jsonl(cfg.val_data), tc.block_size,
                                                       cfg.val_data)
        val_source = ChatBatches(val_examples, tc.block_size, tc.seed, tokenizer.pad_id, cfg.pack)
        evaluators["val"] = loss_evaluator(objective, lambda: val_source.eval_batches(tc.micro_batch_size,
                                                                                      tc.eval_batches))
    if cfg.lora is not None:
        apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)

    out_dir = open_run_dir(cfg, resume, env)
    parents = {"checkpoint": str(init.resolve()), "tokenizer_sha256": tokenizer.sha256}
    manifests = {Path(cfg.data).name: sha256_file(cfg.data)}
    if cfg.val_data:
        manifests[Path(cfg.val_data).name] = sha256_file(cfg.val_data)
    trainable, total = lora_parameter_count(model)
    if env.rank == 0:
        print(f"foundry sft: {len(examples)} conversations ({stats.supervised:,} supervised of {stats.tokens:,} "
              f"tokens), truncated: {stats.dropped_turns} lost early turns, {stats.cut_tail} cut at the tail, "
              f"{stats.skipped} skipped; {'packed' if cfg.pack else 'unpacked'} rows of {tc.block_size}; "
              f"{trainable:,} of {total:,} parameters trainable -> {out_dir}")
    model.train()
    results = train(model, objective, source, tc, out_dir, tokenizer, evaluators=evaluators, resume=resume,
                    stage="sft", parents=parents, data_manifests=manifests,
                    best_metric="val/loss" if evaluators else None, record_config=cfg)
    if cfg.lora is not None and env.rank == 0:
        save_merged_lora(model, tokenizer, out_dir, "sft", results["step"])
    results["truncation"] = stats.as_dict()
    if val_stats is not None:
        results["val_truncation"] = val_stats.as_dict()
    if env.rank == 0:
        write_run_record(out_dir, "sft", cfg, parents, manifests, results={"status": "finished", **results})
    return results


def parse_stage_command(verb: str, argv: list[str], config_cls, example: str):
    """`foundry VERB --config RECIPE [--resume] [key=value ...]` -> (validated config, resume)."""
    from foundry.cli import make_parser

    p = make_parser(verb)
    p.add_argument("--config", required=True, help="recipe YAML (init, data, out_dir, train, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its latest checkpoint")
    p.add_argument("overrides", nargs="*", help=f"dotted.key=value overrides, e.g. {example}")
    args = p.parse_args(argv)
    return load_config(config_cls, args.config, args.overrides), args.resume


def main(argv: list[str]) -> int:
    from foundry.train.distributed import is_main_process

    cfg, resume = parse_stage_command("sft", argv, SFTConfig, "train.max_steps=100 pack=false lora.rank=8")
    results = run_sft(cfg, resume=resume)
    parts = [f"step {results['step']}", f"loss {results.get('loss', float('nan')):.4f}"]
    if "val/loss" in results:
        parts.append(f"val/loss {results['val/loss']:.4f}")
    t = results["truncation"]
    parts.append(f"truncated {t['dropped_turns'] + t['cut_tail']}, skipped {t['skipped']}")
    if is_main_process():  # one line per run, not per torchrun rank
        print("foundry sft: done: " + ", ".join(parts) + f" -> {cfg.out_dir}")
    return 0
