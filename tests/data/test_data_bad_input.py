"""Every bad input of `foundry data prepare`: one line naming the file (and line), exit 1, nothing touched."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foundry.cli import main as cli

GOOD = "A perfectly ordinary sentence that is long enough to be kept as a document by the cleaner. " * 3


def run(capsys, *args):
    code = cli(["data", "prepare", *map(str, args), "--no-progress"])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 1
    assert err.startswith("foundry: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def existing(tmp_path):
    """An output directory holding a finished dataset, to check that failures never touch it."""
    (tmp_path / "ok.txt").write_text(GOOD)
    out = tmp_path / "out"
    assert cli(["data", "prepare", str(tmp_path / "ok.txt"), "--out", str(out), "--no-progress"]) == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def assert_untouched(existing):
    out, files = existing
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]  # no temp dirs left behind


def test_missing_path(tmp_path, capsys, existing):
    code, err = run(capsys, tmp_path / "nope.txt", "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "nope.txt: no such file or directory")
    assert_untouched(existing)


def test_empty_corpus(tmp_path, capsys, existing):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.jsonl").write_text(json.dumps({"text": "tiny"}) + "\n")
    code, err = run(capsys, tmp_path / "empty.txt", tmp_path / "short.jsonl", "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "empty corpus", "1 too_short")
    assert_untouched(existing)
    (tmp_path / "d").mkdir()
    code, err = run(capsys, tmp_path / "d", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "no .txt")


def test_non_utf8_refused_with_line_or_skipped_and_counted(tmp_path, capsys, existing):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes((GOOD + "\n").encode() + "caf\xe9 au lait\n".encode("latin-1") + (GOOD + "\n").encode())
    code, err = run(capsys, bad, "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "latin1.txt:2: not valid UTF-8", "--on-bad-utf8 skip")
    assert_untouched(existing)
    out = tmp_path / "skipped"
    assert cli(["data", "prepare", str(bad), "--out", str(out), "--on-bad-utf8", "skip", "--no-progress"]) == 0
    src = json.loads((out / "manifest.json").read_text())["sources"][0]
    assert src["undecodable_lines"] == 1
    text = json.loads((out / "train.jsonl").read_text().splitlines()[0])["text"]
    assert "caf" not in text and text.count("ordinary") == 6


def test_non_utf8_in_jsonl(tmp_path, capsys):
    bad = tmp_path / "a.jsonl"
    bad.write_bytes(json.dumps({"text": GOOD}).encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    code, err = run(capsys, bad, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "a.jsonl:2: not valid UTF-8")


def test_malformed_jsonl_line(tmp_path, capsys, existing):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": GOOD}) + "\n\n" + '{"text": "unterminated\n')
    code, err = run(capsys, f, "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "bad.jsonl:3: not valid JSON")
    assert_untouched(existing)


def test_jsonl_record_without_text_field(tmp_path, capsys, existing):
    f = tmp_path / "fields.jsonl"
    f.write_text(json.dumps({"text": GOOD}) + "\n" + json.dumps({"body": GOOD, "id": 2}) + "\n")
    code, err = run(capsys, f, "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "fields.jsonl:2: record has no 'text' field", "body, id", "--text-field")
    assert_untouched(existing)
    g = tmp_path / "num.jsonl"
    g.write_text(json.dumps({"text": 5}) + "\n")
    assert_one_line_error(*run(capsys, g, "--out", tmp_path / "y"), "num.jsonl:1: field 'text' is int")


def test_parquet_without_the_column(tmp_path, capsys, existing):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": [GOOD], "n": [1]}), f)
    code, err = run(capsys, f, "--out", existing[0], "--overwrite")
    assert_one_line_error(code, err, "t.parquet: no column 'text'", "content, n")
    assert_untouched(existing)


def test_output_holding_a_different_dataset(tmp_path, capsys, existing):
    (tmp_path / "other.txt").write_text(GOOD.replace("ordinary", "unusual"))
    code, err = run(capsys, tmp_path / "other.txt", "--out", existing[0])
    assert_one_line_error(code, err, "already holds a different dataset", "--overwrite")
    assert_untouched(existing)
    # a non-empty folder that is not a dataset is refused as well
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "keep.me").write_text("precious")
    assert_one_line_error(*run(capsys, tmp_path / "other.txt", "--out", tmp_path / "stuff"), "not empty")
    assert (tmp_path / "stuff" / "keep.me").read_text() == "precious"


def test_failure_after_some_output_leaves_no_half_dataset(tmp_path, capsys):
    (tmp_path / "a_good.txt").write_text(GOOD)
    (tmp_path / "b_bad.jsonl").write_text("not json\n")
    code, err = run(capsys, tmp_path, "--out", tmp_path.parent / f"{tmp_path.name}-ds")
    assert_one_line_error(code, err, "b_bad.jsonl:1")
    assert not (tmp_path.parent / f"{tmp_path.name}-ds").exists()
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}-ds")]


def test_bad_sidecar_and_options(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(GOOD)
    (tmp_path / "c" / "SOURCE.yaml").write_text("license: MIT\ncollected: [oops\n")
    assert_one_line_error(*run(capsys, tmp_path / "c", "--out", tmp_path / "x"), "SOURCE.yaml:", "not valid YAML")
    (tmp_path / "c" / "SOURCE.yaml").write_text("license: MIT\ncollected: last tuesday\n")
    assert_one_line_error(*run(capsys, tmp_path / "c", "--out", tmp_path / "x"), "SOURCE.yaml", "YYYY-MM-DD")
    (tmp_path / "c" / "SOURCE.yaml").write_text("license: MIT\n")
    assert_one_line_error(*run(capsys, tmp_path / "c", "--out", tmp_path / "x", "--val-fraction", "1.5"),
                          "--val-fraction")
    assert_one_line_error(*run(capsys, tmp_path / "c", "--out", tmp_path / "x", "--eval", tmp_path / "no.jsonl"),
                          "no.jsonl: eval file not found")
    assert_one_line_error(*run(capsys, tmp_path / "c" / "SOURCE.yaml", "--out", tmp_path / "x"),
                          "unsupported file type")
    assert not (tmp_path / "x").exists()
