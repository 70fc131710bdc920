"""Byte-level BPE tokenizer: training, the `Tokenizer` wrapper every stage uses, `foundry tokenizer train`.

Design choices:
- Byte-level BPE (GPT-2 style, Radford et al. 2019) with Hugging Face `tokenizers`: every byte string is
  representable, so decode(encode(text)) == text exactly, non-ASCII included (no unknown token).
- No normaliser: cleaning (NFC, control characters) happens once in `foundry data prepare`; a normaliser
  here would make round-trips inexact for text that did not go through prepare.
- Seven special tokens with fixed ids 0..6 (docs/ARCHITECTURE.md), added before any merge so every
  foundry tokenizer agrees on them whatever its vocabulary size.
- `sha256` is the hash of the exact `tokenizer.json` bytes; `save` writes those same bytes back, so a
  tokenizer copied into a checkpoint keeps its identity and token shards can be checked against it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from foundry.data.chat import CHAT_TEMPLATE, END, FOUNDRY_MARKERS
from foundry.errors import DataError

SPECIAL_TOKENS = ("<|endoftext|>", "<|bos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}


class Tokenizer:
    """A trained byte-level BPE tokenizer with foundry's special tokens.

    `encode` adds no special tokens; callers place `<|endoftext|>` and chat markers themselves.
    """

    def __init__(self, hf_tokenizer, json_text: str | None = None, special_tokens: dict[str, str] | None = None,
                 chat_template: str | None = None, template_name: str = "foundry",
                 template_tokens: dict | None = None, stop_tokens: list[str] | None = None,
                 added_tokens: list[str] | None = None):
        self._hf = hf_tokenizer
        # The exact serialised form; its hash identifies the tokenizer across checkpoints and shards.
        self._json = json_text if json_text is not None else hf_tokenizer.to_str()
        self.sha256 = hashlib.sha256(self._json.encode("utf-8")).hexdigest()
        # An imported (foreign) tokenizer keeps its own special tokens, named by role ("eos", "bos", "pad",
        # "eot", optionally "system"/"user"/"assistant") and stored as `foundry_special_tokens` in its
        # tokenizer_config.json (see foundry/model/hf.py). None: foundry's seven tokens with ids 0..6.
        self.special_tokens = dict(special_tokens) if special_tokens else None
        # Tokens foundry added to an imported vocabulary (its chat markers), recorded for the model card.
        self.added_tokens = list(added_tokens or [])
        if self.special_tokens is not None:
            ids = {role: hf_tokenizer.token_to_id(tok) for role, tok in self.special_tokens.items()}
            if ids.get("eos") is None:
                raise DataError(f"tokenizer: foreign special tokens {self.special_tokens} name no end-of-text "
                                "token ('eos') that is in the vocabulary")
            # A role the foreign vocabulary lacks falls back to end-of-text (as GPT-2 uses it for all three).
            self.eos_id = ids["eos"]
            self.bos_id, self.pad_id, self.eot_id = (self.eos_id if ids.get(r) is None else ids[r]
                                                     for r in ("bos", "pad", "eot"))
        else:
            ids = [hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
            if ids != list(range(len(SPECIAL_TOKENS))):
                raise DataError(f"tokenizer: special tokens {list(SPECIAL_TOKENS)} must have ids 0..6, got {ids}; "
                                "train it with 'foundry tokenizer train'")
            self.eos_id, self.bos_id, self.pad_id = ids[0], ids[1], ids[2]
            self.eot_id = ids[6]
            template_tokens = template_tokens or {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>",
                                                  "pad_token": "<|pad|>"}
        # Generation stops at end of text, end of turn, and every stop token the model names
        # (generation_config.json's eos_token_id list: Llama 3's <|eom_id|> and <|eot_id|>, ...).
        self.stop_tokens = [t for t in stop_tokens or [] if hf_tokenizer.token_to_id(t) is not None]
        stops = [self.eos_id, self.eot_id] + [hf_tokenizer.token_to_id(t) for t in self.stop_tokens]
        self.stop_ids = tuple(dict.fromkeys(stops))
        self.chat_template = self._template(chat_template or CHAT_TEMPLATE, template_name, template_tokens or {})

    def _template(self, source: str, name: str, tokens: dict):
        from foundry.data.chat_template import ChatTemplate

        ends = tuple(dict.fromkeys(self._hf.id_to_token(i) for i in (self.eot_id, *self.stop_ids)))
        return ChatTemplate(source, name, dict(tokens), tuple(t for t in ends if t))

    def _derive(self, json_text: str | None = None, chat_template: str | None = None,
                template_name: str | None = None, special_tokens: dict | None = None,
                added_tokens: list[str] | None = None) -> "Tokenizer":
        """A copy with some parts replaced (a new vocabulary text, template or special tokens)."""
        from tokenizers import Tokenizer as HFTokenizer

        text = json_text if json_text is not None else self._json
        return Tokenizer(HFTokenizer.from_str(text), text,
                         special_tokens=special_tokens if special_tokens is not None else self.special_tokens,
                         chat_template=chat_template or self.chat_template.source,
                         template_name=template_name or self.chat_template.name,
                         template_tokens=self.chat_template.tokens, stop_tokens=self.stop_tokens,
                         added_tokens=added_tokens if added_tokens is not None else self.added_tokens)

    def with_chat_template(self, source: str, name: str) -> "Tokenizer":
        """The same vocabulary with another chat template (a recipe's `chat_template: PATH.jinja`)."""
        return self._derive(chat_template=source, template_name=name)

    def with_foundry_template(self) -> "Tokenizer":
        """foundry's chat template, its markers added as special tokens where the vocabulary lacks them (ids
        after the last one); the caller grows the model's embedding to `vocab_size`."""
        if self.special_tokens is None:  # foundry's own vocabulary has the markers already
            return self._derive(chat_template=CHAT_TEMPLATE, template_name="foundry")
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        missing = [t for t in FOUNDRY_MARKERS if self._hf.token_to_id(t) is None]
        hf = HFTokenizer.from_str(self._json)
        if missing:
            hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        roles = {**self.special_tokens, **ROLE_TOKENS, "eot": END}
        return self._derive(json_text=hf.to_str() if missing else None, chat_template=CHAT_TEMPLATE,
                            template_name="foundry", special_tokens=roles, added_tokens=self.added_tokens + missing)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a directory holding `tokenizer.json`, or from the file itself."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"{file}: tokenizer not found (expected a directory with tokenizer.json, "
                            "made by 'foundry tokenizer train')")
        try:
            text = file.read_text(encoding="utf-8")
            hf = HFTokenizer.from_str(text)
        except (UnicodeDecodeError, Exception) as exc:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{file}: not a valid tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
        config_path = file.parent / "tokenizer_config.json"
        config: dict = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{config_path}: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise DataError(f"{config_path}: expected a JSON object")
        special = config.get("foundry_special_tokens")
        if special is not None and not (isinstance(special, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in special.items())):
            raise DataError(f"{config_path}: 'foundry_special_tokens' must map roles (eos, bos, pad, eot) to tokens")
        from foundry.data.chat_template import special_token_strings
        from foundry.utils.hf_files import chat_template_of

        template = chat_template_of(file.parent, config)
        try:
            return cls(hf, text, special_tokens=special, chat_template=template,
                       template_name=str(config_path) if template else "foundry",
                       template_tokens=special_token_strings(config),
                       stop_tokens=_string_list(config.get("foundry_stop_tokens")),
                       added_tokens=_string_list(config.get("foundry_added_tokens")))
        except DataError as exc:  # wrong special tokens: say which file
            raise DataError(f"{file}: {str(exc).removeprefix('tokenizer: ')}") from None

    @classmethod
    def from_foreign(cls, json_text: str, special_tokens: dict[str, str], chat_template: str | None = None,
                     template_name: str = "foundry", template_tokens: dict | None = None,
                     stop_tokens: list[str] | None = None) -> "Tokenizer":
        """An imported Hugging Face tokenizer.json, used as is, with its own special tokens by role, its own
        chat template (None: a base model, which gets foundry's through `with_foundry_template`) and the
        model's stop tokens."""
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(json_text), json_text, special_tokens=special_tokens,
                   chat_template=chat_template, template_name=template_name, template_tokens=template_tokens,
                   stop_tokens=stop_tokens)

    @classmethod
    def from_hf_directory(cls, hf_dir: str | Path, model_config: dict, json_text: str) -> "Tokenizer":
        """The tokenizer of an imported Hugging Face model directory (its `tokenizer.json` text given), with its
        own special tokens, chat template and stop tokens (`foundry.data.hf_tokenizer`)."""
        from tokenizers import Tokenizer as HFTokenizer

        from foundry.data.hf_tokenizer import foreign_tokenizer_settings

        file = Path(hf_dir) / "tokenizer.json"
        try:
            hf = HFTokenizer.from_str(json_text)
        except Exception as exc:  # tokenizers' bare Exception on malformed JSON
            raise DataError(f"{file}: not a valid tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
        return cls(hf, json_text, **foreign_tokenizer_settings(hf_dir, model_config, json_text, hf))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              length: int | None = None, show_progress: bool = False) -> "Tokenizer":
        """Train byte-level BPE on `texts`; the 256 byte symbols and 7 specials come first."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        floor = len(SPECIAL_TOKENS) + 256
        if vocab_size < floor:
            raise DataError(f"tokenizer: --vocab-size {vocab_size} is below {floor} "
                            "(256 byte symbols + 7 special tokens)")
        hf = HFTokenizer(models.BPE())
        # GPT-2's split regex, then bytes -> printable unicode symbols; no prefix space, so exact round-trip.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(hf)

    # ---- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def role_id(self, role: str) -> int:
        if role not in ROLE_TOKENS:
            raise DataError(f"unknown chat role '{role}'; expected one of {', '.join(ROLE_TOKENS)}")
        if self.special_tokens is not None and role not in self.special_tokens:
            raise DataError(f"tokenizer: this imported tokenizer has no single token for role '{role}'")
        token = self.special_tokens[role] if self.special_tokens is not None else ROLE_TOKENS[role]
        return self._hf.token_to_id(token)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` (the exact bytes hashed by `sha256`) and a transformers-ready config holding
        the chat template unchanged, the stop tokens and the tokens foundry added."""
        from foundry.utils.io import atomic_write_json, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "tokenizer.json", self._json)
        tokens = self.chat_template.tokens
        if self.special_tokens is not None:
            st = self.special_tokens
            config = {"tokenizer_class": "PreTrainedTokenizerFast",
                      "bos_token": tokens.get("bos_token", st.get("bos")),
                      "eos_token": tokens.get("eos_token", st["eos"]),
                      "pad_token": tokens.get("pad_token", st.get("pad")),
                      **({"unk_token": tokens["unk_token"]} if "unk_token" in tokens else {})}
        else:
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
                      "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": None,
                      "additional_special_tokens": list(SPECIAL_TOKENS[3:])}
        config.update({
            "add_bos_token": False,
            "add_eos_token": False,
            # transformers' default clean-up would delete spaces before punctuation: not a round-trip.
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
            "chat_template": self.chat_template.source,
        })
        if self.special_tokens is not None:
            config["foundry_special_tokens"] = self.special_tokens
        if self.stop_tokens:
            config["foundry_stop_tokens"] = self.stop_tokens
        if self.added_tokens:
            config["foundry_added_tokens"] = self.added_tokens
        atomic_write_json(directory / "tokenizer_config.json", config)
        return directory

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _string_list(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def fertility(tokenizer: Tokenizer, texts: Iterable[str], batch: int = 512) -> dict:
    """Tokens per whitespace-separated word (and per byte); lower means the vocabulary fits the text."""
    words = tokens = nbytes = docs = 0
    chunk: list[str] = []

    def flush():
        nonlocal tokens
        tokens += sum(len(ids) for ids in tokenizer.encode_batch(chunk))
        chunk.clear()

    for text in texts:
        words += len(text.split())
        nbytes += len(text.encode("utf-8"))
        docs += 1
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    return {"documents": docs, "words": words, "tokens": tokens, "bytes": nbytes,
            "tokens_per_word": tokens / words if words else float("nan"),
            "bytes_per_token": nbytes / tokens if tokens else float("nan")}


def record_text(line: str | bytes, where: str | Callable[[], str]) -> str:
    """The `text` of one line of a prepared split. `where` ("FILE:LINE", or a function giving it when working
    it out costs a file scan) names the line when it is not a record."""
    try:
        return json.loads(line)["text"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{where() if callable(where) else where}: not a dataset record ({exc})") from None


def iter_split_texts(dataset_dir: str | Path, split: str) -> Iterator[str]:
    """The `text` of every record in `DATASET_DIR/{split}.jsonl` (written by `foundry data prepare`)."""
    path = Path(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; is {dataset_dir} a dataset made by 'foundry data prepare'?")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield record_text(line, f"{path}:{lineno}")


def train_tokenizer(dataset: str | Path, out: str | Path, vocab_size: int = 8192, min_frequency: int = 2,
                    overwrite: bool = False, record_config: dict | None = None) -> dict:
    """Train a tokenizer on a prepared dataset's train split and save it to `out` (with run.json); returns
    {vocab_size, sha256, documents, train_seconds, fertility} (fertility measured on val, else train)."""
    from foundry.data.prepare import dataset_manifest
    from foundry.utils.io import atomic_directory, sha256_file, write_run_record

    dataset = Path(dataset)
    manifest = dataset_manifest(dataset)
    n_train = sum(1 for _ in iter_split_texts(dataset, "train"))
    if n_train == 0:
        raise DataError(f"{dataset / 'train.jsonl'}: no documents to train on")
    t0 = time.perf_counter()
    tok = Tokenizer.train(iter_split_texts(dataset, "train"), vocab_size, min_frequency, length=n_train)
    seconds = time.perf_counter() - t0
    val = fertility(tok, iter_split_texts(dataset, "val"))
    if val["documents"] == 0:  # tiny datasets may have an empty validation split; say what we measured
        val = fertility(tok, iter_split_texts(dataset, "train"))
        val["split"] = "train (val is empty)"
    else:
        val["split"] = "val"
    results = {"vocab_size": tok.vocab_size, "sha256": tok.sha256, "train_seconds": round(seconds, 2), "fertility": val}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        tok.save(tmp)
        write_run_record(tmp, "tokenizer", record_config or {"dataset": str(dataset), "vocab_size": vocab_size},
                         parents={"dataset": str(dataset.resolve())},
                         data_manifests={dataset.name: sha256_file(manifest)}, results=results)
    return {**results, "documents": n_train, "train_seconds": seconds}
