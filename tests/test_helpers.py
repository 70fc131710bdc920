"""The shared test helpers (tests/helpers/) checked on their own, so a broken fixture fails loudly in one place
rather than as a puzzling failure in every test that uses it."""

from __future__ import annotations

import json

from tests.helpers.continual_corpora import documents
from tests.helpers.posttrain import tiny_tokenizer
from tests.helpers.reliability import build_workspace


def test_tiny_tokenizer_has_foundry_specials():
    tok = tiny_tokenizer()
    assert tok.eot_id == 6 and tok.role_id("assistant") == 5
    assert tok.encode("<|user|>hi<|end|>")[0] == 4
    assert tok.vocab_size <= 512  # fits the "test" model preset


def test_workspace_is_built_by_the_cli(tmp_path):
    ws = build_workspace(tmp_path)
    from foundry.data.shards import check_tokenizer_matches, load_token_index
    from foundry.data.tokenizer import Tokenizer

    index = load_token_index(ws["dataset"])
    check_tokenizer_matches(ws["dataset"], Tokenizer.load(ws["tokenizer"]))  # raises if they disagree
    assert index["splits"]["train"]["tokens"] > 2000 and index["splits"]["val"]["tokens"] > 100
    manifest = json.loads((ws["dataset"] / "manifest.json").read_text())
    assert manifest["totals"]["documents"]["kept"] >= 80  # random-word documents are not deduplicated away


def test_generated_languages_are_deterministic_and_disjoint():
    assert documents("en", 5, 1) == documents("en", 5, 1)
    assert documents("en", 5, 1) != documents("en", 5, 2)
    en_words = {w.strip(".").lower() for d in documents("en", 50, 0) for w in d.split()}
    fr_words = {w.strip(".").lower() for d in documents("fr", 50, 0) for w in d.split()}
    # only the shared loanwords (simple, village, machine) overlap
    assert en_words & fr_words <= {"simple", "village", "machine"}
    assert any("é" in w or "ê" in w for w in fr_words)
