"""Typed configs: pydantic models loaded from YAML recipes and overridden on the command line.

Overrides are `dotted.key=value` words (`train.lr=1e-3 model.preset=tiny`); values are parsed as YAML
scalars, so `true`, `3`, `1e-3` and `[a, b]` get their natural types. Unknown keys and wrong types are
errors that name the recipe file and the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundry.errors import ConfigError, FoundryError

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TrainConfig(StrictModel):
    """What the one training loop needs, whatever the stage (pretrain, continue, sft, dpo)."""

    seed: int = Field(1337, description="seeds the initial weights, the data order and dropout")
    max_steps: int = Field(1000, gt=0, description="optimiser steps to train for")
    max_seconds: float | None = Field(None, gt=0, description="stop (and checkpoint) after this wall time")
    micro_batch_size: int = Field(16, gt=0, description="sequences per micro-batch per rank")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimiser step per rank")
    global_batch_size: int | None = Field(None, gt=0, description="sequences per optimiser step over all ranks; "
                                          "if set, grad_accum_steps = it / (micro_batch_size * world size)")
    block_size: int = Field(256, gt=1, description="tokens per training sequence")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (after warm-up)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        "cosine", description="lr schedule after warm-up: cosine decay, warmup-stable-decay, or constant")
    warmup_steps: int = Field(50, ge=0, description="steps of linear warm-up from 0 to lr")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on norms, biases, embeddings)")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw, or muon for the attention and MLP matrices (AdamW for the rest)")
    muon_momentum: float = Field(0.95, gt=0, lt=1, description="Muon's momentum")
    muon_ns_steps: int = Field(5, ge=1, le=10, description="Muon's Newton-Schulz iterations per step")
    beta1: float = Field(0.9, description="AdamW beta1")
    beta2: float = Field(0.95, description="AdamW beta2")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (null: no clipping)")
    eval_every: int = Field(100, gt=0, description="evaluate every this many steps (and at the end)")
    eval_batches: int = Field(20, gt=0, description="batches per evaluation")
    early_stop_patience: int | None = Field(
        None, ge=1, description="stop once this many evaluations in a row bring no new best of the validation "
        "metric (checkpoints/best keeps the best); unset: train to the step or time budget")
    log_every: int = Field(10, gt=0, description="write a metrics record every this many steps")
    checkpoint_every: int = Field(200, gt=0, description="save a resumable checkpoint every this many steps")
    keep_last: int = Field(2, ge=1, description="checkpoints kept besides the best")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, float32 on CPU")
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(
        False, description="recompute each transformer block's activations in backward instead of keeping them "
        "(about one more forward of compute for a fraction of the activation memory)")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: all cores)")
    max_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row before rolling back")
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="lr scale applied at each rollback")
    distributed: Literal["auto", "none", "ddp", "fsdp"] = Field(
        "auto", description="under torchrun: auto (= ddp), ddp or fsdp; none refuses several processes")
    progress: bool = Field(True, description="show a progress bar")
    profile_steps: int = Field(0, ge=0, description="profile this many steps after 3 warm-up steps with "
                               "torch.profiler (tables and a trace in RUN/profile/); 0: off")


def _parse_override(word: str) -> tuple[list[str], Any]:
    if "=" not in word or word.startswith("="):
        raise ConfigError(f"override '{word}': expected key=value, for example train.lr=1e-3")
    key, raw = word.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        node = tree.get(k)
        if not isinstance(node, dict):
            node = tree[k] = {}
        tree = node
    tree[keys[-1]] = value


def _known_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in cls.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def load_yaml_mapping(path: Path, error: type[FoundryError] = ConfigError,
                      expected: str = "a recipe must be a mapping of keys to values") -> dict:
    """A YAML file that must hold a mapping (empty file: {}); errors are `error`s naming file and line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: {expected}, got {type(data).__name__}")
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found")
    return load_yaml_mapping(path)


def config_from_dict(cls: type[C], data: dict, source: str = "config") -> C:
    """Validate `data` as `cls`; the first problem becomes a one-line ConfigError naming `source`."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A typo shows up as an unknown key *and* a missing one; the unknown key is the useful half.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            raise ConfigError(f"{source}: missing required key '{key}'") from None
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, _known_keys(cls), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
        raise ConfigError(f"{source}: '{key}': {err['msg']} (got {err.get('input')!r})") from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> C:
    """Recipe YAML (optional) + `key=value` overrides -> a validated `cls`."""
    data: dict = dict(base or {})
    source = "command line"
    if path is not None:
        data.update(read_yaml(path))
        source = str(path)
    for word in overrides or []:
        keys, value = _parse_override(word)
        _set_dotted(data, keys, value)
    return config_from_dict(cls, data, source)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
