"""`foundry data prepare`: provenance manifest, cleaning, exact/near dedup, decontamination, stable split."""

import gzip
import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from foundry.cli import main as cli
from foundry.data.clean import clean_text
from foundry.data.dedup import NearDeduplicator

VOCAB = [f"w{i}x" for i in range(5000)]


def doc(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


def prepare(*args) -> int:
    return cli(["data", "prepare", *map(str, args), "--no-progress"])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_docs(out):
    return read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")


def test_manifest_records_hashes_provenance_and_counts(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "SOURCE.yaml").write_text("license: CC0-1.0\norigin: https://example.org/c\ncollected: 2024-05-06\n"
                                        "txt_split: blankline\n")
    (corpus / "a.txt").write_text("\n\n".join(doc(i) for i in range(6)) + "\n\nshort\n")
    loose = tmp_path / "loose.jsonl"
    loose.write_text("".join(json.dumps({"body": doc(100 + i), "n": i}) + "\n" for i in range(3)))
    out = tmp_path / "ds"
    assert prepare(corpus, loose, "--out", out, "--text-field", "body", "--origin", "https://cli.example") == 0

    m = json.loads((out / "manifest.json").read_text())
    by_path = {s["path"]: s for s in m["sources"]}
    a, j = by_path[str(corpus / "a.txt")], by_path[str(loose)]
    for src, f in ((a, corpus / "a.txt"), (j, loose)):
        assert src["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert src["bytes"] == f.stat().st_size
    assert (a["license"], a["origin"], a["collected"]) == ("CC0-1.0", "https://example.org/c", "2024-05-06")
    assert a["documents"]["read"] == 7 and a["documents"]["kept"] == 6
    assert a["documents"]["dropped"]["too_short"] == 1 and a["unlicensed"] is False
    # no sidecar: the command line's origin fills in, and the missing license is flagged
    assert j["origin"] == "https://cli.example" and j["license"] is None and j["unlicensed"] is True
    assert m["unlicensed_sources"] == [str(loose)]
    assert m["totals"]["documents"]["kept"] == 9 == len(all_docs(out))
    assert {d["source"] for d in all_docs(out)} == {str(corpus / "a.txt"), str(loose)}
    assert json.loads((out / "run.json").read_text())["stage"] == "data"


def test_unlicensed_source_is_flagged_in_summary(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(doc(1))
    assert prepare(tmp_path / "a.txt", "--out", tmp_path / "ds") == 0
    assert "UNLICENSED" in capsys.readouterr().out


def test_cleaning_nfc_control_characters_and_min_length(tmp_path):
    decomposed = "Cafe\u0301 cre\u0300me " + doc(1, 30)
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": decomposed}) + "\n"
        + json.dumps({"text": "bell\x07 and nul\x00 and esc\x1b kept\ttab\nnewline\r\nend " + doc(2, 30)}) + "\n"
        + json.dumps({"text": "   tiny   "}) + "\n")
    out = tmp_path / "ds"
    assert prepare(tmp_path / "a.jsonl", "--out", out, "--min-chars", "20") == 0
    texts = sorted(d["text"] for d in all_docs(out))
    assert len(texts) == 2
    assert texts[0].startswith("Café crème ") and "\u0301" not in texts[0]
    assert texts[1].startswith("bell and nul and esc kept\ttab\nnewline\nend ")
    assert clean_text(" x\u000c\u0085y ") == "xy"


def test_exact_and_near_duplicates_are_removed_but_unrelated_kept(tmp_path):
    base = doc(7, 100)
    words = base.split()
    words[50] = "CHANGED"
    one_word_changed = " ".join(words)
    same_but_case_and_spacing = base.upper().replace(" ", "  \n ")
    unrelated = [doc(1000 + i, 100) for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                              [base, same_but_case_and_spacing, one_word_changed, *unrelated]))
    out = tmp_path / "ds"
    assert prepare(tmp_path / "a.jsonl", "--out", out) == 0
    dropped = json.loads((out / "manifest.json").read_text())["totals"]["documents"]["dropped"]
    assert dropped["exact_duplicate"] == 1 and dropped["near_duplicate"] == 1
    kept = {d["text"] for d in all_docs(out)}
    assert kept == {base, *unrelated}


def test_near_duplicate_index_directly():
    index = NearDeduplicator(threshold=0.8)
    a = doc(3, 100)
    b = a.replace(a.split()[10], "other", 1)
    assert index.is_near_duplicate("a", a) is None
    assert index.is_near_duplicate("b", b) == "a"
    assert index.is_near_duplicate("c", doc(4, 100)) is None
    # half the words shared is not a near duplicate at 0.8
    assert index.is_near_duplicate("d", " ".join(a.split()[:50] + doc(5, 50).split())) is None


def test_planted_eval_passage_is_decontaminated(tmp_path):
    passage = ("the quick brown fox jumps over the lazy dog while seven wise owls count stars "
               "beyond the silver river")
    train = [doc(i) for i in range(6)]
    train[2] = doc(2, 60) + " Then: " + passage.upper().replace(" ", ", ") + " " + doc(22, 60)
    train[4] = doc(4, 60) + " " + " ".join(passage.split()[:12]) + " " + doc(44, 60)  # only 12 words shared
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": "q?", "choices": ["x", {"long": passage}], "answer": 1}) + "\n")
    out = tmp_path / "ds"
    assert prepare(tmp_path / "train.jsonl", "--out", out, "--eval", evals) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["documents"]["dropped"]["contaminated"] == 1
    assert m["eval_files"][0]["sha256"] == hashlib.sha256(evals.read_bytes()).hexdigest()
    kept = [d["text"] for d in all_docs(out)]
    assert len(kept) == 5 and train[2] not in kept and train[4] in kept
    # a .txt eval file works the same way
    (tmp_path / "eval.txt").write_text("Preamble. " + passage + "\n")
    assert prepare(tmp_path / "train.jsonl", "--out", tmp_path / "ds2", "--eval", tmp_path / "eval.txt") == 0
    totals = json.loads((tmp_path / "ds2" / "manifest.json").read_text())["totals"]
    assert totals["documents"]["dropped"]["contaminated"] == 1


def test_split_is_stable_across_runs_and_input_order(tmp_path):
    docs = [doc(i, 40) for i in range(200)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(docs)))
    assert prepare(tmp_path / "a.jsonl", "--out", tmp_path / "one", "--val-fraction", "0.1") == 0
    assert prepare(tmp_path / "a.jsonl", "--out", tmp_path / "two", "--val-fraction", "0.1") == 0
    assert prepare(tmp_path / "b.jsonl", "--out", tmp_path / "three", "--val-fraction", "0.1") == 0
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    val1 = {d["id"] for d in read_jsonl(tmp_path / "one" / "val.jsonl")}
    val3 = {d["id"] for d in read_jsonl(tmp_path / "three" / "val.jsonl")}
    assert val1 == val3 and 5 <= len(val1) <= 40
    assert not val1 & {d["id"] for d in read_jsonl(tmp_path / "one" / "train.jsonl")}


def test_reads_folders_txt_modes_gzip_and_parquet(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "whole.txt").write_text(doc(1) + "\n\n" + doc(2))                         # one document (default)
    (src / "sub" / "SOURCE.yaml").write_text("license: MIT\ntxt_split: formfeed\n")
    (src / "sub" / "pages.txt").write_text(doc(3) + "\n\n" + doc(4) + "\n\f\n" + doc(5))  # two documents
    with gzip.open(src / "sub" / "packed.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": doc(6)}) + "\n")
    pq.write_table(pa.table({"text": [doc(7), doc(8), None]}), src / "t.parquet")
    (src / "notes.bin").write_bytes(b"\x00\x01")  # ignored: not a text format
    out = tmp_path / "ds"
    assert prepare(src, "--out", out) == 0
    m = json.loads((out / "manifest.json").read_text())
    reads = {s["path"].removeprefix(str(src) + "/"): s["documents"]["read"] for s in m["sources"]}
    assert reads == {"whole.txt": 1, "sub/pages.txt": 2, "sub/packed.jsonl.gz": 1, "t.parquet": 2}
    assert {s["license"] for s in m["sources"]} == {None, "MIT"}
    assert prepare(src / "whole.txt", "--out", tmp_path / "ds2", "--txt-split", "blankline") == 0
    assert len(all_docs(tmp_path / "ds2")) == 2


def test_same_dataset_is_a_no_op_and_different_needs_overwrite(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(doc(1))
    out = tmp_path / "ds"
    assert prepare(tmp_path / "a.txt", "--out", out) == 0
    before = (out / "manifest.json").read_bytes()
    assert prepare(tmp_path / "a.txt", "--out", out) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == before
    assert prepare(tmp_path / "a.txt", "--out", out, "--min-chars", "5", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["min_chars"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
