"""`type: judge` criteria: a judge model scores each answer on the criterion's scale, with its anchors.

- Blind: the judge sees the criterion, its scale and anchors, the prompt (and its reference answer where the
  prompt has one) and one answer; never the contender's name. Each answer is judged on its own (single-answer
  grading, Zheng et al. 2023, "Judging LLM-as-a-Judge", sec. 3.1); the answers to one prompt are sent in an
  order drawn afresh for each prompt, from the bake-off's seed and the prompt id, and recorded.
- The reply must be `Score: N` (or only N), N an integer on the scale; anything else is recorded as
  unparseable with the reply itself, never guessed, and left out of the means.
- The judge's calls are logged (`OUT/judgements.jsonl`, fsynced per reply, so a re-run asks only for the
  missing ones) and priced with the judge's own prices; that cost is the evaluation's, not a contender's.
- Against people: where a `compare_with: HUMAN_CRITERION` was rated (the rating page or the sheet), the
  judge's agreement with the raters' mean per answer: Krippendorff's alpha (ordinal; `eval/agreement.py`)
  and Spearman's rho (scipy), over the answers both scored.
"""

from __future__ import annotations

import random
import re

JUDGE_TEMPLATE = """You grade one answer on one criterion of a rubric. You are not told who wrote the answer.

Criterion: {name}. {description}
Scale: an integer from {lo} to {hi}.
{anchors}
Question:
{prompt}
{reference}
Answer to grade:
{answer}

Reply with one line, exactly: Score: N (N an integer from {lo} to {hi})."""


def judge_prompt(c: dict, prompt: dict, answer: str) -> str:
    lo, hi = c["scale"]
    anchors = "".join(f"  {k} = {v}\n" for k, v in sorted((int(k), v) for k, v in (c.get("anchors") or {}).items()))
    anchors = f"Anchors:\n{anchors}" if anchors else ""
    reference = f"\nReference answer:\n{prompt['reference']}\n" if isinstance(prompt.get("reference"), str) else ""
    return JUDGE_TEMPLATE.format(name=c["name"], description=c["description"].strip(), lo=lo, hi=hi, anchors=anchors,
                                 prompt=prompt["prompt"], reference=reference, answer=answer)


SCORE = re.compile(r"\bscore\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(reply: str, scale: list[int]) -> tuple[int | None, str | None]:
    """(score, None), or (None, why the reply is unparseable)."""
    lo, hi = scale
    found = SCORE.findall(reply)
    if not found and re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*\.?\s*", reply):
        found = [reply.strip().rstrip(".")]
    if not found:
        return None, "no 'Score: N' in the reply"
    if len(set(found)) > 1:
        return None, f"several different scores ({', '.join(found)})"
    value = float(found[0])
    if value != int(value) or not lo <= value <= hi:
        return None, f"score {found[0]} is not an integer on {lo}..{hi}"
    return int(value), None


def judge_order(seed: int, prompt_id: str, models: list[str]) -> list[str]:
    """The order the answers to one prompt are judged in: shuffled per prompt, reproducibly."""
    order = sorted(models)
    random.Random(f"bakeoff-judge-{seed}-{prompt_id}").shuffle(order)
    return order


def judge_agreement(judged: dict, human: dict, criteria: list[dict]) -> dict:
    """{judge criterion: {compare_with, n, alpha, spearman}} over the answers that the judge and people scored.

    `judged` and `human`: {(model, prompt_id): {criterion: score}} (human: the raters' mean per answer)."""
    from foundry.eval.agreement import krippendorff_alpha

    out = {}
    for c in criteria:
        if c["type"] != "judge" or not c.get("compare_with"):
            continue
        pairs = [(j[c["name"]], human[k][c["compare_with"]]) for k, j in judged.items()
                 if j.get(c["name"]) is not None and human.get(k, {}).get(c["compare_with"]) is not None]
        entry = {"compare_with": c["compare_with"], "n": len(pairs), "alpha": None, "spearman": None}
        if len(pairs) >= 2:
            alpha = krippendorff_alpha({i: list(p) for i, p in enumerate(pairs)}, "ordinal")
            entry["alpha"] = None if alpha is None else round(alpha, 4)
            xs, ys = zip(*pairs)
            if len(set(xs)) > 1 and len(set(ys)) > 1:
                from scipy.stats import spearmanr

                entry["spearman"] = round(float(spearmanr(xs, ys).statistic), 4)
        out[c["name"]] = entry
    return out
