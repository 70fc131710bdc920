"""Decontamination: drop training documents that share a long word n-gram with any evaluation text.

The test follows GPT-3's (Brown et al. 2020, appendix C): lower-cased word 13-grams, punctuation ignored;
one shared 13-gram marks a document as contaminated. Eval texts shorter than n words cannot be matched
this way and are counted as such in the manifest rather than matched on shorter, noisier n-grams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from foundry.data.clean import clean_text, words
from foundry.data.sources import ReadStats, decode_lines, iter_json_lines, read_bytes
from foundry.errors import DataError
from foundry.utils.io import sha256_file

DEFAULT_NGRAM = 13


def _ngrams(toks: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every run of n consecutive words, as tuples (built by zip, in C: this is the hot loop)."""
    return zip(*(toks[i:] for i in range(n)))


def _strings(value) -> Iterator[str]:
    """Every string inside a JSON value (fields, nested objects, lists)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def eval_texts(path: Path) -> Iterator[str]:
    """A .txt eval file is one text; a .jsonl eval file gives every string field of every record."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        for _, record in iter_json_lines(path):
            yield from _strings(record)
    elif name.endswith((".txt", ".md", ".rst")):
        yield "".join(decode_lines(path, read_bytes(path), "error", ReadStats()))
    else:
        raise DataError(f"{path}: eval files must be .txt or .jsonl")


class Decontaminator:
    """The set of eval n-grams; `is_contaminated(text)` checks a training document against it."""

    def __init__(self, eval_paths: list[str], n: int = DEFAULT_NGRAM):
        self.n = n
        self._ngrams: set[tuple[str, ...]] = set()
        self.files: list[dict] = []
        for p in map(Path, eval_paths):
            if not p.is_file():
                raise DataError(f"{p}: eval file not found")
            items = short = 0
            before = len(self._ngrams)
            for text in eval_texts(p):
                toks = words(clean_text(text))
                if not toks:
                    continue
                items += 1
                if len(toks) < n:
                    short += 1
                self._ngrams.update(_ngrams(toks, n))
            self.files.append({"path": str(p), "sha256": sha256_file(p), "texts": items,
                               f"texts_shorter_than_{n}_words": short, "ngrams": len(self._ngrams) - before})

    def __bool__(self) -> bool:
        return bool(self._ngrams)

    def is_contaminated(self, text: str | list[str]) -> bool:
        """Does `text` (or its already split `clean.words`) share an n-gram with the eval set?"""
        if not self._ngrams:
            return False
        toks = words(text) if isinstance(text, str) else text
        return not self._ngrams.isdisjoint(_ngrams(toks, self.n))
