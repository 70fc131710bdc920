"""The bake-off's decision: usage and cost per contender, per-criterion statistics, the weighted total, the
ranking and the recommendation (the best total, and the cheapest contender not distinguishably worse)."""

from __future__ import annotations

from foundry.eval.bakeoff.rubric import ModelEntry
from foundry.eval.bakeoff.sheet import human_criteria
from foundry.eval.stats import mean_ci


# ---- usage, cost and latency -------------------------------------------------------------------------
def usage_of(answers: list[dict]) -> dict:
    """Per contender, from its answers: {answers, tokens (generated), input_tokens, seconds (compute, or
    request time for endpoints), latency [s per answer], ttft [s], estimated (answers counted locally)}."""
    usage: dict = {}
    for a in answers:
        u = usage.setdefault(a["model"], {"answers": 0, "tokens": 0, "input_tokens": 0, "seconds": 0.0,
                                          "latency": [], "ttft": [], "estimated": 0, "batched": False})
        u["answers"] += 1
        u["tokens"] += int(a.get("output_tokens", a.get("tokens", 0)) or 0)
        u["input_tokens"] += int(a.get("input_tokens") or 0)
        u["seconds"] += float(a.get("compute_s") or a.get("latency_s") or 0.0)
        if a.get("latency_s") is not None:
            u["latency"].append(round(a["latency_s"], 4))
        if a.get("ttft_s") is not None:
            u["ttft"].append(round(a["ttft_s"], 4))
        u["estimated"] += a.get("usage_source") not in (None, "endpoint", "local")
        u["batched"] = u["batched"] or bool(a.get("batched"))
    return usage


def cost_of(m: ModelEntry, u: dict) -> float:
    """Every price a contender has, applied to its usage (unset prices are 0)."""
    return (u.get("tokens", 0) / 1000 * m.price_per_1k_tokens
            + u.get("input_tokens", 0) / 1e6 * m.price_per_1m_input_tokens
            + u.get("tokens", 0) / 1e6 * m.price_per_1m_output_tokens
            + u.get("seconds", 0.0) * m.price_per_compute_second)


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    import numpy as np

    return float(np.percentile(xs, q))


# ---- the summary -----------------------------------------------------------------------------------
def _normalised(c: dict, value: float) -> float:
    if c["type"] in ("human", "judge"):
        lo, hi = c["scale"]
        return (value - lo) / (hi - lo)
    return value


def summarise(criteria: list[dict], models: list[ModelEntry], usage: dict, auto: dict, human: dict | None,
              prompts: list[dict], errors: dict | None = None) -> dict:
    """Per contender and criterion: mean, 95% t-interval, n on the criterion's scale; the weighted total
    (per prompt: the weighted mean of its criteria mapped to 0..1; then mean and interval over prompts);
    cost, cost per 1,000 answers, latency; the ranking; and the recommendation (`recommend`).

    `auto`: {(model, prompt_id): {criterion: score}} for automatic and judge criteria; `human` the same
    for human criteria (the raters' mean per answer)."""
    errors = errors or {}
    rows = []
    for m in models:
        per: dict = {}
        for c in criteria:
            source = human if c["type"] == "human" else auto
            values = [source[(m.name, p["id"])][c["name"]] for p in prompts
                      if source is not None and source.get((m.name, p["id"]), {}).get(c["name"]) is not None]
            stats = mean_ci(values)
            stats["normalised"] = None if stats["mean"] is None else _normalised(c, stats["mean"])
            per[c["name"]] = stats
        totals = {}
        for p in prompts:
            num = den = 0.0
            for c in criteria:
                source = human if c["type"] == "human" else auto
                v = (source or {}).get((m.name, p["id"]), {}).get(c["name"])
                if v is not None and c["weight"] > 0:
                    num += c["weight"] * _normalised(c, v)
                    den += c["weight"]
            if den:
                totals[p["id"]] = num / den
        total = mean_ci(list(totals.values()))
        answered = sum((m.name, p["id"]) in auto or (m.name, p["id"]) in (human or {}) for p in prompts)
        u = {"answers": answered, "tokens": 0, "input_tokens": 0, "seconds": 0.0, "latency": [], "ttft": [],
             "estimated": 0, "batched": False, **usage.get(m.name, {})}
        cost = cost_of(m, u)
        rows.append({"name": m.name, "kind": m.kind, "path": m.path or (m.serve.model if m.serve else None),
                     "endpoint": m.endpoint.base_url if m.endpoint else None,
                     "tokens": u["tokens"], "input_tokens": u["input_tokens"], "seconds": round(u["seconds"], 6),
                     "answers": u["answers"], "expected_answers": len(prompts),
                     "price_per_1k_tokens": m.price_per_1k_tokens,
                     "price_per_1m_input_tokens": m.price_per_1m_input_tokens,
                     "price_per_1m_output_tokens": m.price_per_1m_output_tokens,
                     "price_per_compute_second": m.price_per_compute_second, "cost": cost,
                     "cost_per_1k_answers": cost / u["answers"] * 1000 if u["answers"] else None,
                     "latency_median_s": _percentile(u["latency"], 50), "latency_p95_s": _percentile(u["latency"], 95),
                     "ttft_median_s": _percentile(u["ttft"], 50), "batched": u["batched"],
                     "compute_s_per_answer": u["seconds"] / u["answers"] if u["batched"] and u["answers"] else None,
                     "tokens_estimated": u["estimated"], "error": errors.get(m.name),
                     "criteria": per, "per_prompt_total": totals, "total": total, "overall": total["mean"]})
    ranked = sorted(rows, key=lambda r: (-(r["overall"] if r["overall"] is not None else -1), r["cost"], r["name"]))
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    pending = [c["name"] for c in human_criteria(criteria)
               if not any(r["criteria"][c["name"]]["n"] for r in rows)]
    summary = {"kind": "foundry.bakeoff", "criteria": criteria, "models": rows, "ranking": [r["name"] for r in ranked],
               "human_pending": pending, "prompts": len(prompts),
               "ci": "95% Student-t interval over prompts (mean +- t(0.975, n-1) * s / sqrt(n))"}
    summary["recommendation"] = recommend(rows)
    return summary


def recommend(rows: list[dict]) -> dict:
    """The best contender on the weighted total, the paired difference of every other one to it (95% t-interval
    over the prompts both answered), and the cheapest contender not distinguishably worse (interval includes 0).

    Contenders that failed (an error) or have no total are left out and named."""
    ok = [r for r in rows if r["overall"] is not None and not r.get("error")]
    left_out = [r["name"] for r in rows if r not in ok]
    if not ok:
        return {"best": None, "choose": None, "pairs": {}, "tied": [], "left_out": left_out,
                "text": "No recommendation: no contender has scores yet."}
    best = min(ok, key=lambda r: (-r["overall"], r["cost"], r["name"]))
    pairs, tied = {}, []
    for r in ok:
        if r is best:
            continue
        common = [p for p in best["per_prompt_total"] if p in r["per_prompt_total"]]
        d = mean_ci([r["per_prompt_total"][p] - best["per_prompt_total"][p] for p in common])
        distinct = d["ci_high"] is not None and d["ci_high"] < 0
        pairs[r["name"]] = {"diff": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n": d["n"],
                            "distinguishable": distinct}
        if not distinct:
            tied.append(r)
    cheapest = min([best, *tied], key=lambda r: (r["cost_per_1k_answers"] or 0.0, -r["overall"], r["name"]))
    ns = sorted({p["n"] for p in pairs.values()}) or [best["total"]["n"]]
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}..{ns[-1]}"

    def price(r):
        return money(r["cost_per_1k_answers"]) + " per 1,000 answers"

    if not tied:
        text = (f"Best: {best['name']} (weighted total {best['overall']:.3f}), distinguishably ahead of "
                + ("every other contender" if pairs else "nobody (it is the only contender)")
                + f" (paired 95% intervals of the differences exclude 0, {n_text}) at {price(best)}. "
                + f"Choose {best['name']}.")
    else:
        names = ", ".join(r["name"] for r in tied)
        text = (f"Not distinguishable at {n_text}: {best['name']} has the highest weighted total "
                f"({best['overall']:.3f}), but the paired 95% interval of the difference to it includes 0 for "
                f"{names}. ")
        if cheapest is best:
            text += f"{best['name']} is also the cheapest of them ({price(best)}): choose {best['name']}."
        else:
            text += (f"The cheapest of them is {cheapest['name']} ({price(cheapest)}, against {price(best)} for "
                     f"{best['name']}): choose {cheapest['name']}, unless more prompts separate them.")
    if left_out:
        text += f" Left out (failed or unscored): {', '.join(left_out)}."
    return {"best": best["name"], "choose": cheapest["name"], "tied": [r["name"] for r in tied], "pairs": pairs,
            "left_out": left_out, "n": ns, "text": text,
            "rule": "best = highest weighted total; choose = the cheapest contender (cost per 1,000 answers) whose "
                    "paired 95% interval of the difference to the best includes 0"}


def money(x: float | None) -> str:
    """A cost as the recommendation and the tables write it."""
    if x is None:
        return "-"
    return f"${x:.4f}" if x < 1 else f"${x:,.2f}"
