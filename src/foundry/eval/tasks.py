"""Evaluation task files: multiple-choice and generation tasks in local JSONL, validated line by line.

A task file is one JSONL file; its name (without `.jsonl`) is the task's name. Every line is one item:

- multiple choice: `{"context": str, "choices": [str, ...], "answer": int}` (0-based index into
  `choices`). The model scores `context + choice` for each choice; the choice text carries its own
  leading space if it needs one (`"context": "In the beginning", "choices": [" God created", ...]`).
- generation: `{"prompt": str, "checker": CHECKER}` where CHECKER is one mapping or a list of them (all
  must pass):
    `{"type": "exact", "value": "Paris"}`                   the whole answer, trimmed, equals value
    `{"type": "include", "values": ["a", "b"], "all": true}` every value (or, all=false, any) appears
    `{"type": "exclude", "values": ["cure"]}`                none of the values appears
    `{"type": "regex", "pattern": "\\b19\\d\\d\\b"}`          the pattern matches somewhere
  Matching ignores case unless `"ignore_case": false`. Generation items may set `"chat": false` to
  feed the prompt as plain text instead of a chat turn.
- preference: the DPO format, `{"prompt" or "messages", "chosen", "rejected"}` (`foundry.data.prefs`),
  so a held-out preference file is a task as it is. The model is right on a pair when it gives the
  chosen answer a higher log-probability than the rejected one after the chat-rendered prompt.

Optional on every item: `"id"` (a string) and `"split": "fewshot"`: such items are never scored and
serve as the few-shot examples (`--shots N` takes the first N); a file without them gives its first N
items as shots and scores the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry.errors import DataError

CHECKER_TYPES = ("exact", "include", "exclude", "regex")


@dataclass
class MCItem:
    context: str
    choices: list[str]
    answer: int
    id: str


@dataclass
class GenItem:
    prompt: str
    checkers: list[dict]
    id: str
    chat: bool = True


@dataclass
class PrefItem:
    messages: list[dict]
    chosen: str
    rejected: str
    id: str


@dataclass
class Task:
    name: str
    path: str
    kind: str  # "mc" | "gen" | "pref"
    items: list = field(default_factory=list)
    fewshot: list = field(default_factory=list)

    def split_shots(self, shots: int) -> tuple[list, list]:
        """(few-shot examples, items to score) for `shots` examples (see module docstring)."""
        if shots <= 0:
            return [], self.items
        if self.fewshot:
            if shots > len(self.fewshot):
                raise DataError(f"{self.path}: --shots {shots} but the file has only {len(self.fewshot)} "
                                "few-shot items")
            return self.fewshot[:shots], self.items
        if shots >= len(self.items):
            raise DataError(f"{self.path}: --shots {shots} leaves no items to score ({len(self.items)} items)")
        return self.items[:shots], self.items[shots:]


def contains(text: str, pattern: str, regex: bool = False, ignore_case: bool = True) -> bool:
    """Whether `pattern` (a literal phrase, or a regular expression) occurs in `text`."""
    flags = re.IGNORECASE if ignore_case else 0
    if regex:
        return re.search(pattern, text, flags) is not None
    return (pattern.casefold() in text.casefold()) if ignore_case else (pattern in text)


def validate_checker(spec: Any, where: str) -> dict:
    """Check one checker mapping; errors name `where` (file:line)."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: a checker must be a mapping with a 'type', got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in CHECKER_TYPES:
        raise DataError(f"{where}: unknown checker type {kind!r}; expected one of {', '.join(CHECKER_TYPES)}")
    allowed = {"type", "ignore_case"} | {"exact": {"value", "values"}, "include": {"values", "all"},
                                         "exclude": {"values"}, "regex": {"pattern"}}[kind]
    unknown = set(spec) - allowed
    if unknown:
        raise DataError(f"{where}: checker '{kind}' has unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    if kind == "exact":
        values = spec.get("values", [spec["value"]] if "value" in spec else None)
    elif kind == "regex":
        values = [spec.get("pattern")]
        try:
            re.compile(values[0] if isinstance(values[0], str) else "")
        except re.error as exc:
            raise DataError(f"{where}: checker regex {values[0]!r} does not compile ({exc})") from None
    else:
        values = spec.get("values")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        key = {"exact": "value", "regex": "pattern"}.get(kind, "values")
        raise DataError(f"{where}: checker '{kind}' needs '{key}' as non-empty string(s)")
    return dict(spec)


def check_output(text: str, checkers: list[dict]) -> bool:
    """True when `text` passes every checker."""
    for spec in checkers:
        ic = spec.get("ignore_case", True)
        kind = spec["type"]
        if kind == "exact":
            values = spec.get("values") or [spec["value"]]
            got = text.strip().casefold() if ic else text.strip()
            ok = any(got == (v.strip().casefold() if ic else v.strip()) for v in values)
        elif kind == "include":
            hits = [contains(text, v, ignore_case=ic) for v in spec["values"]]
            ok = all(hits) if spec.get("all", True) else any(hits)
        elif kind == "exclude":
            ok = not any(contains(text, v, ignore_case=ic) for v in spec["values"])
        else:
            ok = contains(text, spec["pattern"], regex=True, ignore_case=ic)
        if not ok:
            return False
    return True


def _parse_mc(rec: dict, where: str, default_id: str) -> MCItem:
    context, choices, answer = rec.get("context"), rec.get("choices"), rec.get("answer")
    if not isinstance(context, str):
        raise DataError(f"{where}: 'context' must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(f"{where}: 'answer' must be an integer index into 'choices', got {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: answer index {answer} is out of range for {len(choices)} choices "
                        f"(0..{len(choices) - 1})")
    return MCItem(context, list(choices), answer, str(rec.get("id", default_id)))


def _parse_gen(rec: dict, where: str, default_id: str) -> GenItem:
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    raw = rec.get("checker")
    specs = raw if isinstance(raw, list) else [raw]
    if raw is None or not specs:
        raise DataError(f"{where}: a generation item needs a 'checker'")
    chat = rec.get("chat", True)
    if not isinstance(chat, bool):
        raise DataError(f"{where}: 'chat' must be true or false")
    return GenItem(prompt, [validate_checker(s, where) for s in specs], str(rec.get("id", default_id)), chat)


def _parse_pref(rec: dict, where: str, default_id: str) -> PrefItem:
    from foundry.data.prefs import parse_preference

    pair = parse_preference(rec, where, 0)
    return PrefItem(pair.messages, pair.chosen, pair.rejected, str(rec.get("id", default_id)))


def load_task(path: str | Path) -> Task:
    """Read and validate a task file; any problem is a DataError naming `path:line`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    from foundry.data.sources import iter_json_lines

    task = Task(name=path.name.removesuffix(".jsonl"), path=str(path), kind="")
    for lineno, rec in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        kind = "mc" if "choices" in rec else "pref" if "chosen" in rec else "gen" if "prompt" in rec else None
        if kind is None:
            raise DataError(f"{where}: neither a multiple-choice item (context, choices, answer), a "
                            "generation item (prompt, checker) nor a preference pair (prompt, chosen, rejected)")
        if task.kind and kind != task.kind:
            raise DataError(f"{where}: a {kind} item in a {task.kind} task file; keep one kind per file")
        task.kind = kind
        split = rec.get("split", "test")
        if split not in ("test", "fewshot"):
            raise DataError(f"{where}: 'split' must be 'test' or 'fewshot', got {split!r}")
        parse = {"mc": _parse_mc, "gen": _parse_gen, "pref": _parse_pref}[kind]
        item = parse(rec, where, f"{task.name}-{lineno}")
        (task.fewshot if split == "fewshot" else task.items).append(item)
    if not task.items:
        raise DataError(f"{path}: no items to evaluate")
    return task
