"""The checkpoint format: writing, verifying, finding and reading checkpoint directories.

Checkpoints are self-contained directories, written atomically, verified by checksum when read.

Layout (docs/ARCHITECTURE.md): `model.safetensors`, `model_config.json`, `tokenizer.json` +
`tokenizer_config.json`, optional `train_state.pt`, and `meta.json` last (step, stage, val_loss and the
sha256 of every other file). The directory is built as `NAME.tmp/`, every file fsynced, then renamed
into place, so a kill at any moment leaves either the previous checkpoint or the complete new one.

Never unpickle: weights are safetensors and `train_state.pt` holds only tensors and plain Python
values (RNG states are converted to tensors/lists), so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from foundry.checkpoints.devices import load_model_state, unwrap
from foundry.checkpoints.registry import config_from_dict
from foundry.errors import CheckpointError, ConfigError
from foundry.utils.io import fsync_dir, sha256_file

MODEL_FILE, CONFIG_FILE, STATE_FILE, META_FILE = "model.safetensors", "model_config.json", "train_state.pt", "meta.json"


def _warn(message: str) -> None:
    print(f"foundry: warning: {message}", file=sys.stderr)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def model_state_for_saving(model: torch.nn.Module, full_state: dict | None = None) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with HF names; a tied lm_head is left out (it is the embedding).

    `full_state`: the whole state dict already gathered (`distributed.full_model_state`, under FSDP)."""
    model = unwrap(model)
    state = {}
    for name, tensor in (full_state if full_state is not None else model.state_dict()).items():
        if hasattr(tensor, "full_tensor"):  # FSDP2 DTensor shard -> the whole tensor
            tensor = tensor.full_tensor()
        state[name] = tensor.detach().to("cpu").contiguous()
    if getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    for key in getattr(model, "tied_weights", {}):  # the encoder's MLM decoder: stored once, as its source
        state.pop(key, None)
    return state


def save_checkpoint(path, model, tokenizer, train_state: dict | None = None, meta: dict | None = None,
                    model_state: dict | None = None, directories: dict | None = None) -> Path:
    """Write a checkpoint directory at `path` (replacing an existing one only once the new one is complete).

    `model_state`: a gathered full state dict to write instead of `model.state_dict()` (FSDP);
    `directories`: {name: staged directory} moved inside (the DCP optimiser shards), checksummed too."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():  # left by a killed writer; never a valid checkpoint
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file(model_state_for_saving(model, model_state), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(unwrap(model).config.to_dict(), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        for name, staged in (directories or {}).items():
            os.replace(staged, tmp / name)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        for name in files:
            _fsync_file(tmp / name)
        record = {"step": None, "stage": None, "val_loss": None, **(meta or {}),
                  "sha256": {name: sha256_file(tmp / name) for name in files}}
        (tmp / META_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        _fsync_file(tmp / META_FILE)
        fsync_dir(tmp)
        if path.exists():  # e.g. `best`: move the old one aside first, so one of them always exists
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        old = path.with_name(path.name + ".old")
        if old.is_dir() and not path.exists():  # failed between the two renames: put the previous one back
            os.replace(old, path)
        # a full disk surfaces as OSError, safetensors' SafetensorError or torch.save's RuntimeError
        if isinstance(exc, (OSError, RuntimeError, SafetensorError)):
            reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: checkpoint write failed ({reason}); the previous checkpoint is "
                                  "intact") from exc
        raise
    return path


def remove_checkpoint(path) -> None:
    """Delete a checkpoint so that no moment leaves a half-deleted one under its name: it is renamed out of
    the `step_*` names first (a kill during the delete leaves only `NAME.deleting`, which nothing reads)."""
    path = Path(path)
    doomed = path.with_name(path.name + ".deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def verify_checkpoint(path) -> str | None:
    """None if `path` is a complete checkpoint whose files match meta.json's checksums, else why not."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        return "no meta.json (incomplete write)"
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "meta.json is not valid JSON"
    for name, digest in meta.get("sha256", {}).items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if sha256_file(path / name) != digest:
            return f"{name} does not match its checksum in meta.json"
    if not (path / MODEL_FILE).is_file():
        return f"{MODEL_FILE} is missing"
    return None


def read_meta(path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def step_checkpoints(run_dir) -> list[Path]:
    """`RUN/checkpoints/step_*` directories, oldest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir) -> Path | None:
    """Newest `RUN/checkpoints/step_*` whose checksums hold; damaged ones are skipped with a warning."""
    for path in reversed(step_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        _warn(f"{path}: skipping damaged checkpoint ({problem})")
    return None


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory, or a run directory (its `best`, else its latest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / MODEL_FILE).is_file() or (path / META_FILE).is_file():
        return path
    best = path / "checkpoints" / "best"
    if best.is_dir() and verify_checkpoint(best) is None:
        return best
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: not a checkpoint and holds no valid checkpoints/ (expected {MODEL_FILE})")
    return latest


def load_model_config(path):
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; not a foundry checkpoint")
    try:
        return config_from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{file}: not a valid model config ({exc})") from None


def load_weights(model: torch.nn.Module, path) -> None:
    """Load `path`'s weights into `model`; a different model shape is a one-line CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    model = unwrap(model)
    saved = load_model_config(path).to_dict()
    mine = model.config.to_dict()
    diffs = [f"{k} {saved.get(k)} vs {mine[k]}" for k in mine if saved.get(k) != mine[k]]
    if diffs:
        raise CheckpointError(f"{path}: checkpoint model shape differs from the recipe ({', '.join(diffs)})")
    problem = verify_checkpoint(path) if (path / META_FILE).is_file() else None
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint ({problem})")
    try:
        state = load_file(str(path / MODEL_FILE))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path / MODEL_FILE}: cannot read weights ({exc})") from None
    if getattr(model.config, "tie_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for key, source in getattr(model, "tied_weights", {}).items():
        if source in state:
            state[key] = state[source]
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not fit the model "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        name = wrong[0]
        raise CheckpointError(f"{path / MODEL_FILE}: tensor {name} has shape {tuple(state[name].shape)} but "
                              f"{CONFIG_FILE} implies {tuple(expected[name].shape)} ({len(wrong)} tensors differ)")
    load_model_state(model, state)  # under FSDP each rank keeps its shard


def load_train_state(path) -> dict:
    """`train_state.pt` of a checkpoint (tensors and plain values only; never unpickles objects)."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; this checkpoint holds weights only and cannot resume training")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read training state ({str(exc).splitlines()[0]})") from None


def weights_fingerprint(path) -> str:
    """sha256 naming a starting model's weights: from meta.json when it records them, else of the files."""
    path = Path(path)
    if path.is_file():  # a .gguf starting model: the file is the weights
        return sha256_file(path)
    meta = path / META_FILE
    if meta.is_file():
        recorded = json.loads(meta.read_text()).get("sha256", {}).get(MODEL_FILE)
        if recorded:
            return recorded
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*config.json"))
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("\n".join(f"{f.name} {sha256_file(f)}" for f in files).encode()).hexdigest()
