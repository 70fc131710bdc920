"""The caption tokenizer of a CLIP model: CLIP's own BPE pipeline, trained on the captions at hand.

Design choices, each so that transformers' `CLIPTokenizer` / `CLIPTokenizerFast` give the same ids:
- The pipeline of `transformers.convert_slow_tokenizer.CLIPConverter`: NFC, runs of whitespace to one
  space, lower case; CLIP's split regex (contractions, letter runs, single digits, punctuation runs);
  bytes -> printable symbols (GPT-2's byte level); BPE with an end-of-word suffix `</w>`.
- Every byte symbol, alone and with `</w>`, is in the vocabulary, so any caption encodes (no unknown
  token), words the training captions never had included: they fall apart into pieces, which is what a
  vocabulary trained on one domain does to another.
- Special tokens `<|startoftext|>` (id 0) and `<|endoftext|>` (id 1); a row is `bos caption eos`, padded
  with end-of-text as CLIP pads (the text encoder pools the first end-of-text).
- `save` writes tokenizer.json (its bytes are hashed as `sha256`) and vocab.json + merges.txt, the files
  `CLIPTokenizer` reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from foundry.errors import DataError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SUFFIX = "</w>"
KIND = "clip"  # tokenizer_config.json's "foundry_tokenizer": how the store tells this one from the LM's


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what `pre_tokenizers.ByteLevel` maps bytes to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {ch: b for b, ch in _bytes_to_unicode().items()}
_UNICODE_TO_BYTE[" "] = ord(" ")  # the word breaks `decode` puts in for `</w>`


def _pipeline(model):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing((EOS, 1), (BOS, 0), add_prefix_space=False,
                                                      trim_offsets=False)
    return tok


class ClipTokenizer:
    """CLIP's BPE with `encode_batch(texts, length) -> (B, length)` rows of `bos caption eos pad...`."""

    bos_id, eos_id, pad_id = 0, 1, 1

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        from tokenizers import models

        if vocab.get(BOS) != 0 or vocab.get(EOS) != 1:
            raise DataError(f"clip tokenizer: {BOS} and {EOS} must have ids 0 and 1")
        self.vocab, self.merges = dict(vocab), [tuple(m) for m in merges]
        self._hf = _pipeline(models.BPE(vocab=self.vocab, merges=self.merges, unk_token=EOS,
                                        continuing_subword_prefix="", end_of_word_suffix=SUFFIX, fuse_unk=False))
        self._json = self._hf.to_str()
        self.sha256 = hashlib.sha256(self._json.encode("utf-8")).hexdigest()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> "ClipTokenizer":
        from tokenizers import models, pre_tokenizers, trainers

        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        floor = 2 + 2 * len(alphabet)
        if vocab_size < floor:
            raise DataError(f"clip tokenizer: vocab_size {vocab_size} is below {floor} (2 special tokens and 256 "
                            "byte symbols, alone and word-final)")
        hf = _pipeline(models.BPE(continuing_subword_prefix="", end_of_word_suffix=SUFFIX))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(alphabet), min_frequency=min_frequency,
                                      special_tokens=[BOS, EOS], initial_alphabet=alphabet,
                                      continuing_subword_prefix="", end_of_word_suffix=SUFFIX, show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        state = json.loads(hf.to_str())["model"]
        vocab = dict(state["vocab"])
        for symbol in alphabet:  # every byte may end a word, seen in training or not
            vocab.setdefault(symbol + SUFFIX, len(vocab))
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
        return cls(vocab, merges)

    @classmethod
    def load(cls, path: str | Path) -> "ClipTokenizer":
        path = Path(path)
        vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
        if not vocab_file.is_file() or not merges_file.is_file():
            raise DataError(f"{path}: CLIP tokenizer not found (expected vocab.json and merges.txt)")
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            lines = merges_file.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: unreadable CLIP tokenizer ({exc})") from None
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """`bos caption eos` ids, untruncated."""
        return self._hf.encode(text).ids

    def encode_batch(self, texts: list[str], length: int):
        """(B, length) LongTensor: `bos caption eos` truncated to `length` (eos kept, as transformers'
        truncation does) and padded with end-of-text."""
        import torch

        rows = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for i, encoding in enumerate(self._hf.encode_batch(list(texts))):
            ids = encoding.ids
            if len(ids) > length:
                ids = ids[:length - 1] + [self.eos_id]
            rows[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text: `</w>` ends a word, byte symbols back to bytes (as CLIPTokenizer decodes)."""
        pieces = [self._hf.id_to_token(i) or "" for i in ids
                  if not (skip_special and i in (self.bos_id, self.eos_id, self.pad_id))]
        text = "".join(pieces).replace(SUFFIX, " ")
        raw = bytes(_UNICODE_TO_BYTE.get(ch, ord(" ")) for ch in text)
        return raw.decode("utf-8", errors="replace").strip()

    def save(self, directory: str | Path, model_max_length: int = 77) -> Path:
        """tokenizer.json, vocab.json, merges.txt and a tokenizer_config.json `CLIPTokenizer` reads."""
        from foundry.utils.io import atomic_write_json, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "tokenizer.json", self._json)
        atomic_write_json(directory / "vocab.json", self.vocab)
        atomic_write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        atomic_write_json(directory / "tokenizer_config.json", {
            "tokenizer_class": "CLIPTokenizer", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
            "unk_token": EOS, "model_max_length": model_max_length, "do_lower_case": True,
            "clean_up_tokenization_spaces": False, "foundry_tokenizer": KIND,
        })
        atomic_write_json(directory / "special_tokens_map.json",
                          {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
        return directory

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def is_clip_tokenizer_dir(path: str | Path) -> bool:
    config = Path(path) / "tokenizer_config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("foundry_tokenizer") == KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
