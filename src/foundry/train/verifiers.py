"""Verifiers: the programs that score a completion for reinforcement learning (`foundry rl`).

A verifier is a small plain function `fn(completion: str, item: dict) -> float`: `completion` is the
decoded answer (special tokens dropped, whitespace trimmed), `item` the prompt file's record (its
`answer`, plus `n_tokens`, the completion's length in tokens). A recipe lists them; a completion's reward
is the weighted sum of their scores:

    verifiers:
      - {type: numeric}                          # the number in the answer equals item["answer"]
      - {type: regex, pattern: "^-?\\d+$", weight: 0.1}
      - {type: length_penalty, free_tokens: 8, per_token: 0.01}
      - {type: python, function: "mypkg.rewards:brevity"}

Built-in types: exact, numeric, regex, json_schema, one_of, length_penalty, python (a user function by
import path `module:function`). The FIRST verifier is the task's check: a completion it scores >= 0.5 is
*solved* (pass@1, pass@G). A verifier that raises, or returns something that is not a finite number, is a
bad-input error naming the prompt, never a silent zero reward (the silent reward bug TRL users meet most).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from typing import Callable, Literal

from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError, DataError

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


# ---- the built-in verifiers: plain functions ------------------------------------------------------------

def exact_match(completion: str, answer, ignore_case: bool = False) -> float:
    """1.0 when the trimmed completion equals the answer (as text), else 0.0."""
    a, b = completion.strip(), str(answer).strip()
    if ignore_case:
        a, b = a.lower(), b.lower()
    return float(a == b)


def numeric_match(completion: str, answer, tolerance: float = 1e-6) -> float:
    """1.0 when the LAST number in the completion equals the numeric answer within `tolerance`."""
    numbers = _NUMBER.findall(completion)
    if not numbers:
        return 0.0
    return float(abs(float(numbers[-1]) - float(answer)) <= tolerance)


def regex_match(completion: str, pattern: str) -> float:
    """1.0 when `pattern` matches somewhere in the completion (re.search; anchor it with ^...$ for the whole)."""
    return float(re.search(pattern, completion) is not None)


def json_schema_match(completion: str, schema: dict) -> float:
    """1.0 when the completion parses as JSON and validates against `schema` (JSON Schema, `jsonschema`)."""
    import jsonschema

    try:
        value = json.loads(completion)
    except ValueError:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def one_of(completion: str, values: list, ignore_case: bool = False) -> float:
    """1.0 when the trimmed completion is one of `values`."""
    return float(any(exact_match(completion, v, ignore_case) for v in values))


def length_penalty(n_tokens: int, free_tokens: int = 0, per_token: float = 0.01) -> float:
    """-per_token for every completion token beyond `free_tokens` (a brake on length blow-up)."""
    return -per_token * max(0, n_tokens - free_tokens)


# ---- the recipe's side --------------------------------------------------------------------------------

class VerifierSpec(StrictModel):
    """One verifier in a recipe; its score times `weight` is added to the reward."""

    type: Literal["exact", "numeric", "regex", "json_schema", "one_of", "length_penalty", "python"] = Field(
        description="exact | numeric (item's answer) | regex | json_schema | one_of | length_penalty | python")
    weight: float = Field(1.0, description="the score's weight in the reward")
    ignore_case: bool = Field(False, description="exact, one_of: compare case-insensitively")
    tolerance: float = Field(1e-6, ge=0, description="numeric: largest accepted absolute difference")
    pattern: str | None = Field(None, description="regex: the pattern to search for")
    json_schema: dict | None = Field(None, alias="schema", description="json_schema: the JSON Schema (a mapping)")
    values: list | None = Field(None, description="one_of: accepted answers (default: the item's 'answer' list)")
    free_tokens: int = Field(0, ge=0, description="length_penalty: tokens allowed before the penalty starts")
    per_token: float = Field(0.01, ge=0, description="length_penalty: penalty per token beyond free_tokens")
    function: str | None = Field(None, description="python: 'module:function', called as fn(completion, item) -> float")

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    @property
    def needs_answer(self) -> bool:
        return self.type in ("exact", "numeric") or (self.type == "one_of" and self.values is None)

    @property
    def name(self) -> str:
        return self.function if self.type == "python" else self.type


def import_function(path: str) -> Callable:
    """The function `module:function` names, or a one-line ConfigError."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"verifier function {path!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's module's, reported in one line
        raise ConfigError(f"verifier function {path!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"verifier function {path!r}: {module_name} has no callable {attr!r}")
    return fn


def build_verifier(spec: VerifierSpec) -> Callable[[str, dict], float]:
    """spec -> fn(completion, item) -> score (unweighted)."""
    t = spec.type
    if t == "exact":
        return lambda c, item: exact_match(c, item["answer"], spec.ignore_case)
    if t == "numeric":
        return lambda c, item: numeric_match(c, item["answer"], spec.tolerance)
    if t == "regex":
        if spec.pattern is None:
            raise ConfigError("verifier regex: needs 'pattern'")
        try:
            re.compile(spec.pattern)
        except re.error as exc:
            raise ConfigError(f"verifier regex: pattern {spec.pattern!r} does not compile ({exc})") from None
        return lambda c, item: regex_match(c, spec.pattern)
    if t == "json_schema":
        if spec.json_schema is None:
            raise ConfigError("verifier json_schema: needs 'schema' (a JSON Schema mapping)")
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(spec.json_schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"verifier json_schema: not a valid schema ({exc.message})") from None
        return lambda c, item: json_schema_match(c, spec.json_schema)
    if t == "one_of":
        if spec.values is not None:
            return lambda c, item: one_of(c, spec.values, spec.ignore_case)
        return lambda c, item: one_of(c, item["answer"] if isinstance(item["answer"], list) else [item["answer"]],
                                      spec.ignore_case)
    if t == "length_penalty":
        return lambda c, item: length_penalty(item["n_tokens"], spec.free_tokens, spec.per_token)
    if t == "python":
        if not spec.function:
            raise ConfigError("verifier python: needs 'function' ('module:function')")
        return import_function(spec.function)
    raise ConfigError(f"unknown verifier type {t!r}")


class RewardFunction:
    """The recipe's verifiers as one callable: `scores(completion, item, where)` -> (reward, solved)."""

    def __init__(self, specs: list[VerifierSpec]):
        if not specs:
            raise ConfigError("rl: give at least one verifier (the first is the task's check)")
        self.specs = specs
        self.fns = [build_verifier(s) for s in specs]

    @property
    def needs_answer(self) -> list[str]:
        return [s.name for s in self.specs if s.needs_answer]

    def check_items(self, items: list[dict], path: str) -> None:
        """Every item has the answer a verifier needs; else one line naming the file and line."""
        needing = self.needs_answer
        if not needing:
            return
        for item in items:
            if "answer" not in item:
                raise DataError(f"{path}:{item['_line']}: no 'answer', which verifier {needing[0]} needs; "
                                "give every prompt an answer or choose verifiers that need none")

    def score(self, completion: str, item: dict, where: str) -> tuple[float, bool]:
        """(weighted reward, solved by the first verifier). A verifier that raises is a DataError naming `where`."""
        total, solved = 0.0, False
        for i, (spec, fn) in enumerate(zip(self.specs, self.fns)):
            try:
                value = fn(completion, item)
                value = float(value)
            except Exception as exc:  # a user's verifier may raise anything: report it, never reward it 0
                raise DataError(f"{where}: verifier {spec.name} raised {type(exc).__name__}: {exc} "
                                f"(completion {completion[:60]!r})") from None
            if not math.isfinite(value):
                raise DataError(f"{where}: verifier {spec.name} returned {value} (completion {completion[:60]!r})")
            total += spec.weight * value
            if i == 0:
                solved = value >= 0.5
        return total, solved
