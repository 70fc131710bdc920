"""`foundry clip`: contrastive image-text pretraining (and continual pretraining) on the one loop.

    foundry clip --config recipes/clip-general.yaml [--resume] [train.max_steps=500 ...]

A stage like the others: an objective (`ContrastiveObjective`), a batch source (`PairBatches`), a
config (`ClipStageConfig`) and a starting model: a fresh CLIP from a preset (its caption tokenizer
trained on the training captions) or, with `init`, a CLIP checkpoint whose tokenizer is kept (continual
pretraining on a new domain).

The objectives, each a SUM over the rank's pairs (the loop divides by the step's pairs over all ranks):
- `clip`: symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural
  Language Supervision", Figure 3): for each image, cross-entropy over all texts of the batch with its
  own caption as the target, and the same for each text over all images; the two halves averaged.
  logits = exp(t) * <image_i, text_j> with t learnable, exp(t) clamped at 100 (section 2.5).
- `siglip`: the sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", eq. 1 /
  Algorithm 1): -sum_j log sigmoid(z_ij * (exp(t) <image_i, text_j> + b)), z_ij = 1 on the diagonal and
  -1 elsewhere, per image; t and b learnable (initialised log 10 and -10).

Under torchrun the negatives are the global batch: each rank gathers every rank's embeddings with an
all_gather whose backward sums the gradients flowing to each rank's slice back to its owner
(`_GatherWithGrad`; open_clip's `gather_with_grad=True`), and scores
only its own rows (open_clip's `local_loss=True`). The ranks' loss sums add up to the one-process loss
on the same global batch, and the loop's sum all-reduce of the parameter gradients (not DDP's average)
makes the update equal too (tests/train/test_clip_distributed.py).

Gradient accumulation splits a step into micro-batches, and the negatives are each micro-batch's:
accumulating k micro-batches of B is NOT one batch of kB for a contrastive loss (unlike next-token).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError
from foundry.train.objectives import SourceBase
from foundry.train.stage import StageConfig, StageRunner


# ---- the losses ----------------------------------------------------------------------------------
class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows.

    Every rank's loss reads every rank's rows, so the gradient of the global loss with respect to rank r's
    rows is the sum over ranks of what each computed for them: an all-reduce of the gathered gradient,
    sliced (a reduce-scatter, written as all-reduce + slice because gloo has no CPU reduce-scatter).
    torch.distributed.nn.functional.all_gather does the same but is deprecated in torch 2.13."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # SUM over ranks
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows concatenated in rank order, where this rank's rows start); the identity in one
    process. The gradient reaching a row goes back to the rank that owns it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def clip_loss_sum(image: torch.Tensor, text: torch.Tensor, all_image: torch.Tensor, all_text: torch.Tensor,
                  logit_scale: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE summed over this rank's pairs. image, text (B, D) unit rows, this rank's;
    all_image, all_text (N, D) the global batch, in which this rank's rows start at `offset`."""
    scale = logit_scale.exp().clamp(max=100.0)
    targets = torch.arange(image.shape[0], device=image.device) + offset  # (B,)
    logits_per_image = scale * image @ all_text.T  # (B, N)
    logits_per_text = scale * text @ all_image.T  # (B, N)
    return (F.cross_entropy(logits_per_image.float(), targets, reduction="sum")
            + F.cross_entropy(logits_per_text.float(), targets, reduction="sum")) / 2


def siglip_loss_sum(image: torch.Tensor, all_text: torch.Tensor, logit_scale: torch.Tensor,
                    logit_bias: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """SigLIP's sigmoid loss summed over this rank's images, each against every text of the global batch."""
    logits = (logit_scale.exp() * image @ all_text.T + logit_bias).float()  # (B, N)
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum()


class ContrastiveObjective:
    """Image-text contrastive loss on a batch {"pixel_values": (B, 3, H, W), "input_ids": (B, T)}.

    Units: pairs. Metric: `acc`, how many images pick their own caption out of the global batch."""

    def __init__(self, kind: Literal["clip", "siglip"] = "clip", gather: bool = True):
        if kind not in ("clip", "siglip"):
            raise ConfigError(f"objective: {kind!r} is not clip or siglip")
        self.kind, self.gather = kind, gather
        self.name = kind

    def units(self, batch: dict) -> int:
        return int(batch["pixel_values"].shape[0])

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, text = model(batch["pixel_values"], batch["input_ids"])  # (B, D) each, unit length
        all_image, offset = gather_with_grad(image) if self.gather else (image, 0)
        all_text, _ = gather_with_grad(text) if self.gather else (text, 0)
        base = getattr(model, "module", model)
        base = getattr(base, "_orig_mod", base)
        if self.kind == "clip":
            loss = clip_loss_sum(image, text, all_image, all_text, base.logit_scale, offset)
        else:
            if base.logit_bias is None:
                raise ConfigError("objective siglip needs a model with a logit bias (model.logit_bias_init, "
                                  "for example -10)")
            loss = siglip_loss_sum(image, all_text, base.logit_scale, base.logit_bias, offset)
        with torch.no_grad():
            picks = (image @ all_text.T).argmax(dim=-1)
            correct = (picks == torch.arange(image.shape[0], device=image.device) + offset).sum().double()
        return loss, {"acc": correct}


# ---- the batch source ----------------------------------------------------------------------------
class PairBatches(SourceBase):
    """Preprocessed pairs in memory, drawn in a seeded order, epoch after epoch; resumable exactly.

    Each draw takes `world_size * B` pairs of the epoch's permutation and rank r keeps slice r, so rank
    r of N sees rows [r*B, (r+1)*B) of what one process with batch N*B sees."""

    def __init__(self, pixels: torch.Tensor, input_ids: torch.Tensor, seed: int, rank: int = 0, world_size: int = 1):
        self.pixels, self.input_ids = pixels, input_ids  # (N, 3, S, S), (N, T)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.pixels.shape[0], generator=g)

    def check_batch(self, batch_size: int) -> None:
        """A contrastive batch needs at least 2 pairs (with one there are no negatives: loss 0, nothing
        learnt) and at most the training pairs."""
        draw, n = batch_size * self.world_size, self.pixels.shape[0]
        if draw < 2:
            raise ConfigError(f"train.micro_batch_size {batch_size} x {self.world_size} processes: a contrastive "
                              "batch needs at least 2 pairs (the others are each pair's negatives)")
        if draw > n:
            raise ConfigError(f"a batch of {draw} pairs (micro_batch_size {batch_size} x {self.world_size} "
                              f"processes) is more than the {n} training pairs")

    def next_batch(self, batch_size: int) -> dict:
        self.check_batch(batch_size)
        draw = batch_size * self.world_size
        n = self.pixels.shape[0]
        if self.position + draw > n:  # the epoch's remainder is dropped: every batch is full
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        rows = self._order[self.position + self.rank * batch_size: self.position + (self.rank + 1) * batch_size]
        self.position += draw
        return {"pixel_values": self.pixels[rows], "input_ids": self.input_ids[rows]}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


# ---- the stage -----------------------------------------------------------------------------------
class ClipModelSpec(StrictModel):
    """A preset from foundry.model.clip.PRESETS plus any field overridden."""

    preset: str = Field("lesson", description="model size: test, lesson or small; the fields below override it")
    image_size: int | None = Field(None, gt=0, description="input image side in pixels")
    patch_size: int | None = Field(None, gt=0, description="ViT patch side in pixels")
    vision_width: int | None = Field(None, gt=0, description="image encoder hidden size")
    vision_layers: int | None = Field(None, gt=0, description="image encoder blocks")
    vision_heads: int | None = Field(None, gt=0, description="image encoder attention heads")
    text_width: int | None = Field(None, gt=0, description="text encoder hidden size")
    text_layers: int | None = Field(None, gt=0, description="text encoder blocks")
    text_heads: int | None = Field(None, gt=0, description="text encoder attention heads")
    text_len: int | None = Field(None, gt=2, description="caption context in tokens (start and end included)")
    embed_dim: int | None = Field(None, gt=0, description="size of the shared embedding space")
    hidden_act: Literal["quick_gelu", "gelu"] | None = Field(None, description="MLP activation")


class ClipStageConfig(StageConfig):
    data: str = Field(description="image-text dataset from 'foundry data images' (its train split is trained on)")
    val_data: str | None = Field(None, description="dataset whose val split gives val/loss (default: data)")
    init: str | None = Field(None, description="CLIP checkpoint or run directory to continue from (its tokenizer "
                             "is kept); unset: a fresh model from `model`")
    model: ClipModelSpec = Field(ClipModelSpec(), description="the model to train from scratch (below)")
    objective: Literal["clip", "siglip"] = Field("clip", description="clip: symmetric InfoNCE; siglip: sigmoid loss")
    vocab_size: int = Field(1024, ge=514, description="caption tokenizer size when training from scratch")
    replay: str | None = Field(None, description="continual pretraining: a dataset (the earlier domain) whose train "
                               "split is mixed into the training pairs, against forgetting")
    replay_fraction: float = Field(0.2, ge=0, lt=1, description="share of the training pairs drawn from `replay`")
    zero_shot: dict[str, str] = Field({}, description="name -> labelled dataset whose val split is classified "
                                      "zero-shot at every evaluation (logged as NAME/zero_shot_acc)")


def encode_pairs(pairset, tokenizer, image_size: int, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (N, 3, S, S), input_ids (N, T)) of a PairSet."""
    return torch.from_numpy(pairset.pixels(image_size)), tokenizer.encode_batch(pairset.captions, text_len)


def build_clip(spec: ClipModelSpec, tokenizer, objective: str, seed: int):
    from foundry.model.clip import Clip, config_from_preset

    overrides = {k: v for k, v in spec.model_dump().items() if k != "preset" and v is not None}
    overrides.update(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                     pad_id=tokenizer.pad_id)
    if objective == "siglip":  # SigLIP's initialisation (Zhai et al. 2023, section 3.3)
        overrides.update(logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
    config = config_from_preset(spec.preset, **overrides)
    torch.manual_seed(seed)  # the initial weights depend only on the seed
    return Clip(config)


def run_clip(cfg: ClipStageConfig, resume: bool = False, evaluators: dict | None = None) -> dict:
    """Train as `cfg` says; returns the final metrics. `evaluators`: name -> fn(tokenizer) -> fn(model) ->
    metrics, added to val/loss (the commands layer builds them from `cfg.zero_shot` with foundry.eval.clip)."""
    from foundry.checkpoints import load_start
    from foundry.data.images import load_pairs
    from foundry.data.clip_tokenizer import ClipTokenizer
    from foundry.model.clip import Clip
    from foundry.train.loop import loss_evaluator

    with StageRunner("clip", cfg, resume) as runner:
        env, tc = runner.env, cfg.train
        train_set = load_pairs(cfg.data, "train")
        val_set = load_pairs(cfg.val_data or cfg.data, "val")
        parents = {"dataset": str(Path(cfg.data).resolve())}
        if cfg.init is not None:
            start = load_start(cfg.init)
            if not isinstance(start.model, Clip):
                raise ConfigError(f"init {cfg.init}: not a CLIP checkpoint")
            model, tokenizer = start.model, start.tokenizer
            parents["checkpoint"] = str(start.path)
        else:
            tokenizer = ClipTokenizer.train(train_set.captions, cfg.vocab_size)
            model = build_clip(cfg.model, tokenizer, cfg.objective, tc.seed)
        if cfg.objective == "siglip" and model.logit_bias is None:
            raise ConfigError(f"objective siglip: the model from {cfg.init} has no logit bias (trained with clip)")
        size, length = model.config.image_size, model.config.text_len
        pixels, ids = encode_pairs(train_set, tokenizer, size, length)
        if cfg.replay is not None and cfg.replay_fraction > 0:  # a fixed, seeded sample of the earlier domain
            replay_set = load_pairs(cfg.replay, "train")
            take = min(len(replay_set), round(cfg.replay_fraction / (1 - cfg.replay_fraction) * len(train_set)))
            keep = torch.randperm(len(replay_set), generator=torch.Generator().manual_seed(tc.seed))[:take].tolist()
            replay_set.images, replay_set.captions, replay_set.labels = (
                [v[i] for i in keep] for v in (replay_set.images, replay_set.captions, replay_set.labels))
            replay_pixels, replay_ids = encode_pairs(replay_set, tokenizer, size, length)
            pixels, ids = torch.cat([pixels, replay_pixels]), torch.cat([ids, replay_ids])
            parents["replay"] = str(Path(cfg.replay).resolve())
            runner.log(f"foundry clip: replay: {take} pairs of {cfg.replay} mixed into {len(train_set)}")
        val_pixels, val_ids = encode_pairs(val_set, tokenizer, size, length)
        source = PairBatches(pixels, ids, tc.seed, env.rank, env.world_size)
        source.check_batch(tc.micro_batch_size)  # before the run directory exists: a corrected re-run is not refused
        manifests = {}
        for path in {cfg.data, cfg.val_data or cfg.data, *([cfg.replay] if cfg.replay else [])}:
            manifest = Path(path) / "manifest.json"
            if manifest.is_file():
                manifests[Path(path).name] = manifest
        out_dir = runner.open_run_dir(parents, manifests)

        objective = ContrastiveObjective(cfg.objective)
        val_objective = ContrastiveObjective(cfg.objective, gather=False)  # each rank scores the same val set
        eval_batch = min(tc.micro_batch_size, len(val_set))

        def val_batches():
            for i in range(min(tc.eval_batches, len(val_set) // eval_batch)):
                rows = slice(i * eval_batch, (i + 1) * eval_batch)
                yield {"pixel_values": val_pixels[rows], "input_ids": val_ids[rows]}

        evaluate_loss = loss_evaluator(val_objective, val_batches)

        def val(model) -> dict:  # the contrastive loss; ppl and bpb mean nothing here
            return {"loss": evaluate_loss(model)["loss"]}

        runner.log(f"foundry clip: {model.num_params() / 1e6:.2f}M parameters, {cfg.objective} loss, "
                   f"{pixels.shape[0]} train pairs, {len(val_set)} val pairs, images {size}px, captions "
                   f"{length} tokens, {tc.micro_batch_size * env.world_size} pairs per micro-batch -> {out_dir}")
        results = runner.train(model, objective, source, tokenizer, evaluators={"val": val, **{name: make(tokenizer) for name, make in (evaluators or {}).items()}},
                               best_metric="val/loss", eval_at_start=cfg.init is not None)
        results["params"] = model.num_params()
        return runner.finish(results, summary=["val/loss"] + [k for k in results if k.endswith("/zero_shot_acc")])
