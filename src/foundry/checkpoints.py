"""The checkpoint store: saving, loading, verifying and finding checkpoints, and picking the device.

It sits at library level, beside the model, so that evaluation, serving and Hugging Face import/export
read a model without importing training (the layering is checked by tests/test_layering.py).

Checkpoints are self-contained directories, written atomically, verified by checksum when read.

Layout (docs/ARCHITECTURE.md): `model.safetensors`, `model_config.json`, `tokenizer.json` +
`tokenizer_config.json`, optional `train_state.pt`, and `meta.json` last (step, stage, val_loss and the
sha256 of every other file). The directory is built as `NAME.tmp/`, every file fsynced, then renamed
into place, so a kill at any moment leaves either the previous checkpoint or the complete new one.

Never unpickle: weights are safetensors and `train_state.pt` holds only tensors and plain Python
values (RNG states are converted to tensors/lists), so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundry.errors import CheckpointError, ConfigError
from foundry.utils.io import fsync_dir, sha256_file

MODEL_FILE, CONFIG_FILE, STATE_FILE, META_FILE = "model.safetensors", "model_config.json", "train_state.pt", "meta.json"


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU when there is one, else the CPU; `cuda` means this rank's GPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Llama inside torch.compile / DDP wrappers (an FSDP2 model is the Llama itself)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module) and hasattr(model, "no_sync"):
            model = model.module
        else:
            return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is sharded by FSDP2 (each rank then holds a slice of every tensor)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict that every rank holds; under FSDP each rank keeps its shard."""
    base = unwrap(model)
    if is_sharded(base):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(base, state, options=StateDictOptions(full_state_dict=True))
    else:
        base.load_state_dict(state)


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


def config_from_dict(data: dict):
    """A model config from model_config.json: the decoder's, the encoder's (`architecture: bert`), a
    sequence classifier's (`architecture: classifier`) or an image-text model's (`architecture: clip`)."""
    from foundry.model.llama import LlamaConfig

    kind = data.get("architecture") if isinstance(data, dict) else None
    if kind == "bert":
        from foundry.model.encoder import EncoderConfig

        return EncoderConfig.from_dict(data)
    if kind == "classifier":
        from foundry.model.classifier import ClassifierConfig

        return ClassifierConfig.from_dict(data)
    if kind == "clip":
        from foundry.model.clip import ClipConfig

        return ClipConfig.from_dict(data)
    return LlamaConfig.from_dict(data)


def model_from_config(config) -> torch.nn.Module:
    """The module a config describes (weights freshly initialised)."""
    from foundry.model.llama import Llama, LlamaConfig

    if isinstance(config, LlamaConfig):
        return Llama(config)
    from foundry.model.encoder import EncoderConfig

    if isinstance(config, EncoderConfig):
        from foundry.model.encoder import Encoder

        return Encoder(config)
    if getattr(config, "architecture", None) == "clip":
        from foundry.model.clip import Clip

        return Clip(config)
    from foundry.model.classifier import Classifier

    return Classifier(config)


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
        from foundry.data.tokenizer import ClipTokenizer

        load_weights(model, path)
        return model.to(device).eval(), ClipTokenizer.load(path)
    load_weights(model, path)
    model.to(device).eval()
    return model, Tokenizer.load(path)


def load_train_state(path) -> dict:
    """`train_state.pt` of a checkpoint (tensors and plain values only; never unpickles objects)."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; this checkpoint holds weights only and cannot resume training")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read training state ({str(exc).splitlines()[0]})") from None


# ---- RNG states as tensors and plain values (weights_only-safe) ----------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the one door for a stage's starting model -----------------------------------------------------
@dataclass
class StartingModel:
    model: torch.nn.Module
    tokenizer: Any
    path: Path  # the checkpoint directory actually read (a run directory resolved), or the HF directory
    kind: str  # "foundry" | "huggingface" | "gguf"


def import_hf(hf_dir, max_seq_len: int | None = None):
    """A local transformers checkpoint directory (or a .gguf file) -> (Llama in float32, Tokenizer): the
    weights through `foundry.model.hf`, the tokenizer with its special tokens mapped to foundry's roles, its own
    chat template and the model's stop tokens. A base model without a template gets foundry's, whose markers
    are added to its vocabulary as special tokens (the embedding grown, new rows the mean of the others)."""
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.hf import DEFAULT_MAX_SEQ_LEN, import_hf_model
    from foundry.utils.io import read_json

    if str(hf_dir).endswith(".gguf"):  # a llama.cpp file: converted to a transformers directory, then as one
        return _import_gguf(Path(hf_dir), max_seq_len)
    hf_dir = Path(hf_dir)
    config_file = hf_dir / "config.json"
    if config_file.is_file() and isinstance(cfg := read_json(config_file), dict) and cfg.get("model_type") == "bert":
        return _import_bert(hf_dir, cfg)
    model, text = import_hf_model(hf_dir, max_seq_len or DEFAULT_MAX_SEQ_LEN)
    tokenizer = Tokenizer.from_hf_directory(hf_dir, read_json(config_file), text)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: tokenizer has {tokenizer.vocab_size} tokens but "
                              f"the model's embedding only {model.config.vocab_size}")
    if tokenizer.chat_template.name == "foundry":  # a base model: foundry's template, with real marker tokens
        tokenizer = use_foundry_template(model, tokenizer)
    return model, tokenizer


def use_foundry_template(model, tokenizer):
    """`tokenizer` with foundry's chat template; markers its vocabulary lacks are added as special tokens and
    `model`'s embedding grows to hold them (new rows the mean of the trained ones)."""
    from foundry.model.vocab import add_token_rows

    trained = tokenizer.vocab_size
    tokenizer = tokenizer.with_foundry_template()
    added = [tokenizer.token_to_id(t) for t in tokenizer.added_tokens]
    add_token_rows(model, [i for i in added if i is not None], trained)
    return tokenizer


def choose_chat_template(model, tokenizer, choice: str):
    """A recipe's `chat_template`: "model" (the tokenizer's own, the default), "foundry", or a .jinja file."""
    from foundry.errors import ConfigError

    if choice == "model":
        return tokenizer
    if choice == "foundry":
        return use_foundry_template(model, tokenizer)
    path = Path(choice)
    if path.suffix != ".jinja" or not path.is_file():
        raise ConfigError(f"chat_template: '{choice}' is not 'model', 'foundry' or an existing .jinja file")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return tokenizer.with_chat_template(source, str(path))


def _import_gguf(path: Path, max_seq_len: int | None):
    """A .gguf file -> (Llama, Tokenizer) through a temporary Hugging Face directory (`foundry.model.gguf`)."""
    import tempfile

    from foundry.model.gguf import gguf_to_hf

    with tempfile.TemporaryDirectory(prefix="foundry-gguf-") as tmp:
        hf_dir = gguf_to_hf(path, Path(tmp) / "hf")
        try:
            model, tokenizer = import_hf(hf_dir, max_seq_len)
        except CheckpointError as exc:  # name the user's file, not the temporary directory
            raise CheckpointError(f"{path}: {str(exc).replace(str(hf_dir) + '/', '')}") from None
    if tokenizer.chat_template.name != "foundry":  # the template came from the file's tokenizer.chat_template
        tokenizer = tokenizer.with_chat_template(tokenizer.chat_template.source, f"{path} (tokenizer.chat_template)")
    return model, tokenizer


def load_tokenizer(path):
    """A model's tokenizer without its weights: a tokenizer directory or tokenizer.json, a foundry checkpoint or
    run directory (its best checkpoint), or a Hugging Face model directory (its own special tokens mapped to
    foundry's roles, as `import_hf` maps them, so the hash is the one the imported checkpoint keeps)."""
    from foundry.data.tokenizer import Tokenizer
    from foundry.errors import DataError
    from foundry.utils.io import read_json

    path = Path(path)
    if path.is_dir() and not (path / "tokenizer.json").is_file() and (path / "checkpoints").is_dir():
        path = resolve_checkpoint(path)
    hf_config = path / "config.json" if path.is_dir() else None
    try:
        return Tokenizer.load(path)
    except DataError:
        if hf_config is None or not hf_config.is_file() or not (path / "tokenizer.json").is_file():
            raise
    cfg = read_json(hf_config)
    text = (path / "tokenizer.json").read_text(encoding="utf-8")
    if isinstance(cfg, dict) and cfg.get("model_type") == "bert":
        from foundry.model.encoder_hf import bert_special_tokens

        return Tokenizer.from_foreign(text, bert_special_tokens(path, text))
    tokenizer = Tokenizer.from_hf_directory(path, cfg if isinstance(cfg, dict) else {}, text)
    # a base model's tokenizer gains foundry's markers on import: the same here, so the hashes agree
    return tokenizer.with_foundry_template() if tokenizer.chat_template.name == "foundry" else tokenizer


def _import_bert(hf_dir: Path, cfg: dict):
    """A BertForMaskedLM directory -> (Encoder, Tokenizer)."""
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.encoder_hf import bert_special_tokens, import_bert_model
    from foundry.model.hf import load_hf_state

    tok_path = hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path}: missing; only fast tokenizers (tokenizer.json) can be imported")
    text = tok_path.read_text(encoding="utf-8")
    model = import_bert_model(hf_dir, load_hf_state(hf_dir), text)
    tokenizer = Tokenizer.from_foreign(text, bert_special_tokens(hf_dir, text))
    return model, tokenizer


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


def weights_fingerprint(path) -> str:
    """sha256 naming a starting model's weights: from meta.json when it records them, else of the files."""
    import hashlib

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
