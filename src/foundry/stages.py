"""The stage registry: every training stage foundry runs, by the name its `run.json` records, in one table.

Each entry says what the rest of the package needs to know about a stage, so no list of stage names is
typed anywhere else:
- `name`: what `StageRunner(name)` writes as run.json's `stage` (and each checkpoint's meta);
- `verb`: the `foundry VERB` that runs it (None: reached through another verb; MLM is `foundry pretrain` with
  `objective: mlm`);
- `config` and `run`: the typed entry point, `run(config, resume=...)`, named as "module:attribute" and
  imported only when asked for (this module sits in the base layer: it imports nothing of foundry);
- `kind`: pretraining, post-training or fine-tuning;
- `card`: what the model card says the stage did;
- `trains` (leaves a model the card describes), `from_scratch` (starts from random weights: the root of a
  lineage), `sets_cutoff` (its data counts towards the knowledge cutoff).

Old names: a run.json written before a stage had its own name still reads as that stage (`spec_for_record`):
an MLM run recorded itself as "pretrain" with `config.objective: mlm`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    verb: str | None
    config: str
    run: str
    kind: str
    card: str
    trains: bool = True
    from_scratch: bool = False
    sets_cutoff: bool = False

    def config_class(self):
        return _resolve(self.config)

    def run_function(self):
        return _resolve(self.run)


def _resolve(reference: str):
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


STAGES: dict[str, StageSpec] = {spec.name: spec for spec in [
    StageSpec("pretrain", "pretrain", "foundry.train.pretrain:PretrainConfig", "foundry.train.pretrain:run_pretrain",
              "pretraining", "pretrained from random initialisation on next-token prediction",
              from_scratch=True, sets_cutoff=True),
    StageSpec("mlm", None, "foundry.train.pretrain:PretrainConfig", "foundry.train.pretrain:run_pretrain",
              "pretraining", "pretrained as a masked-language-model encoder (BERT) from random initialisation",
              from_scratch=True, sets_cutoff=True),
    StageSpec("continue", "continue", "foundry.train.continual:ContinueConfig", "foundry.train.continual:run_continue",
              "pretraining", "continually pretrained on a data mixture, with replay", sets_cutoff=True),
    StageSpec("sft", "sft", "foundry.train.sft:SFTConfig", "foundry.train.sft:run_sft",
              "post-training", "instruction-tuned (SFT) on chat data, the loss on assistant tokens"),
    StageSpec("dpo", "dpo", "foundry.train.dpo:DPOConfig", "foundry.train.dpo:run_dpo",
              "post-training", "preference-optimised (DPO family) against a frozen reference"),
    StageSpec("rl", "rl", "foundry.train.grpo:GRPOConfig", "foundry.train.grpo:run_grpo",
              "post-training", "reinforced with verifiable rewards (GRPO)"),
    StageSpec("clip", "clip", "foundry.train.clip:ClipStageConfig", "foundry.commands.clip:run_clip_stage",
              "pretraining", "trained contrastively on image-text pairs (CLIP / SigLIP)"),
    StageSpec("finetune", "finetune", "foundry.train.finetune:FinetuneConfig", "foundry.train.finetune:run_finetune",
              "fine-tuning", "fine-tuned as a sequence classifier on labelled examples"),
    StageSpec("transfer", "transfer", "foundry.train.transfer:TransferConfig", "foundry.train.transfer:run_transfer",
              "fine-tuning", "fine-tuned from pretrained and random starts at growing label counts (a "
              "label-efficiency curve)", trains=False),
]}

TRAINING_VERBS: dict[str, StageSpec] = {spec.verb: spec for spec in STAGES.values() if spec.verb}


def spec_for_record(record: dict) -> StageSpec | None:
    """The stage a run.json describes (old names mapped: an MLM run once called itself "pretrain"); None for
    records of other verbs (data, eval, compare, ...)."""
    name = record.get("stage") if isinstance(record, dict) else None
    config = record.get("config") if isinstance(record, dict) and isinstance(record.get("config"), dict) else {}
    if name == "pretrain" and config.get("objective") == "mlm":
        return STAGES["mlm"]
    return STAGES.get(name) if isinstance(name, str) else None
