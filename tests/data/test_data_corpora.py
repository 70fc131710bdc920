"""The bundled corpora: provenance present, sizes as promised, and they prepare into sensible documents."""

import json
from pathlib import Path

import pytest
import yaml

from foundry.cli import main as cli

DATA = Path(__file__).resolve().parents[2] / "data"
CORPORA = {"general/kjv": (4.0, 4.6), "general/shakespeare": (4.5, 5.5),
           "domain/pydocs": (0.5, 2.0), "domain/debian-handbook-fr": (0.5, 2.0)}


def corpus_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.txt")) / 1e6


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_has_provenance_and_size(name):
    folder = DATA / name
    meta = yaml.safe_load((folder / "SOURCE.yaml").read_text())
    for key in ("license", "origin", "collected", "package", "version"):
        assert meta.get(key), f"{folder}/SOURCE.yaml lacks {key}"
    assert meta["txt_split"] == "formfeed"
    assert (folder / "LICENSE").stat().st_size > 200
    low, high = CORPORA[name]
    assert low <= corpus_mb(folder) <= high


def test_general_corpus_is_at_least_5mb_and_everything_under_15mb():
    assert corpus_mb(DATA / "general" / "kjv") + corpus_mb(DATA / "general" / "shakespeare") >= 5.0
    assert sum(corpus_mb(DATA / n) for n in CORPORA) < 15.0


def test_french_corpus_prepares_into_french_sections(tmp_path):
    out = tmp_path / "fr"
    french = DATA / "domain" / "debian-handbook-fr"
    assert cli(["data", "prepare", str(french), "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    src = m["sources"][0]
    assert src["license"].startswith("GPL-2.0") and src["txt_split"] == "formfeed" and not m["unlicensed_sources"]
    assert m["totals"]["documents"]["kept"] > 150 and m["totals"]["documents"]["val"] >= 2
    text = " ".join(json.loads(line)["text"] for line in (out / "train.jsonl").read_text().splitlines()[:50])
    words = text.lower().split()
    assert sum(w in {"le", "la", "les", "des", "est"} for w in words) > 5 * sum(w in {"the", "is", "of"} for w in words)


def test_kjv_documents_are_chapters():
    genesis = (DATA / "general" / "kjv" / "01_Genesis.txt").read_text()
    chapters = genesis.split("\f")
    assert len(chapters) == 50
    assert chapters[0].startswith("Genesis 1\n\n1 In the beginning God created the heaven and the earth.")
