"""Preference data: reading `{"prompt" or "messages", "chosen", "rejected"}` JSONL, and `foundry audit prefs`.

Noisy preference data quietly caps what DPO can learn, so the audit looks for the usual defects before
training: exact-duplicate pairs, chosen == rejected, contradictory pairs (A over B and B over A for the
same prompt), near-duplicate chosen/rejected (little signal, mostly noise), empty fields, and length
bias (how often the chosen answer is simply the longer one, and the accuracy a length-only rule gets:
a high value means a model can "win" by writing more, not better).

`--fix` removes every flagged record except for length bias, which is a property of the set rather
than of a record, and writes the removals to a JSON report.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from foundry.data.chat import iter_jsonl, validate_messages
from foundry.errors import DataError

NEAR_DUPLICATE = 0.9  # difflib ratio between chosen and rejected at or above which a pair is flagged


@dataclass
class PreferencePair:
    messages: list[dict]  # the conversation so far, ending with a user turn
    chosen: str
    rejected: str
    line: int  # 1-based line in the source file
    record: dict  # the record as read, written back unchanged by --fix

    def prompt_key(self) -> str:
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


def _completion(value, where: str, key: str) -> str:
    # A completion is a string, or (the conversational form) a list holding one assistant message.
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise DataError(f"{where}: '{key}' must be a string (or a list with one assistant message)")


def parse_preference(record, where: str, line: int, allow_empty: bool = False) -> PreferencePair:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'prompt' or 'messages', 'chosen' and 'rejected'")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f"{where}: missing '{key}'")
    if ("prompt" in record) == ("messages" in record):
        raise DataError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a list)")
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise DataError(f"{where}: 'prompt' must be a string")
        messages = [{"role": "user", "content": record["prompt"]}]
    else:
        messages = validate_messages(record["messages"], where, need_assistant=False)
        if messages[-1]["role"] != "user":
            raise DataError(f"{where}: 'messages' must end with a user turn (the completions answer it)")
    chosen = _completion(record["chosen"], where, "chosen")
    rejected = _completion(record["rejected"], where, "rejected")
    if not allow_empty:
        for key, text in (("prompt", messages[-1]["content"]), ("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise DataError(f"{where}: '{key}' is empty; run 'foundry audit prefs FILE --fix OUT' to clean the file")
    return PreferencePair(messages, chosen, rejected, line, record)


def read_preferences(path: str | Path, allow_empty: bool = False) -> list[PreferencePair]:
    """Every pair in a preference JSONL file (blank lines skipped); errors name file:line."""
    pairs = [parse_preference(record, f"{path}:{lineno}", lineno, allow_empty)
             for lineno, record in iter_jsonl(path, "preference data")]
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs


def encode_preference(tokenizer, messages: list[dict], chosen: str, rejected: str,
                      where: str = "preference pair") -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) through the one chat template; each completion ends in `<|end|>`.
    Shared by DPO's training rows and evaluation's preference accuracy, so both score the same tokens."""
    from foundry.data.chat import render_chat

    prompt, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    completions = []
    for text in (chosen, rejected):
        full, mask = render_chat(tokenizer, messages + [{"role": "assistant", "content": text}])
        # the template puts a special token at every boundary, so the prompt is a prefix of the whole
        if full[:len(prompt)] != prompt or not all(mask[len(prompt):]):
            raise DataError(f"{where}: the prompt does not render as a prefix of prompt + completion; check the "
                            "chat template in the tokenizer")
        completions.append(full[len(prompt):])
    return prompt, completions[0], completions[1]


# ---- audit ----------------------------------------------------------------------------------------

CHECKS = ("empty_field", "chosen_equals_rejected", "exact_duplicate", "contradictory", "near_duplicate")


def similarity(a: str, b: str) -> float:
    """difflib's ratio (2 * matches / total length); cheap upper bounds first, as difflib advises."""
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if m.real_quick_ratio() < NEAR_DUPLICATE or m.quick_ratio() < NEAR_DUPLICATE:
        return m.quick_ratio()
    return m.ratio()


def audit_pairs(pairs: list[PreferencePair]) -> dict:
    """Find every problem; returns {"flags": {line: [checks]}, "counts", "length_bias"}."""
    flags: dict[int, list[str]] = {}

    def flag(p: PreferencePair, check: str) -> None:
        flags.setdefault(p.line, []).append(check)

    seen: dict[tuple, int] = {}
    by_pair: dict[tuple, list[PreferencePair]] = {}
    for p in pairs:
        if not (p.messages[-1]["content"].strip() and p.chosen.strip() and p.rejected.strip()):
            flag(p, "empty_field")
        if p.chosen.strip() == p.rejected.strip():
            flag(p, "chosen_equals_rejected")
        elif similarity(p.chosen, p.rejected) >= NEAR_DUPLICATE:
            flag(p, "near_duplicate")
        key = (p.prompt_key(), p.chosen, p.rejected)
        if key in seen:
            flag(p, "exact_duplicate")  # the first copy is kept
        seen.setdefault(key, p.line)
        by_pair.setdefault(key, []).append(p)
    for (prompt, chosen, rejected), group in by_pair.items():
        if chosen != rejected and (prompt, rejected, chosen) in by_pair:
            for p in group:  # both directions are removed: we cannot tell which label is right
                flag(p, "contradictory")

    counts = {c: sum(c in v for v in flags.values()) for c in CHECKS}
    # Length bias over the usable pairs: how often is chosen the longer one, and how well does
    # "prefer the longer answer" predict the label (ties count as a coin flip).
    usable = [p for p in pairs if p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected]
    longer = sum(len(p.chosen) > len(p.rejected) for p in usable)
    ties = sum(len(p.chosen) == len(p.rejected) for p in usable)
    n = len(usable)
    length_bias = {
        "pairs": n,
        "chosen_longer_share": longer / n if n else float("nan"),
        "length_rule_accuracy": (longer + 0.5 * ties) / n if n else float("nan"),
    }
    return {"records": len(pairs), "flags": flags, "counts": counts, "length_bias": length_bias}


def add_model_flags(result: dict, margins: dict[int, float], threshold: float) -> dict:
    """Flag the pairs a model reverses with confidence: log p(chosen) - log p(rejected) below -threshold nats.

    A flipped label is invisible to the checks above when each prompt appears once; a model trained on
    the file (or another judge) learns what most pairs agree on, so the pairs it confidently reverses are
    the likely mislabels (the small-loss idea of noisy-label learning, e.g. Han et al. 2018, "Co-teaching").
    """
    for line, margin in margins.items():
        if margin < -threshold:
            result["flags"].setdefault(line, []).append("model_disagrees")
    result["counts"]["model_disagrees"] = sum("model_disagrees" in v for v in result["flags"].values())
    result["model_margin_threshold"] = threshold
    return result


def format_table(result: dict, path) -> str:
    rows = [("check", "records")] + [(c.replace("_", " "), str(n)) for c, n in result["counts"].items()]
    lb = result["length_bias"]
    rows += [("chosen is longer (share)", f"{lb['chosen_longer_share']:.3f}"),
             ("length-only rule accuracy", f"{lb['length_rule_accuracy']:.3f}"),
             ("records flagged", str(len(result["flags"]))),
             ("records", str(result["records"]))]
    width = max(len(r[0]) for r in rows)
    lines = [f"audit of {path}"] + [f"  {a:<{width}}  {b:>8}" for a, b in rows]
    if lb["length_rule_accuracy"] >= 0.7:
        lines.append("  warning: a length-only rule predicts most labels; DPO may learn to write longer, not better")
    return "\n".join(lines)
