"""Masked-language-model pretraining (BERT, Devlin et al. 2019, section 3.1) as an objective on the one loop.

    foundry pretrain --config recipes/encoder.yaml      # objective: mlm, model.preset: bert-mini

What this module adds, and nothing else:
- `MaskedLMSource`: wraps any batch source of packed token blocks (the decoder's `TokenBlocks` on the same
  shards, or continual pretraining's mixture) and turns each block into an MLM example:
  * padding-free packing: documents end with `<|endoftext|>`, so every token gets the index of its document
    (`segment_ids`) and its position inside it (`position_ids`); the encoder attends only within a document
    (block-diagonal, not causal) and positions restart per document (torchtune #892);
  * masking: each non-special token is chosen with probability `mask_rate` (15%); a chosen token becomes
    the mask token 80% of the time, a random token 10%, and stays itself 10% (the paper's 80/10/10);
    special tokens (end of text, chat markers, padding) are never chosen. The draw is a pure function of
    (seed, batch counter), so a resume masks exactly as the uninterrupted run would.
- `MLMObjective`: cross-entropy on the chosen tokens only (units = chosen tokens), and their accuracy.
- `mlm_evaluator`: masked-token loss and accuracy on fixed validation blocks, masked the same way every call.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError
from foundry.lm_metrics import IGNORE_INDEX
from foundry.train.objectives import SourceBase, token_cross_entropy_sum


class MLMConfig(StrictModel):
    """How tokens are chosen and replaced for masked-LM training."""

    mask_rate: float = Field(0.15, gt=0, lt=1, description="share of (non-special) tokens the model must predict")
    mask_token_share: float = Field(0.8, ge=0, le=1, description="of the chosen tokens: replaced by the mask token")
    random_token_share: float = Field(0.1, ge=0, le=1, description="of the chosen tokens: replaced by a random token "
                                      "(the rest are left as they are)")


def special_token_ids(tokenizer) -> list[int]:
    """Ids never masked: foundry's seven special tokens, or an imported tokenizer's own by role."""
    if tokenizer.special_tokens is None:
        return list(range(7))
    ids = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens.values()}
    return sorted(i for i in ids | {tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id} if i is not None)


def packed_segments(input_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment_ids, position_ids), each (B, T): a document ends at (and includes) its `eos_id`."""
    is_eos = (input_ids == eos_id).long()
    segment_ids = torch.cumsum(is_eos, dim=1) - is_eos  # eos belongs to the document it ends
    B, T = input_ids.shape
    idx = torch.arange(T).expand(B, T)
    starts = torch.zeros_like(is_eos)
    starts[:, 0] = 1
    starts[:, 1:] = is_eos[:, :-1]
    first = torch.cummax(idx * starts, dim=1).values  # index where each token's document starts
    return segment_ids, idx - first


def mask_tokens(input_ids: torch.Tensor, special_ids: list[int], mask_token_id: int, random_high: int,
                cfg: MLMConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input_ids, targets): targets hold the original id at chosen positions and -100 elsewhere."""
    special = torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < cfg.mask_rate) & ~special
    if not chosen.any() and (~special).any():  # a batch with nothing to predict would stop the loop
        candidates = torch.nonzero(~special)
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
        chosen[pick[0], pick[1]] = True
    targets = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (how < cfg.mask_token_share)
    to_random = chosen & (how >= cfg.mask_token_share) & (how < cfg.mask_token_share + cfg.random_token_share)
    random_ids = torch.randint(0, random_high, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    random_ids = torch.where(torch.isin(random_ids, torch.tensor(special_ids, dtype=input_ids.dtype)),
                             input_ids, random_ids)  # a random token is never a special one
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, targets


class Masker:
    """Everything masking needs from the tokenizer and the model, in one place."""

    def __init__(self, tokenizer, mask_token_id: int, cfg: MLMConfig):
        if cfg.mask_token_share + cfg.random_token_share > 1:
            raise ConfigError(f"mlm: mask_token_share + random_token_share = "
                              f"{cfg.mask_token_share + cfg.random_token_share} exceeds 1")
        self.special, self.mask_id, self.cfg = special_token_ids(tokenizer), mask_token_id, cfg
        self.eos_id, self.random_high = tokenizer.eos_id, tokenizer.vocab_size

    def __call__(self, block: dict, generator: torch.Generator) -> dict:
        ids = block["input_ids"]
        segment_ids, position_ids = packed_segments(ids, self.eos_id)
        masked, targets = mask_tokens(ids, self.special, self.mask_id, self.random_high, self.cfg, generator)
        return {"input_ids": masked, "targets": targets, "segment_ids": segment_ids, "position_ids": position_ids}


class MaskedLMSource(SourceBase):
    """MLM batches from a source of packed token blocks; resumable (inner position + batch counter)."""

    def __init__(self, inner, masker: Masker, seed: int):
        self.inner, self.masker, self.seed, self.draws = inner, masker, seed, 0

    def next_batch(self, batch_size: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        return self.masker(self.inner.next_batch(batch_size), g)

    def state_dict(self) -> dict:
        return {"draws": self.draws, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self.inner.load_state_dict(state["inner"])


class MLMObjective:
    """Cross-entropy on the masked positions (units: masked tokens); metric: their accuracy."""

    name = "mlm"

    def units(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])
        targets = batch["targets"]
        correct = ((logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
        return token_cross_entropy_sum(logits, targets), {"mlm_acc": correct.float()}


def mlm_evaluator(batches: Callable[[], Iterable[dict]], masker: Masker, seed: int = 0):
    """fn(model) -> {"loss", "ppl", "acc"} over masked tokens of `batches()`, masked identically every call."""
    import math

    objective = MLMObjective()

    def evaluate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        total, correct, units = 0.0, 0.0, 0
        with torch.no_grad():
            for k, block in enumerate(batches()):
                batch = masker(block, torch.Generator().manual_seed(seed * 1_000_003 + k))
                batch = {key: v.to(device) for key, v in batch.items()}
                loss_sum, metrics = objective.loss(model, batch)
                total, correct = total + float(loss_sum), correct + float(metrics["mlm_acc"])
                units += objective.units(batch)
        if units == 0:
            raise ConfigError("mlm evaluation: no maskable tokens in the validation blocks")
        return {"loss": total / units, "ppl": math.exp(min(total / units, 50.0)), "acc": correct / units}

    return evaluate


def mlm_val_evaluator(dataset, block_size: int, batch_size: int, max_batches: int, masker: Masker, tokenizer=None):
    """An MLM evaluator on a dataset's val shards of `tokenizer` (the same fixed blocks every call)."""
    from foundry.data.shards import TokenBlocks

    blocks = TokenBlocks(dataset, "val", block_size, seed=0, tokenizer=tokenizer)
    return mlm_evaluator(lambda: blocks.eval_batches(batch_size, max_batches), masker)


def encoder_model_config(spec, tokenizer, block_size: int):
    """An EncoderConfig from a recipe's `model:` (ModelSpec); refuse a decoder preset or decoder-only fields."""
    from foundry.model.encoder import ENCODER_PRESETS, encoder_config_from_preset

    if spec.preset not in ENCODER_PRESETS:
        raise ConfigError(f"objective: mlm needs an encoder; model.preset '{spec.preset}' is a decoder preset "
                          f"(choose one of {', '.join(ENCODER_PRESETS)})")
    decoder_only = [k for k in ("n_kv_head", "head_dim", "rope_theta", "tie_embeddings")
                    if getattr(spec, k) is not None]
    if decoder_only:
        raise ConfigError(f"model: {', '.join(decoder_only)} apply to decoders only; remove them for an encoder")
    overrides = {k: v for k, v in spec.model_dump().items()
                 if k in ("n_layer", "n_head", "n_embd", "intermediate_size", "max_seq_len", "norm_eps", "init_std")
                 and v is not None}
    overrides["mask_token_id"] = tokenizer.vocab_size  # one id past the tokenizer: [MASK]
    overrides["vocab_size"] = max(spec.vocab_size or 0, tokenizer.vocab_size + 1)
    overrides.setdefault("max_seq_len", max(block_size, ENCODER_PRESETS[spec.preset]["max_seq_len"]))
    if block_size > overrides["max_seq_len"]:
        raise ConfigError(f"train.block_size={block_size} exceeds model.max_seq_len={overrides['max_seq_len']}")
    return encoder_config_from_preset(spec.preset, **overrides)


def run_mlm_pretrain(cfg, resume: bool = False) -> dict:
    """`foundry pretrain` with `objective: mlm`: an encoder from random initialisation on the token shards."""
    from foundry.data.shards import TokenBlocks
    from foundry.model.encoder import Encoder
    from foundry.train.stage import StageRunner
    from foundry.train.token_data import open_pretraining_run_dir, open_token_dataset

    with StageRunner("mlm", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        dataset = open_token_dataset(cfg.data, cfg.tokenizer)
        tokenizer, tokens = dataset.tokenizer, dataset.tokens
        model_config = encoder_model_config(cfg.model, tokenizer, tc.block_size)
        masker = Masker(tokenizer, model_config.mask_token_id, cfg.mlm)
        blocks = TokenBlocks(tokens, "train", tc.block_size, tc.seed, env.rank, env.world_size)
        source = MaskedLMSource(blocks, masker, tc.seed)
        val_blocks = TokenBlocks(tokens, "val", tc.block_size, tc.seed)
        evaluator = mlm_evaluator(lambda: val_blocks.eval_batches(tc.micro_batch_size, tc.eval_batches), masker)
        out_dir = open_pretraining_run_dir(runner, cfg.data, cfg.tokenizer, tokenizer)
        torch.manual_seed(tc.seed)
        model = Encoder(model_config)
        n_params = model.num_params()
        runner.log(f"foundry pretrain (mlm): {n_params / 1e6:.2f}M-parameter encoder, vocab {model_config.vocab_size} "
                   f"(mask id {model_config.mask_token_id}), block {tc.block_size}, mask rate {cfg.mlm.mask_rate}, "
                   f"{blocks.stream.num_tokens:,} train tokens -> {out_dir}")
        results = runner.train(model, MLMObjective(), source, tokenizer, evaluators={"val": evaluator},
                               best_metric="val/loss")
        results["params"] = n_params
        return runner.finish(results, summary=["val/loss", "val/acc"])
