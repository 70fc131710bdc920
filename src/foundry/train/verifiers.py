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
*solved* (pass@1, pass@G). A verifier that raises, or returns something that is not a finite number (a
string such as "0.75" included), is a bad-input error naming the prompt, never a silent zero reward (the
silent reward bug TRL users meet most).

`RewardFunction.score_many` (what `foundry rl` calls) runs a batch's verifier calls in a worker process
forked for the batch, each call under `timeout` seconds: a verifier that hangs (or a catastrophic regex,
which Python cannot interrupt) is killed with its worker and ends the run in one line naming it and the
prompt; one that calls `sys.exit` or kills its process cannot take the run with it. A first Ctrl-C while
verifiers run asks the loop for its usual checkpoint-and-stop, and if they have not finished a second
later, kills them and stops the run (a stuck verifier never leaves Ctrl-C unanswered).
"""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing
import numbers
import re
import signal
import threading
import time
from typing import Callable, Literal

from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError, DataError

INTERRUPT_GRACE_S = 1.0  # after Ctrl-C, how long verifiers still running may take to finish the step
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
        """(weighted reward, solved by the first verifier), in this process and with no timeout (see
        `score_many`). A verifier that raises or returns a non-number is a DataError naming `where`."""
        values = [_checked(_call(fn, completion, item), spec, completion, where)
                  for spec, fn in zip(self.specs, self.fns)]
        return self._combine(values)

    def _combine(self, values: list[float]) -> tuple[float, bool]:
        return sum(spec.weight * v for spec, v in zip(self.specs, values)), values[0] >= 0.5

    def score_many(self, jobs: list[tuple[str, dict, str]], timeout: float) -> list[tuple[float, bool]]:
        """`score` for each (completion, item, where), the calls run in a worker process forked for the
        batch, each under `timeout` seconds; a call over it kills the worker and is a DataError naming the
        verifier and `where`, as is a worker that dies or exits. Ctrl-C kills the worker and stops."""
        if not jobs:
            return []
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        receive, send = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=_score_worker, args=(send, self.specs, jobs), daemon=True,
                             name="foundry-verifiers")
        worker.start()
        send.close()
        interrupted: list[float] = []
        previous = _watch_interrupts(interrupted)

        def arrived() -> bool:  # the next outcome within `timeout`; Ctrl-C stops the wait (after a short grace)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if interrupted and time.monotonic() - interrupted[0] > INTERRUPT_GRACE_S:
                    raise KeyboardInterrupt
                if receive.poll(min(0.1, left)):
                    return True
            return False

        try:
            out = []
            for completion, item, where in jobs:
                values = []
                for spec in self.specs:
                    if not arrived():
                        raise DataError(f"{where}: verifier {spec.name} did not return within {timeout:g}s "
                                        f"(completion {completion[:60]!r}); fix it or raise verifier_timeout")
                    try:
                        result = receive.recv()
                    except EOFError:
                        worker.join(1)
                        raise DataError(f"{where}: verifier {spec.name} ended its process (exit code "
                                        f"{worker.exitcode}) on completion {completion[:60]!r}") from None
                    values.append(_checked(result, spec, completion, where))
                out.append(self._combine(values))
            return out
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            receive.close()
            if worker.is_alive():
                worker.kill()
            worker.join(5)


def _watch_interrupts(interrupted: list[float]):
    """While verifiers run, note each Ctrl-C in `interrupted` and pass it on to the handler in place (the
    training loop's: a first Ctrl-C asks for a checkpoint after this step, a second aborts). Returns that
    handler, to put back; None off the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        if previous is signal.SIG_IGN:
            return
        interrupted.append(time.monotonic())
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    return previous


def _call(fn, completion: str, item: dict) -> tuple:
    """One verifier call as a picklable outcome: ("value", float) | ("not_a_number", type, repr) |
    ("raised", type, message) | ("exited", code). Nothing a verifier does escapes as an exception but Ctrl-C."""
    try:
        value = fn(completion, item)
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        return ("exited", exc.code)
    except BaseException as exc:  # a user's verifier may raise anything: report it, never reward it 0
        return ("raised", type(exc).__name__, str(exc)[:200])
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars; a string such as "0.75" is not
        return ("value", float(value))
    return ("not_a_number", type(value).__name__, repr(value)[:60])


def _checked(result: tuple, spec: VerifierSpec, completion: str, where: str) -> float:
    """The score of a `_call` outcome, or a one-line DataError naming the verifier and `where`."""
    shown = f"(completion {completion[:60]!r})"
    kind = result[0]
    if kind == "raised":
        raise DataError(f"{where}: verifier {spec.name} raised {result[1]}: {result[2]} {shown}")
    if kind == "exited":
        raise DataError(f"{where}: verifier {spec.name} called sys.exit({result[1]!r}) {shown}")
    if kind == "not_a_number":
        raise DataError(f"{where}: verifier {spec.name} returned {result[1]} {result[2]}, not a number {shown}")
    if not math.isfinite(result[1]):
        raise DataError(f"{where}: verifier {spec.name} returned {result[1]} {shown}")
    return result[1]


def _score_worker(conn, specs: list[VerifierSpec], jobs: list[tuple[str, dict, str]]) -> None:
    """The worker process: every verifier call in order, one outcome sent per call; stops at the first failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills this process
    try:
        fns = [build_verifier(s) for s in specs]
        for completion, item, _ in jobs:
            for fn in fns:
                outcome = _call(fn, completion, item)
                conn.send(outcome)
                if outcome[0] != "value":
                    return
    except BaseException as exc:  # noqa: BLE001 - anything else (an unpicklable message...): the parent says so
        try:
            conn.send(("raised", type(exc).__name__, str(exc)[:200]))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        conn.close()
