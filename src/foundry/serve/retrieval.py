"""Retrieval grounding: `foundry index build DOCS --out INDEX`, `Index.search`, `grounded_prompt`.

Design choices:
- BM25 (Robertson and Zaragoza 2009) from `bm25s`: sparse, fast, no model to download, and exact
  on the names and numbers that fact questions hinge on.
- Passages are paragraphs of the .txt/.md files (split on blank lines); a paragraph shorter than
  `min_words` (a heading) is joined to the next one, and one longer than `max_words` is cut into
  windows, so every passage is a readable unit that fits in a prompt.
- Each passage keeps its source path (relative to the docs folder), which the prompt shows as
  `[source]` and the answer is asked to cite.
- Saved without pickle: bm25s's arrays as .npy (allow_pickle=False) and its vocabulary as JSON, plus
  our `passages.jsonl` and `index.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from foundry.errors import DataError
from foundry.utils.io import atomic_write_json, atomic_write_text, read_json

DOC_SUFFIXES = (".txt", ".md")
FORMAT_VERSION = 1


def split_passages(text: str, min_words: int = 12, max_words: int = 160) -> list[str]:
    """Paragraphs of `text`; short ones (headings) join the next, long ones are cut into windows."""
    paragraphs = [" ".join(p.split()) for p in text.replace("\r\n", "\n").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    passages: list[str] = []
    carry = ""
    for para in paragraphs:
        para = f"{carry} {para}".strip() if carry else para
        words = para.split()
        if len(words) < min_words:
            carry = para
            continue
        carry = ""
        for start in range(0, len(words), max_words):
            passages.append(" ".join(words[start:start + max_words]))
    if carry:
        if passages and len(passages[-1].split()) + len(carry.split()) <= max_words:
            passages[-1] = f"{passages[-1]} {carry}"
        else:
            passages.append(carry)
    return passages


def collect_passages(docs_dir: str | Path, min_words: int = 12, max_words: int = 160) -> list[dict]:
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        raise DataError(f"{docs_dir}: not a directory of documents")
    files = sorted(p for p in docs_dir.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
    if not files:
        raise DataError(f"{docs_dir}: no .txt or .md files to index")
    passages = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        source = file.relative_to(docs_dir).as_posix()
        for text_ in split_passages(text, min_words, max_words):
            passages.append({"text": text_, "source": source})
    if not passages:
        raise DataError(f"{docs_dir}: the documents are empty")
    return passages


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class Index:
    """A BM25 index over passages, each `{"text", "source"}`."""

    def __init__(self, passages: list[dict], retriever, path: Path | None = None):
        self.passages = passages
        self.retriever = retriever
        self.path = path

    @classmethod
    def build(cls, passages: list[dict]) -> "Index":
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize([p["text"] for p in passages]), show_progress=False)
        return cls(passages, retriever)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.retriever.save(str(directory / "bm25"), allow_pickle=False, show_progress=False)
        atomic_write_text(directory / "passages.jsonl",
                          "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.passages))
        atomic_write_json(directory / "index.json", {"format": "foundry-bm25", "version": FORMAT_VERSION,
                                                     "passages": len(self.passages)})

    @classmethod
    def load(cls, directory: str | Path) -> "Index":
        import bm25s

        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise DataError(f"{directory}: not a retrieval index (no index.json); build one with "
                            "'foundry index build DOCS --out DIR'")
        meta = read_json(meta_path)
        if meta.get("format") != "foundry-bm25":
            raise DataError(f"{meta_path}: not a foundry BM25 index")
        passages = []
        if not (directory / "passages.jsonl").is_file():
            raise DataError(f"{directory / 'passages.jsonl'}: missing; rebuild the index with 'foundry index build'")
        with open(directory / "passages.jsonl", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    passages.append({"text": str(record["text"]), "source": str(record["source"])})
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{directory / 'passages.jsonl'}:{lineno}: not a passage ({exc})") from None
        try:
            retriever = bm25s.BM25.load(str(directory / "bm25"), allow_pickle=False, show_progress=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory / 'bm25'}: cannot load the BM25 arrays ({exc})") from None
        if len(passages) != meta.get("passages"):
            raise DataError(f"{directory / 'passages.jsonl'}: {len(passages)} passages, index.json says "
                            f"{meta.get('passages')}")
        return cls(passages, retriever, directory)

    def search(self, query: str, k: int = 3) -> list[dict]:
        """The top `k` passages for `query`, best first: `{"text", "source", "score"}` (score > 0 only)."""
        import numpy as np

        vocab = self.retriever.vocab_dict
        tokens = [t for t in _tokenize([query])[0] if t in vocab]
        if not tokens or k <= 0:
            return []
        scores = self.retriever.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:k]
        return [{**self.passages[i], "score": float(scores[i])} for i in order if scores[i] > 0]


def format_passages(hits: list[dict]) -> str:
    return "\n".join(f"[{h['source']}] {h['text']}" for h in hits)


def grounded_prompt(index: Index, question: str, k: int = 3) -> str:
    """The question preceded by the top `k` passages with their sources, asking for cited answers."""
    hits = index.search(question, k)
    if not hits:
        return question
    return ("Answer the question using the sources below. Cite the source of each fact as [source].\n\n"
            f"{format_passages(hits)}\n\nQuestion: {question}\nAnswer:")


