"""The automatic criteria scored on the answers, and a local model's prompt ids."""

from __future__ import annotations

import math
import re
from collections import Counter

from foundry.eval.tasks import contains


# ---- automatic criteria ----------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 (SQuAD, Rajpurkar et al. 2016): lower-cased word tokens, punctuation dropped."""
    pred, ref = _words(prediction), _words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(prediction: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popovic 2015): character n-gram F-beta averaged over n = 1..6, whitespace removed, in [0, 1]."""
    pred, ref = re.sub(r"\s+", "", prediction), re.sub(r"\s+", "", reference)
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        p = Counter(pred[i:i + n] for i in range(len(pred) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if not p or not r:
            continue
        common = sum((p & r).values())
        precisions.append(common / sum(p.values()))
        recalls.append(common / sum(r.values()))
    if not precisions:
        return float(pred == ref)
    prec, rec = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if prec + rec == 0:
        return 0.0
    return (1 + beta ** 2) * prec * rec / (beta ** 2 * prec + rec)


def _patterns(c: dict, prompt: dict) -> list[str] | None:
    pats = list(c["patterns"])
    if c.get("from_prompt"):
        if c["from_prompt"] not in prompt and not pats:
            return None  # nothing required of this prompt
        pats += prompt.get(c["from_prompt"], [])
    return pats


def score_automatic(c: dict, output: str, prompt: dict, style=None) -> tuple[float | None, dict]:
    """(score in [0, 1] or None when the criterion does not apply, details) for one answer."""
    kind = c["type"]
    if kind == "must_include":
        pats = _patterns(c, prompt)
        if not pats:
            return None, {}
        hits = [p for p in pats if contains(output, p, c["regex"], c["ignore_case"])]
        score = (len(hits) / len(pats)) if c["match"] == "all" else float(bool(hits))
        return score, {"missing": [p for p in pats if p not in hits]}
    if kind == "must_not_include":
        pats = _patterns(c, prompt)
        if not pats:
            return None, {}
        hits = [p for p in pats if contains(output, p, c["regex"], c["ignore_case"])]
        return float(not hits), {"found": hits}
    if kind == "length":
        n = len(output.split())
        ok = (c["min_words"] is None or n >= c["min_words"]) and (c["max_words"] is None or n <= c["max_words"])
        return float(ok), {"words": n}
    if kind == "reference_similarity":
        ref = prompt.get(c["from_prompt"])
        if ref is None:
            return None, {}
        return (token_f1 if c["metric"] == "token_f1" else chrf)(output, ref), {}
    if kind == "style_perplexity":
        if not output.strip():
            return 0.0, {"perplexity": None}
        from foundry.eval.perplexity import text_perplexity

        model, tokenizer = style
        ppl = text_perplexity(model, tokenizer, output)["ppl"]
        lo, hi = math.log(c["ppl_best"]), math.log(c["ppl_worst"])
        return min(1.0, max(0.0, (hi - math.log(ppl)) / (hi - lo))), {"perplexity": ppl}
    raise ValueError(kind)


def score_outputs(criteria: list[dict], outputs: list[dict], prompts: list[dict], device: str = "cpu") -> dict:
    """{(model, prompt_id): {criterion: score or None}} for every automatic criterion; details in outputs."""
    by_id = {p["id"]: p for p in prompts}
    styles = {}
    for c in criteria:
        if c["type"] == "style_perplexity" and c["model"] not in styles:
            from foundry.checkpoints import load_model

            styles[c["model"]] = load_model(c["model"], device=device)
    scores: dict = {}
    for o in outputs:
        row = scores.setdefault((o["model"], o["prompt_id"]), {})
        o.setdefault("details", {})
        for c in criteria:
            if c["type"] in ("human", "judge"):
                continue
            score, details = score_automatic(c, o["output"], by_id[o["prompt_id"]], styles.get(c.get("model")))
            row[c["name"]] = score
            if details:
                o["details"][c["name"]] = details
    return scores


# ---- prompts as token ids ---------------------------------------------------------------------------
def prompt_ids(tokenizer, messages: list[dict], chat: bool) -> list[int]:
    """A local model's prompt: the chat template (generation prompt added), or the user text after eos."""
    if not chat:
        return [tokenizer.eos_id] + tokenizer.encode(messages[-1]["content"])
    from foundry.data.chat import render_chat

    ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    return list(ids)
