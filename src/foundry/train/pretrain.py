"""`foundry pretrain`: next-token pretraining from random initialisation on packed token shards.

    foundry pretrain --config recipes/pretrain-kjv.yaml [--resume] [train.max_steps=500 ...]

The recipe names a tokenised dataset (`foundry data tokenize`), its tokenizer, a model (a preset plus
overrides) and a `train:` section (TrainConfig). Everything lands in `out_dir`: checkpoints, metrics,
TensorBoard events and `run.json`. Validation reports loss, perplexity and bits per byte.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError
from foundry.train.mlm import MLMConfig
from foundry.train.stage import StageConfig, StageRunner


class ModelSpec(StrictModel):
    """A preset from foundry.model.llama.PRESETS plus any field overridden."""

    preset: str = Field("4m", description="model size: test, 1m, 4m, 14m, 124m, 350m or 1b (decoders); bert-test, bert-mini, bert-small, bert-medium or bert-base (encoders, objective: mlm); the fields below override it")
    vocab_size: int | None = Field(None, gt=0, description="default: the tokenizer's vocabulary size")
    n_layer: int | None = Field(None, gt=0, description="transformer blocks")
    n_head: int | None = Field(None, gt=0, description="attention (query) heads")
    n_kv_head: int | None = Field(None, gt=0, description="key/value heads (fewer than n_head: grouped-query attention)")
    n_embd: int | None = Field(None, gt=0, description="hidden size")
    intermediate_size: int | None = Field(None, gt=0, description="SwiGLU MLP width")
    head_dim: int | None = Field(None, gt=0, description="size of one attention head (default n_embd / n_head)")
    max_seq_len: int | None = Field(None, gt=1, description="default: train.block_size")
    rope_theta: float | None = Field(None, gt=0, description="rotary position embedding base")
    norm_eps: float | None = Field(None, gt=0, description="RMSNorm epsilon")
    tie_embeddings: bool | None = Field(None, description="share the input embedding with the output layer")
    init_std: float | None = Field(None, gt=0, description="standard deviation of the initial weights")
    qk_norm: bool | None = Field(None, description="RMSNorm on each head's queries and keys (exports as Qwen3)")
    mlp_act: Literal["silu", "relu2"] | None = Field(None, description="MLP gate activation: silu (SwiGLU) or "
                                                     "relu2 (squared ReLU)")


class PretrainConfig(StageConfig):
    data: str = Field(description="dataset directory holding tokens/ (from 'foundry data tokenize'); the shards "
                      "of the recipe's tokenizer are read")
    tokenizer: str = Field(description="tokenizer directory (or tokenizer.json)")
    model: ModelSpec = Field(ModelSpec(), description="the model to pretrain (below)")
    objective: Literal["next_token", "mlm"] = Field(
        "next_token", description="next_token: a decoder (GPT); mlm: a masked-LM encoder (BERT; model.preset bert-*)")
    mlm: MLMConfig = Field(default_factory=lambda: MLMConfig(), description="masking, for objective: mlm (below)")


def build_model_config(spec: ModelSpec, tokenizer, block_size: int):
    from foundry.model.encoder import ENCODER_PRESETS
    from foundry.model.llama import config_from_preset

    if spec.preset in ENCODER_PRESETS:
        raise ConfigError(f"model.preset '{spec.preset}' is an encoder: it trains with objective: mlm")

    overrides = {k: v for k, v in spec.model_dump().items() if k != "preset" and v is not None}
    overrides.setdefault("vocab_size", tokenizer.vocab_size)
    overrides.setdefault("max_seq_len", block_size)
    if overrides["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={overrides['vocab_size']} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} tokens")
    if block_size > overrides["max_seq_len"]:
        raise ConfigError(f"train.block_size={block_size} exceeds model.max_seq_len={overrides['max_seq_len']}")
    return config_from_preset(spec.preset, **overrides)


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict:
    """Pretrain as `cfg` says; returns the final metrics (val/loss, val/ppl, val/bpb, step, ...)."""
    import torch

    from foundry.data.shards import TokenBlocks
    from foundry.model.llama import Llama
    from foundry.train.loop import loss_evaluator
    from foundry.train.objectives import NextTokenObjective
    from foundry.train.token_data import open_pretraining_run_dir, open_token_dataset

    if cfg.objective == "mlm":
        from foundry.train.mlm import run_mlm_pretrain

        return run_mlm_pretrain(cfg, resume)
    with StageRunner("pretrain", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        dataset = open_token_dataset(cfg.data, cfg.tokenizer)
        tokenizer, tokens = dataset.tokenizer, dataset.tokens
        model_config = build_model_config(cfg.model, tokenizer, tc.block_size)
        train_blocks = TokenBlocks(tokens, "train", tc.block_size, tc.seed, env.rank, env.world_size)
        val_blocks = TokenBlocks(tokens, "val", tc.block_size, tc.seed)
        out_dir = open_pretraining_run_dir(runner, cfg.data, cfg.tokenizer, tokenizer)

        torch.manual_seed(tc.seed)  # the initial weights depend only on the seed
        model = Llama(model_config)
        objective = NextTokenObjective()
        evaluator = loss_evaluator(objective, lambda: val_blocks.eval_batches(tc.micro_batch_size, tc.eval_batches),
                                   bytes_per_token=dataset.val_bytes_per_token)
        n_params = model.num_params()
        runner.log(f"foundry pretrain: {n_params / 1e6:.2f}M parameters, vocab {model_config.vocab_size}, "
                   f"block {tc.block_size}, {tc.micro_batch_size * env.grad_accum_steps * env.world_size * tc.block_size:,} "
                   f"tokens/step, {train_blocks.stream.num_tokens:,} train tokens -> {out_dir}")
        results = runner.train(model, objective, train_blocks, tokenizer, evaluators={"val": evaluator},
                               best_metric="val/loss")
        results["params"] = n_params
        return runner.finish(results, summary=["val/loss", "val/ppl", "val/bpb"])
