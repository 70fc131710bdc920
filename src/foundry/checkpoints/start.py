"""The one door for a model to use: `load_model` (a foundry checkpoint or run directory, in eval mode) and
`load_start` (what a stage starts from: also a Hugging Face directory or a .gguf file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from foundry.checkpoints.files import CONFIG_FILE, META_FILE, load_model_config, load_weights, resolve_checkpoint
from foundry.checkpoints.imports import import_hf
from foundry.checkpoints.registry import model_from_config
from foundry.errors import CheckpointError


def refuse_non_text(config, path, verb: str | None) -> None:
    """A one-line CheckpointError when `verb` (a command that reads and writes text) is given an
    image-text (CLIP) checkpoint, before its weights are read; `verb` None: any model is fine."""
    if verb is not None and getattr(config, "architecture", None) == "clip":
        raise CheckpointError(f"{path} is an image-text (CLIP) checkpoint; {verb} needs a language model")


def require_language_model(path, verb: str) -> None:
    """Check, from its config alone, that the checkpoint at `path` can serve `verb` (see refuse_non_text)."""
    resolved = resolve_checkpoint(path)
    refuse_non_text(load_model_config(resolved), path, verb)


def load_model(path, device="cpu", verb: str | None = None):
    """(model, tokenizer) from a checkpoint directory or a run directory, in eval mode on `device`.
    `verb`: the command asking, which needs a language model (a CLIP checkpoint is refused in one line)."""
    from foundry.data.tokenizer import Tokenizer

    given, path = path, resolve_checkpoint(path)
    config = load_model_config(path)
    refuse_non_text(config, given, verb)
    model = model_from_config(config)
    if getattr(model.config, "architecture", None) == "clip":  # an image-text model and its caption tokenizer
        from foundry.data.clip_tokenizer import ClipTokenizer

        load_weights(model, path)
        return model.to(device).eval(), ClipTokenizer.load(path)
    load_weights(model, path)
    model.to(device).eval()
    return model, Tokenizer.load(path)


@dataclass
class StartingModel:
    model: torch.nn.Module
    tokenizer: Any
    path: Path  # the checkpoint directory actually read (a run directory resolved), or the HF directory
    kind: str  # "foundry" | "huggingface" | "gguf"


def load_start(path, device="cpu", verb: str | None = None) -> StartingModel:
    """The model a stage starts from: a foundry checkpoint, a run directory (its `best`, else its latest
    valid checkpoint), an imported Hugging Face directory or a .gguf file. Anything else is a one-line
    CheckpointError, and so is a CLIP checkpoint when `verb` (which needs a language model) is given."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = import_hf(path)
        return StartingModel(model.to(device), tokenizer, path, "gguf")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint or run directory (or a .gguf file), not a file")
    if (path / CONFIG_FILE).is_file() or (path / META_FILE).is_file() or (path / "checkpoints").is_dir():
        resolved = resolve_checkpoint(path)
        model, tokenizer = load_model(resolved, device=device, verb=verb)
        return StartingModel(model, tokenizer, resolved, "foundry")
    if (path / "config.json").is_file():
        model, tokenizer = import_hf(path)
        return StartingModel(model.to(device), tokenizer, path, "huggingface")
    raise CheckpointError(f"{path}: not a foundry checkpoint (no model_config.json), run directory (no "
                          "checkpoints/) or Hugging Face checkpoint (no config.json)")
