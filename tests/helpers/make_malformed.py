"""The broken inputs of the malformed-input suite (tests/reliability/test_malformed_inputs.py), one builder per case.

Each builder writes its broken file(s) into a folder and returns the `foundry` command that reads them,
the path the one-line error must name, and words it must contain. Where the command has an output, the
builder first puts a previous output there (and asks to overwrite it), so the test can check that a
failed command leaves it exactly as it was.

    python -m tests.helpers.make_malformed DIR [--only NAME ...]   # from the checkout: the inputs in DIR/NAME/

Builders that need a model, a run or a bake-off share a lazily built `Context` (a tiny checkpoint, a
two-step pretraining run, an exported Hugging Face directory and a bake-off with its rating sheet).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Built:
    argv: list[str]
    names: str  # the offending file (or folder); the error line must contain it
    mentions: list[str] = field(default_factory=list)  # words the error line must contain
    marker: Path | None = None  # a file a crafted pickle would create if it were ever loaded


class Context:
    """Valid artefacts the broken inputs sit next to, built on first use under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @functools.cached_property
    def ws(self) -> dict:
        from tests.helpers.reliability import build_workspace

        return build_workspace(self.root / "ws")

    @functools.cached_property
    def ckpt(self) -> Path:
        import torch

        from foundry.data.tokenizer import Tokenizer
        from foundry.model.llama import Llama, config_from_preset
        from foundry.checkpoints import save_checkpoint

        tok = Tokenizer.load(self.ws["tokenizer"])
        torch.manual_seed(0)
        model = Llama(config_from_preset("test", vocab_size=tok.vocab_size, max_seq_len=64))
        return save_checkpoint(self.root / "ckpt", model, tok, None, {"step": 0, "stage": "test"})

    @functools.cached_property
    def run(self) -> tuple[Path, dict]:
        """A finished two-step pretraining run and its recipe (as a dict)."""
        import yaml

        from foundry.cli import main as cli
        from tests.helpers.reliability import pretrain_recipe

        recipe = pretrain_recipe(self.ws, self.root / "run.yaml", self.root / "run", max_steps=2, eval_every=2)
        assert cli(["pretrain", "--config", str(recipe)]) == 0
        return self.root / "run", yaml.safe_load(recipe.read_text())

    @functools.cached_property
    def hf_dir(self) -> Path:
        from foundry.model.hf import export_hf
        from foundry.checkpoints import load_model

        model, tok = load_model(self.ckpt)
        return export_hf(model, tok, self.root / "hf")

    @functools.cached_property
    def bakeoff(self) -> Path:
        """A bake-off folder (config, prompts, rubric) and its output with the blinded rating sheet."""
        from foundry.cli import main as cli

        folder = self.root / "bakeoff"
        write_bakeoff_inputs(folder, self.ckpt)
        assert cli(["bakeoff", "--config", str(folder / "bakeoff.yaml"), "--out", str(folder / "out")]) == 0
        return folder


def build_context(root: Path) -> Context:
    return Context(root)


# ---- small writers ------------------------------------------------------------------------------------

def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def jsonl(path: Path, records: list, extra_lines: dict[int, str] | None = None) -> Path:
    """Records as JSONL; `extra_lines` {1-based line: raw text} are put in as written (broken lines)."""
    lines = [json.dumps(r) for r in records]
    for at, raw in sorted((extra_lines or {}).items()):
        lines.insert(at - 1, raw)
    return write(path, "\n".join(lines) + "\n")


def yaml_file(path: Path, data) -> Path:
    import yaml

    return write(path, yaml.safe_dump(data, sort_keys=False))


def previous_output(path: Path, is_dir: bool = True) -> Path:
    """An earlier command's output at `path`, which a failing command must leave alone."""
    if is_dir:
        write(path / "manifest.json", json.dumps({"fingerprint": "previous"}))
        write(path / "previous.txt", "written by an earlier, successful command\n")
    else:
        write(path, '{"previous": true}\n')
    return path


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def reseal(ckpt: Path) -> None:
    """Recompute meta.json's checksums, as an attacker (or a careless tool) would after editing files."""
    from foundry.utils.io import sha256_file

    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"] = {name: sha256_file(ckpt / name) for name in meta["sha256"] if (ckpt / name).is_file()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def evil_pickle(path: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling would run `touch marker`."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 1, "payload": Payload()}, path)
    return path


CHATS = [{"messages": [{"role": "user", "content": "Which book follows Ruth?"},
                       {"role": "assistant", "content": "1 Samuel"}]}] * 3
PAIRS = [{"prompt": "Which book follows Ruth?", "chosen": "1 Samuel", "rejected": "I do not know"}] * 3


def write_bakeoff_inputs(folder: Path, ckpt: Path, rubric: str | None = None, prompts: str | None = None) -> Path:
    write(folder / "prompts.jsonl", prompts if prompts is not None else
          '{"id": "p1", "prompt": "Which book follows Ruth?"}\n{"id": "p2", "prompt": "Name a river."}\n')
    write(folder / "rubric.yaml", rubric if rubric is not None else
          "criteria:\n  - {name: brevity, type: length, max_words: 30}\n"
          "  - {name: accuracy, type: human, scale: [1, 5]}\n")
    yaml_file(folder / "bakeoff.yaml", {"prompts": "prompts.jsonl", "rubric": "rubric.yaml", "max_new_tokens": 4,
                                        "temperature": 0, "models": [{"name": "tiny", "path": str(ckpt)}]})
    return folder / "bakeoff.yaml"


# ---- the cases ------------------------------------------------------------------------------------------
CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _prepare(d: Path, src: Path, *extra: str) -> list[str]:
    out = previous_output(d / "out")
    return ["data", "prepare", str(src), "--out", str(out), "--overwrite", "--no-progress", *extra]


@case
def corpus_missing_path(d, ctx):
    return Built(_prepare(d, d / "no-such-corpus"), str(d / "no-such-corpus"), ["no such file"])


@case
def corpus_empty(d, ctx):
    write(d / "corpus" / "empty.txt", "")
    return Built(_prepare(d, d / "corpus"), str(d / "corpus"), ["empty corpus"])


@case
def corpus_non_utf8(d, ctx):
    write(d / "corpus" / "bad.txt", b"a fine first line of text\n\xff\xfe not utf-8 here\n")
    return Built(_prepare(d, d / "corpus", "--on-bad-utf8", "error"), str(d / "corpus" / "bad.txt") + ":2",
                 ["UTF-8"])


@case
def corpus_jsonl_malformed_line(d, ctx):
    jsonl(d / "corpus" / "a.jsonl", [{"text": "x " * 80}] * 2, {2: '{"text": "unterminated'})
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.jsonl") + ":2", ["JSON"])


@case
def corpus_jsonl_without_text_field(d, ctx):
    jsonl(d / "corpus" / "a.jsonl", [{"body": "a document in the wrong field " * 5}])
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.jsonl") + ":1", ["text"])


@case
def corpus_jsonl_not_an_object(d, ctx):
    jsonl(d / "corpus" / "a.jsonl", [["a", "list"]])
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.jsonl") + ":1", ["object"])


@case
def corpus_parquet_without_column(d, ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "corpus").mkdir(parents=True)
    pq.write_table(pa.table({"body": ["a document in the wrong column " * 5]}), d / "corpus" / "a.parquet")
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.parquet"), ["column"])


@case
def corpus_parquet_corrupt(d, ctx):
    write(d / "corpus" / "a.parquet", b"PAR1 this is not a parquet file at all PAR1")
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.parquet"), ["parquet"])


@case
def corpus_gzip_corrupt(d, ctx):
    write(d / "corpus" / "a.txt.gz", b"\x1f\x8b\x08 truncated gzip stream")
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "a.txt.gz"), ["cannot read"])


@case
def corpus_sidecar_invalid_yaml(d, ctx):
    write(d / "corpus" / "a.txt", "a document " * 30)
    write(d / "corpus" / "SOURCE.yaml", "license: CC0-1.0\norigin: [unclosed\n")
    return Built(_prepare(d, d / "corpus"), str(d / "corpus" / "SOURCE.yaml"), ["YAML"])


@case
def corpus_unsupported_file_type(d, ctx):
    write(d / "data.csv", "text\nhello\n")
    return Built(_prepare(d, d / "data.csv"), str(d / "data.csv"), ["unsupported"])


@case
def corpus_not_a_dataset_for_tokenizer_training(d, ctx):
    write(d / "folder" / "train.jsonl", '{"text": "hello"}\n')
    out = previous_output(d / "tok")
    return Built(["tokenizer", "train", str(d / "folder"), "--out", str(out), "--overwrite"], str(d / "folder"),
                 ["manifest.json"])


def _tokenize_with(d: Path, ctx, tokenizer_dir: Path) -> list[str]:
    dataset = d / "dataset"
    shutil.copytree(ctx.ws["dataset"], dataset)
    return ["data", "tokenize", str(dataset), "--tokenizer", str(tokenizer_dir), "--workers", "1", "--overwrite",
            "--no-progress"]


@case
def tokenizer_corrupt_json(d, ctx):
    write(d / "tok" / "tokenizer.json", '{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    return Built(_tokenize_with(d, ctx, d / "tok"), str(d / "tok" / "tokenizer.json"), ["tokenizer"])


@case
def tokenizer_not_utf8(d, ctx):
    write(d / "tok" / "tokenizer.json", b"\xff\xfe\x00{")
    return Built(_tokenize_with(d, ctx, d / "tok"), str(d / "tok" / "tokenizer.json"), ["tokenizer"])


@case
def tokenizer_without_foundry_special_tokens(d, ctx):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(["plain text with no special tokens at all"] * 5,
                           trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (d / "tok").mkdir(parents=True)
    hf.save(str(d / "tok" / "tokenizer.json"))
    return Built(_tokenize_with(d, ctx, d / "tok"), str(d / "tok" / "tokenizer.json"), ["special tokens"])


@case
def tokenizer_corrupt_in_checkpoint(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    write(ckpt / "tokenizer.json", "{ not json")
    reseal(ckpt)
    return Built(["generate", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"], str(ckpt / "tokenizer.json"),
                 ["tokenizer"])


# ---- chats (sft) ---------------------------------------------------------------------------------------

def _post_training(verb: str, d: Path, ctx, data: Path) -> list[str]:
    """`foundry sft` / `foundry dpo` on `data`, over an existing output it may overwrite."""
    previous_output(d / "out")
    recipe = yaml_file(d / f"{verb}.yaml", {"init": str(ctx.ckpt), "data": str(data), "out_dir": str(d / "out"),
                                            "overwrite": True, "train": {"max_steps": 2, "block_size": 64,
                                                                         "progress": False}})
    return [verb, "--config", str(recipe)]


def _sft(d: Path, ctx, data: Path) -> list[str]:
    return _post_training("sft", d, ctx, data)


@case
def chat_unknown_role(d, ctx):
    data = jsonl(d / "chat.jsonl", [{"messages": [{"role": "wizard", "content": "hi"},
                                                  {"role": "assistant", "content": "yo"}]}])
    return Built(_sft(d, ctx, data), str(data) + ":1", ["wizard"])


@case
def chat_no_assistant_turn(d, ctx):
    data = jsonl(d / "chat.jsonl", CHATS[:1] + [{"messages": [{"role": "user", "content": "hello?"}]}])
    return Built(_sft(d, ctx, data), str(data) + ":2", ["assistant"])


@case
def chat_malformed_line(d, ctx):
    data = jsonl(d / "chat.jsonl", CHATS[:2], {3: '{"messages": [{"role": "user"'})
    return Built(_sft(d, ctx, data), str(data) + ":3", ["JSON"])


@case
def chat_content_not_a_string(d, ctx):
    data = jsonl(d / "chat.jsonl", [{"messages": [{"role": "user", "content": 5},
                                                  {"role": "assistant", "content": "x"}]}])
    return Built(_sft(d, ctx, data), str(data) + ":1", ["content"])


@case
def chat_not_utf8(d, ctx):
    data = write(d / "chat.jsonl", json.dumps(CHATS[0]).encode() + b"\n" +
                 b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    return Built(_sft(d, ctx, data), str(data) + ":2", ["UTF-8"])


@case
def chat_file_missing(d, ctx):
    return Built(_sft(d, ctx, d / "missing.jsonl"), str(d / "missing.jsonl"), ["not found"])


# ---- preference files (dpo, audit prefs) -----------------------------------------------------------------

def _dpo(d: Path, ctx, data: Path) -> list[str]:
    return _post_training("dpo", d, ctx, data)


@case
def prefs_missing_chosen(d, ctx):
    data = jsonl(d / "prefs.jsonl", [{"prompt": "Which book follows Ruth?", "rejected": "no idea"}])
    return Built(_dpo(d, ctx, data), str(data) + ":1", ["chosen"])


@case
def prefs_malformed_line(d, ctx):
    data = jsonl(d / "prefs.jsonl", PAIRS[:1], {2: '{"prompt": "x", "chosen": '})
    fixed = previous_output(d / "fixed.jsonl", is_dir=False)
    return Built(["audit", "prefs", str(data), "--fix", str(fixed), "--overwrite"], str(data) + ":2", ["JSON"])


@case
def prefs_messages_end_with_assistant(d, ctx):
    data = jsonl(d / "prefs.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}],
                                      "chosen": "a", "rejected": "b"}])
    return Built(_dpo(d, ctx, data), str(data) + ":1", ["user turn"])


@case
def prefs_not_utf8(d, ctx):
    data = write(d / "prefs.jsonl", b'{"prompt": "caf\xe9?", "chosen": "a", "rejected": "b"}\n')
    return Built(_dpo(d, ctx, data), str(data), ["UTF-8"])


# ---- recipes and pipelines -------------------------------------------------------------------------------

def _pretrain_recipe(d: Path, ctx, text: str | None = None, **changes) -> Path:
    import yaml

    previous_output(d / "out")
    recipe = {"out_dir": str(d / "out"), "data": str(ctx.ws["dataset"]), "tokenizer": str(ctx.ws["tokenizer"]),
              "model": {"preset": "test"}, "overwrite": True,
              "train": {"max_steps": 2, "block_size": 32, "micro_batch_size": 2, "progress": False}}
    for key, value in changes.items():
        node = recipe
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return write(d / "recipe.yaml", text if text is not None else yaml.safe_dump(recipe))


@case
def recipe_unknown_key(d, ctx):
    recipe = _pretrain_recipe(d, ctx, **{"train.lrr": 0.1})
    return Built(["pretrain", "--config", str(recipe)], str(recipe), ["unknown key", "train.lrr"])


@case
def recipe_wrong_type(d, ctx):
    recipe = _pretrain_recipe(d, ctx, **{"train.max_steps": "many"})
    return Built(["pretrain", "--config", str(recipe)], str(recipe), ["max_steps"])


@case
def recipe_invalid_yaml(d, ctx):
    previous_output(d / "out")
    recipe = write(d / "recipe.yaml", f"out_dir: {d / 'out'}\ntrain: [unclosed\n  max_steps: 2\n")
    return Built(["pretrain", "--config", str(recipe)], str(recipe), ["YAML"])


@case
def recipe_nul_byte(d, ctx):
    recipe = write(d / "recipe.yaml", b"out_dir: x\x00\ntrain: {}\n")  # the YAML reader's message spans lines
    return Built(["pretrain", "--config", str(recipe)], str(recipe), ["YAML"])


@case
def recipe_override_with_newline(d, ctx):
    recipe = _pretrain_recipe(d, ctx)
    return Built(["pretrain", "--config", str(recipe), "train.lr\n=1e-3"], str(recipe), ["unknown key"])


@case
def recipe_not_a_mapping(d, ctx):
    recipe = write(d / "recipe.yaml", "- pretrain\n- sft\n")
    return Built(["sft", "--config", str(recipe)], str(recipe), ["mapping"])


@case
def recipe_missing(d, ctx):
    return Built(["dpo", "--config", str(d / "nope.yaml")], str(d / "nope.yaml"), ["not found"])


@case
def recipe_bad_override(d, ctx):
    recipe = _pretrain_recipe(d, ctx)
    return Built(["pretrain", "--config", str(recipe), "train.max_steps=-3"], str(recipe), ["max_steps"])


@case
def recipe_unknown_preset(d, ctx):
    recipe = _pretrain_recipe(d, ctx, **{"model.preset": "gigantic"})
    return Built(["pretrain", "--config", str(recipe)], "gigantic", ["preset"])


@case
def pipeline_parent_not_run(d, ctx):
    recipe = yaml_file(d / "pipeline.yaml", {
        "name": "broken", "out_dir": str(d / "run"),
        "stages": [{"name": "tok", "verb": "tokenizer train", "args": ["{stage:data}", "--out", "{out}"]},
                   {"name": "data", "verb": "data prepare", "args": ["corpus", "--out", "{out}"]}]})
    return Built(["run", str(recipe)], str(recipe), ["'data'", "does not run before"])


@case
def pipeline_unknown_verb(d, ctx):
    recipe = yaml_file(d / "pipeline.yaml", {"name": "broken", "out_dir": str(d / "run"),
                                             "stages": [{"name": "x", "verb": "pretrian", "args": []}]})
    return Built(["run", str(recipe)], str(recipe), ["pretrian"])


# ---- rubrics, prompts and rating sheets (bakeoff) ----------------------------------------------------------

def _bakeoff(d: Path, ctx, rubric: str | None = None, prompts: str | None = None) -> list[str]:
    cfg = write_bakeoff_inputs(d / "bk", ctx.ckpt, rubric, prompts)
    out = previous_output(d / "out")
    return ["bakeoff", "--config", str(cfg), "--out", str(out), "--overwrite"]


@case
def rubric_unknown_criterion_type(d, ctx):
    argv = _bakeoff(d, ctx, "criteria:\n  - name: vibes\n    type: good_vibes\n")
    return Built(argv, str(d / "bk" / "rubric.yaml") + ":3", ["criterion type", "good_vibes"])


@case
def rubric_invalid_yaml(d, ctx):
    argv = _bakeoff(d, ctx, "criteria:\n  - {name: a, type: length, max_words: 3\n")
    return Built(argv, str(d / "bk" / "rubric.yaml"), ["YAML"])


@case
def rubric_unknown_criterion_key(d, ctx):
    argv = _bakeoff(d, ctx, "criteria:\n  - name: short\n    type: length\n    max_word: 30\n")
    return Built(argv, str(d / "bk" / "rubric.yaml") + ":4", ["max_word"])


@case
def rubric_bad_scale(d, ctx):
    argv = _bakeoff(d, ctx, "criteria:\n  - {name: acc, type: human, scale: [5, 1]}\n")
    return Built(argv, str(d / "bk" / "rubric.yaml") + ":2", ["scale"])


@case
def rubric_prompts_malformed_line(d, ctx):
    argv = _bakeoff(d, ctx, prompts='{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": \n')
    return Built(argv, str(d / "bk" / "prompts.jsonl") + ":2", ["JSON"])


def _ratings(d: Path, ctx, edit) -> tuple[list[str], Path]:
    """A copy of the bake-off and its output, and a filled sheet changed by `edit(rows) -> rows`."""
    bk = d / "bk"
    shutil.copytree(ctx.bakeoff, bk)
    rows = list(csv.reader(io.StringIO((bk / "out" / "rating_sheet.csv").read_text(encoding="utf-8"))))
    header = rows[0]
    for row in rows[1:]:
        row[header.index("accuracy")] = "4"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(edit(rows))
    sheet = write(d / "filled.csv", buf.getvalue())
    return ["bakeoff", "--config", str(bk / "bakeoff.yaml"), "--out", str(bk / "out"), "--ratings", str(sheet)], sheet


@case
def rating_unknown_blind_id(d, ctx):
    def edit(rows):
        rows[2][0] = "R000000"
        return rows

    argv, sheet = _ratings(d, ctx, edit)
    return Built(argv, str(sheet) + ":3", ["blind id", "R000000"])


@case
def rating_score_outside_scale(d, ctx):
    def edit(rows):
        rows[1][rows[0].index("accuracy")] = "9"
        return rows

    argv, sheet = _ratings(d, ctx, edit)
    return Built(argv, str(sheet) + ":2", ["scale"])


@case
def rating_missing_column(d, ctx):
    def edit(rows):
        col = rows[0].index("accuracy")
        return [r[:col] + r[col + 1:] for r in rows]

    argv, sheet = _ratings(d, ctx, edit)
    return Built(argv, str(sheet) + ":1", ["accuracy"])


@case
def rating_sheet_not_utf8(d, ctx):
    argv, sheet = _ratings(d, ctx, lambda rows: rows)
    sheet.write_bytes(sheet.read_bytes() + b"R123456,p1,\xff\xfe,x,3,\n")
    return Built(argv, str(sheet), ["UTF-8"])


# ---- eval tasks ----------------------------------------------------------------------------------------------

def _eval(d: Path, ctx, task: Path) -> list[str]:
    out = previous_output(d / "results.json", is_dir=False)
    return ["eval", str(ctx.ckpt), "--tasks", str(task), "--out", str(out), "--overwrite"]


MC = {"context": "In the beginning", "choices": [" God created", " the river"], "answer": 0}


@case
def tasks_answer_out_of_range(d, ctx):
    task = jsonl(d / "task.jsonl", [{**MC, "answer": 2}])
    return Built(_eval(d, ctx, task), str(task) + ":1", ["out of range"])


@case
def tasks_malformed_line(d, ctx):
    task = jsonl(d / "task.jsonl", [MC], {2: '{"context": "x", "choices": ['})
    return Built(_eval(d, ctx, task), str(task) + ":2", ["JSON"])


@case
def tasks_unknown_checker(d, ctx):
    task = jsonl(d / "task.jsonl", [{"prompt": "Name a river.", "checker": {"type": "fuzzy", "value": "Nile"}}])
    return Built(_eval(d, ctx, task), str(task) + ":1", ["fuzzy"])


@case
def tasks_mixed_kinds(d, ctx):
    task = jsonl(d / "task.jsonl", [MC, {"prompt": "Name a river.", "checker": {"type": "exact", "value": "Nile"}}])
    return Built(_eval(d, ctx, task), str(task) + ":2", ["one kind per file"])


@case
def tasks_not_utf8(d, ctx):
    task = write(d / "task.jsonl", b'{"context": "caf\xe9", "choices": ["a", "b"], "answer": 0}\n')
    return Built(_eval(d, ctx, task), str(task), ["UTF-8"])


# ---- checkpoints --------------------------------------------------------------------------------------------

@case
def ckpt_missing(d, ctx):
    out = previous_output(d / "hf")
    return Built(["export", str(d / "nope"), "--out", str(out), "--overwrite"], str(d / "nope"), ["no such"])


@case
def ckpt_corrupt_safetensors(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    write(ckpt / "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (ckpt / "meta.json").unlink()  # no checksum to catch it first: the weights reader must
    return Built(["generate", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"], str(ckpt / "model.safetensors"),
                 ["weights"])


@case
def ckpt_checksum_mismatch(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    out = previous_output(d / "hf")
    return Built(["export", str(ckpt), "--out", str(out), "--overwrite"], str(ckpt), ["checksum"])


@case
def ckpt_truncated_weights(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    reseal(ckpt)
    return Built(["generate", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"], str(ckpt / "model.safetensors"),
                 ["weights"])


@case
def ckpt_shape_mismatch(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    cfg = json.loads((ckpt / "model_config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2  # the weights were saved for the smaller MLP
    (ckpt / "model_config.json").write_text(json.dumps(cfg))
    reseal(ckpt)
    out = previous_output(d / "hf")
    return Built(["export", str(ckpt), "--out", str(out), "--overwrite"], str(ckpt), ["shape"])


@case
def ckpt_resume_with_another_model_shape(d, ctx):
    run, recipe = ctx.run
    shutil.copytree(run, d / "run")
    recipe = {**recipe, "out_dir": str(d / "run"), "model": {"preset": "test", "max_seq_len": 64, "n_layer": 3}}
    path = yaml_file(d / "recipe.yaml", recipe)
    return Built(["pretrain", "--config", str(path), "--resume"], str(d / "run" / "checkpoints"), ["shape"])


@case
def ckpt_pickle_train_state(d, ctx):
    run, recipe = ctx.run
    shutil.copytree(run, d / "run")
    latest = sorted((d / "run" / "checkpoints").glob("step_*"))[-1]
    marker = d.parent / f"{d.name}-pwned"
    evil_pickle(latest / "train_state.pt", marker)
    reseal(latest)
    path = yaml_file(d / "recipe.yaml", {**recipe, "out_dir": str(d / "run")})
    return Built(["pretrain", "--config", str(path), "--resume"], str(latest / "train_state.pt"), [], marker)


@case
def ckpt_pickle_as_weights(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    marker = d.parent / f"{d.name}-pwned"
    evil_pickle(ckpt / "model.safetensors", marker)
    reseal(ckpt)
    return Built(["generate", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"], str(ckpt / "model.safetensors"),
                 [], marker)


@case
def ckpt_meta_not_json(d, ctx):
    ckpt = copy_checkpoint(ctx.ckpt, d / "ckpt")
    write(ckpt / "meta.json", "{ torn")
    return Built(["generate", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"], str(ckpt), ["meta.json"])


@case
def ckpt_run_dir_without_checkpoints(d, ctx):
    (d / "run" / "checkpoints").mkdir(parents=True)
    write(d / "run" / "metrics.jsonl", "")
    return Built(["serve", str(d / "run"), "--port", "1"], str(d / "run"), ["checkpoint"])


# ---- other entry points: continual pretraining, coverage, report, retrieval index, plan ---------------------

@case
def recipe_continue_mixture_weights_all_zero(d, ctx):
    previous_output(d / "out")
    recipe = yaml_file(d / "continue.yaml", {
        "init": str(ctx.ckpt), "out_dir": str(d / "out"),
        "mixture": [{"name": "a", "data": str(ctx.ws["dataset"]), "weight": 0.0}]})
    return Built(["continue", "--config", str(recipe)], str(recipe), ["weight"])


@case
def recipe_continue_dataset_not_tokenised(d, ctx):
    (d / "raw").mkdir(parents=True)
    write(d / "raw" / "manifest.json", "{}")
    recipe = yaml_file(d / "continue.yaml", {
        "init": str(ctx.ckpt), "out_dir": str(d / "out"),
        "mixture": [{"name": "raw", "data": str(d / "raw"), "weight": 1.0}],
        "train": {"max_steps": 2, "block_size": 32, "progress": False}})
    return Built(["continue", "--config", str(recipe)], str(d / "raw"), ["token"])


@case
def recipe_plan_invalid_yaml(d, ctx):
    recipe = write(d / "recipe.yaml", "model: {preset: test\n")
    return Built(["plan", "--config", str(recipe)], str(recipe), ["YAML"])


@case
def corpus_coverage_domain_not_a_dataset(d, ctx):
    (d / "domain").mkdir()
    return Built(["coverage", str(ctx.ckpt), "--domain", str(d / "domain"), "--base", str(ctx.ws["dataset"])],
                 str(d / "domain"), [])


@case
def corpus_index_build_missing_folder(d, ctx):
    out = previous_output(d / "index")
    return Built(["index", "build", str(d / "no-docs"), "--out", str(out), "--overwrite"], str(d / "no-docs"), [])


@case
def corpus_index_build_not_utf8(d, ctx):
    write(d / "docs" / "a.md", b"# Title\n\n\xff\xfe broken bytes in a paragraph of words\n")
    out = previous_output(d / "index")
    return Built(["index", "build", str(d / "docs"), "--out", str(out), "--overwrite"], str(d / "docs" / "a.md"),
                 ["UTF-8"])


@case
def run_dir_report_without_run_record(d, ctx):
    (d / "run").mkdir()
    write(d / "run" / "notes.txt", "not a run\n")
    return Built(["report", str(d / "run"), "--out", str(d / "report")], str(d / "run"), [])


@case
def cli_generate_seed_out_of_range(d, ctx):
    return Built(["generate", str(ctx.ckpt), "--prompt", "hi", "--seed", str(2**70)], "seed", ["64"])


# ---- Hugging Face import -------------------------------------------------------------------------------------

def _import(d: Path, ctx, files: dict | None = None, config=None, remove: tuple = ()) -> tuple[Path, list[str]]:
    """A copy of a valid exported HF directory with `files` written over, `config(cfg)` applied to its
    config.json and `remove` deleted; and the `foundry import` command (over an existing output)."""
    hf = Path(shutil.copytree(ctx.hf_dir, d / "hf"))
    for name in remove:
        (hf / name).unlink()
    for name, data in (files or {}).items():
        write(hf / name, data)
    if config is not None:
        cfg = json.loads((hf / "config.json").read_text())
        config(cfg)
        (hf / "config.json").write_text(json.dumps(cfg))
    out = previous_output(d / "out")
    return hf, ["import", str(hf), "--out", str(out), "--overwrite"]


@case
def hf_unsupported_architecture(d, ctx):
    hf, argv = _import(d, ctx, config=lambda c: c.update(architectures=["GPT2LMHeadModel"], model_type="gpt2"))
    return Built(argv, str(hf / "config.json"), ["GPT2LMHeadModel"])


@case
def hf_missing_weights(d, ctx):
    hf, argv = _import(d, ctx, remove=("model.safetensors",))
    return Built(argv, str(hf), ["model.safetensors"])


@case
def hf_pickled_weights_only(d, ctx):
    marker = d.parent / f"{d.name}-pwned"
    hf, argv = _import(d, ctx, remove=("model.safetensors",))
    evil_pickle(hf / "pytorch_model.bin", marker)
    return Built(argv, str(hf), ["never unpickles"], marker)


@case
def hf_corrupt_safetensors(d, ctx):
    hf, argv = _import(d, ctx, files={"model.safetensors": b"garbage"})
    return Built(argv, str(hf / "model.safetensors"), ["safetensors"])


@case
def hf_config_not_json(d, ctx):
    hf, argv = _import(d, ctx, files={"config.json": "{'single': 'quotes'}"})
    return Built(argv, str(hf / "config.json"), ["JSON"])


@case
def hf_config_missing_key(d, ctx):
    hf, argv = _import(d, ctx, config=lambda c: c.pop("hidden_size"))
    return Built(argv, str(hf / "config.json"), ["hidden_size"])


@case
def hf_config_wrong_types(d, ctx):
    hf, argv = _import(d, ctx, config=lambda c: c.update(architectures=7, max_position_embeddings="long"))
    return Built(argv, str(hf / "config.json"), ["config"])


@case
def hf_weights_do_not_fit_config(d, ctx):
    hf, argv = _import(d, ctx, config=lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1))
    return Built(argv, str(hf), ["missing"])


@case
def hf_corrupt_tokenizer_json(d, ctx):
    hf, argv = _import(d, ctx, files={"tokenizer.json": '{"version": "1.0", "model": '})
    return Built(argv, str(hf / "tokenizer.json"), ["tokenizer"])


@case
def hf_tokenizer_not_utf8(d, ctx):
    hf, argv = _import(d, ctx, files={"tokenizer.json": b"\xff\xfe{}"})
    return Built(argv, str(hf / "tokenizer.json"), ["tokenizer"])


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="write the malformed-input suite's broken inputs to DIR/NAME/")
    p.add_argument("out")
    p.add_argument("--only", nargs="+", choices=sorted(CASES), help="just these cases")
    args = p.parse_args(argv)
    out = Path(args.out)
    ctx = Context(out.parent / f".{out.name}-context")
    for name in args.only or sorted(CASES):
        built = CASES[name](out / name, ctx)
        print(f"{name}: foundry {' '.join(built.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
