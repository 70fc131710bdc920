"""Per-model statistics and ranking, the bake-off tables, and a whole bake-off run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from foundry.errors import ConfigError
from foundry.eval.bakeoff.rubric import BakeoffConfig, ModelEntry, load_prompts, load_rubric, resolve_path
from foundry.eval.bakeoff.scoring import score_outputs
from foundry.eval.bakeoff.sheet import blind, human_criteria
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
        return _money(r["cost_per_1k_answers"]) + " per 1,000 answers"

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


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:.4f}" if x < 1 else f"${x:,.2f}"


def _cell(stats: dict, kind: str = "human") -> str:
    if stats["mean"] is None:
        return "pending" if kind == "human" else "no score"
    if stats["half_width"] is None:
        return f"{stats['mean']:.2f} (n={stats['n']})"
    return f"{stats['mean']:.2f} ± {stats['half_width']:.2f}"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(summary: dict) -> str:
    """The decision table (rank order), used by bakeoff.md, `foundry bakeoff summary` and `foundry report`."""
    crits = summary["criteria"]
    head = ["rank", "contender", "kind", *[f"{c['name']} (w={c['weight']:g})" for c in crits], "total",
            "vs best (95% CI)", "cost / 1k answers", "latency median / p95 s", "first token s", "answers"]
    from foundry.utils.tables import md_table

    by_name = {r["name"]: r for r in summary["models"]}
    pairs = (summary.get("recommendation") or {}).get("pairs", {})
    rows = []
    for name in summary["ranking"]:
        r = by_name[name]
        total = r.get("total") or {"mean": r.get("overall"), "half_width": None, "n": 0}
        pair = pairs.get(name)
        vs = ("best" if name == (summary.get("recommendation") or {}).get("best") else
              "-" if pair is None or pair["diff"] is None else
              f"{pair['diff']:+.3f}" + ("" if pair["ci_low"] is None else
                                        f" [{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}]")
              + ("" if pair["distinguishable"] else " ≈"))
        if r.get("batched"):
            latency = f"batch: {r['compute_s_per_answer']:.3f} s/answer"
        else:
            latency = f"{_seconds(r.get('latency_median_s'))} / {_seconds(r.get('latency_p95_s'))}"
        answers = f"{r.get('answers', '-')}/{r.get('expected_answers', summary['prompts'])}"
        if r.get("tokens_estimated"):
            answers += " (tokens estimated)"
        if r.get("error"):
            answers += " FAILED"
        cost = r.get("cost_per_1k_answers")
        rows.append([str(r["rank"]), name, r.get("kind", "local"), *[_cell(r["criteria"][c["name"]], c["type"]) for c in crits],
                     "-" if total["mean"] is None else _cell(total), vs,
                     _money(cost if cost is not None or r.get("answers") == 0 else r.get("cost")), latency,
                     _seconds(r.get("ttft_median_s")), answers])
    return md_table(head, rows)


def render_markdown(summary: dict) -> str:
    rec = summary.get("recommendation") or {}
    parts = ["# Bake-off", "", f"{len(summary['models'])} contenders, {summary['prompts']} prompts.", "",
             f"**Recommendation.** {rec.get('text', '-')}", "", markdown_table(summary), "",
             f"Cells: mean ± half-width of the {summary['ci']}, on each criterion's own scale (automatic 0..1, human "
             "and judge their scale). Total: per prompt, the weighted mean of the criteria mapped to 0..1, then the "
             "mean over prompts. 'vs best': the paired difference to the best total over the prompts both answered "
             "(≈: the interval includes 0, not distinguishable). Cost per 1,000 answers from the contender's prices. "
             f"Rule: {rec.get('rule', '-')}.", ""]
    if (summary.get("plot")):
        parts += [f"![total against cost]({summary['plot']})", ""]
    failed = [r for r in summary["models"] if r.get("error")]
    if failed:
        parts += ["## Contenders that failed", "", *[f"- {r['name']}: {r['error']}" for r in failed],
                  "", "Re-run the same command: it asks only for the missing answers.", ""]
    if summary["human_pending"]:
        parts += [f"Human criteria not yet rated: {', '.join(summary['human_pending'])}. Rate them in the browser "
                  "(foundry bakeoff rate OUT --rater NAME), or fill rating_sheet.csv and re-run with --ratings "
                  "FILLED.csv.", ""]
    if summary.get("agreement"):
        parts += ["## Raters' agreement", "", agreement_text(summary["agreement"]), ""]
    if summary.get("judge"):
        parts += ["## The judge", "", judge_text(summary["judge"]), ""]
    parts += ["## Criteria", ""]
    parts += [f"- **{c['name']}** ({c['type']}, weight {c['weight']:g}): {c['description']}" for c in summary["criteria"]]
    return "\n".join(parts) + "\n"


def judge_text(judge: dict) -> str:
    from foundry.utils.tables import md_table

    lines = [f"Judge: {judge['name']} ({judge['kind']}): {judge['calls']} answers judged, {judge['unparseable']} "
             f"replies unparseable (left out, listed in judgements.jsonl), {judge['input_tokens']} input and "
             f"{judge['output_tokens']} output tokens, cost {_money(judge['cost'])} (the evaluation's, not a "
             "contender's). Blind: no contender name in the prompt; one answer per call, the answers to a prompt "
             "in an order drawn per prompt.", ""]
    if judge.get("agreement"):
        lines += ["Agreement with the people who rated the same answers:", "",
                  md_table(["judge criterion", "human criterion", "answers", "alpha (ordinal)", "Spearman"],
                           [[k, a["compare_with"], str(a["n"]), "-" if a["alpha"] is None else f"{a['alpha']:.3f}",
                             "-" if a["spearman"] is None else f"{a['spearman']:.3f}"]
                            for k, a in judge["agreement"].items()]), ""]
    for name, prompt in judge.get("prompts", {}).items():
        lines += [f"The judge's prompt for {name} (first prompt, first answer):", "", "```", prompt, "```", ""]
    return "\n".join(lines).rstrip()


def agreement_text(agreement: dict) -> str:
    """The agreement table and the answers raters disagree on most (markdown)."""
    from foundry.utils.tables import md_table

    raters = agreement["raters"]
    rows = [[name, "-" if a["alpha"] is None else f"{a['alpha']:.3f}", str(a["raters"]), str(a["answers_rated_twice"]),
             str(a["pairable_values"])] for name, a in agreement["criteria"].items()]
    parts = [f"Raters: {', '.join(raters) if raters else 'none yet'}. {agreement['method']}; alpha needs answers "
             "scored by two or more raters ('-' until then).", "",
             md_table(["criterion", "alpha (ordinal)", "raters", "answers rated by 2+", "pairable scores"], rows)]
    if agreement["disagreements"]:
        parts += ["", "Answers the raters disagree on most:", "",
                  md_table(["blind id", "model", "prompt", "spread", "scores"],
                           [[d["blind_id"], d["model"], d["prompt_id"], f"{d['spread']:.2f}",
                             "; ".join(f"{c}: " + ", ".join(f"{r} {v}" for r, v in vs.items())
                                       for c, vs in d["scores"].items())] for d in agreement["disagreements"]])]
    return "\n".join(parts)


# ---- writing -------------------------------------------------------------------------------------------
def plot_decision(summary: dict, path: Path) -> bool:
    """Total (95% interval) against cost per 1,000 answers, one point per contender; False without scores."""
    rows = [r for r in summary["models"] if r.get("overall") is not None and r.get("cost_per_1k_answers") is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    choose = (summary.get("recommendation") or {}).get("choose")
    for r in rows:
        hw = r["total"].get("half_width") or 0.0
        ax.errorbar([r["cost_per_1k_answers"]], [r["overall"]], yerr=[[hw], [hw]], fmt="o", capsize=4,
                    color="tab:green" if r["name"] == choose else "tab:blue")
        ax.annotate(r["name"] + (" (chosen)" if r["name"] == choose else ""), (r["cost_per_1k_answers"], r["overall"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("cost per 1,000 answers")
    ax.set_ylabel("weighted total (95% interval)")
    ax.set_title(f"Bake-off: {summary['prompts']} prompts")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.1)  # room for the labels
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def decision_text(summary: dict) -> str:
    """What `foundry bakeoff summary` prints: the decision table and the recommendation."""
    lines = [markdown_table(summary), "", "Recommendation: " + (summary.get("recommendation") or {}).get("text", "-")]
    lines += [f"FAILED {r['name']}: {r['error']}" for r in summary["models"] if r.get("error")]
    return "\n".join(lines)


def write_summary(out: Path, summary: dict, quiet: bool = False) -> None:
    from foundry.utils.io import atomic_write_json, atomic_write_text

    if plot_decision(summary, out / "bakeoff.png"):
        summary["plot"] = "bakeoff.png"
    atomic_write_json(out / "bakeoff.json", summary)
    atomic_write_text(out / "bakeoff.md", render_markdown(summary))
    if not quiet:
        print(decision_text(summary))
        if summary.get("agreement"):
            print(agreement_text(summary["agreement"]))


def _stored(out: Path) -> tuple[dict, dict, list[dict]]:
    """(state, key, outputs) that the generation run stored in `out`."""
    from foundry.utils.io import read_json

    state_file, key_file, outputs_file = out / "state.json", out / "blind_key.json", out / "outputs.jsonl"
    for f in (state_file, key_file, outputs_file):
        if not f.is_file():
            raise ConfigError(f"{f}: missing; run 'foundry bakeoff --config BAKEOFF.yaml --out {out}' first")
    state, key = read_json(state_file), read_json(key_file)
    outputs = [json.loads(line) for line in outputs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return state, key, outputs


def rating_store(out: Path):
    """The bake-off's ratings store (`out/ratings.json`), checked against its key and rubric."""
    from foundry.eval.bakeoff.store import RatingStore

    state, key, _ = _stored(out)
    return RatingStore(out, key, state["criteria"])


def add_ratings(out: Path, ratings: str | Path) -> dict:
    """Un-blind a filled sheet against the bake-off in `out`, put its ratings in the ratings store (replacing
    those of the raters it names) and rewrite the summary with the human scores.

    Everything else (criteria, models, prompts, automatic scores) is read from what the generation run
    stored in `out`, so the ratings always meet the rubric their answers were scored with.
    """
    from foundry.eval.bakeoff.sheet import read_sheet

    state, key, _ = _stored(out)
    sheet = read_sheet(ratings, key, state["criteria"])  # validated before anything is written
    rating_store(out).replace(sheet)
    return refresh_summary(out, ratings=str(ratings))


def refresh_summary(out: Path, ratings: str | None = None, quiet: bool = False) -> dict:
    """Rewrite `out/bakeoff.json` and `bakeoff.md` from the generation run and the ratings store: human
    criteria averaged over raters per answer, then mean and interval over prompts, the raters' agreement,
    and the judge's agreement with them."""
    from foundry.eval.bakeoff.judge import judge_agreement
    from foundry.eval.bakeoff.store import agreement, per_answer_means

    state, key, outputs = _stored(out)
    criteria = state["criteria"]
    raters = rating_store(out).load()
    auto = {(o["model"], o["prompt_id"]): o["scores"] for o in outputs}
    models = [ModelEntry(**m) for m in state["models"]]
    human = per_answer_means(raters, key)
    summary = summarise(criteria, models, state["usage"], auto, human, state["prompts"], state.get("errors"))
    summary.update(config=state.get("config_path"), ratings=ratings or str(out / "ratings.json"),
                   created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if human_criteria(criteria):
        summary["agreement"] = agreement(raters, key, criteria)
    if state.get("judge"):
        summary["judge"] = {**state["judge"], "agreement": judge_agreement(auto, human, criteria)}
    write_summary(out, summary, quiet)
    return summary


# ---- a whole bake-off run -------------------------------------------------------------------------------
def _contenders(cfg, cfg_path: Path, model_specs: list[str]) -> tuple[list[ModelEntry], ModelEntry | None]:
    """The contenders and the judge, `--model NAME=PATH` applied, kinds checked, paths resolved."""
    base = cfg_path.parent
    models = list(cfg.models)
    judge = cfg.judge
    for spec in model_specs:
        if "=" not in spec:
            raise ConfigError(f"--model {spec!r}: expected NAME=PATH")
        name, path = spec.split("=", 1)
        known = next((i for i, m in enumerate(models) if m.name == name), None)
        if known is None and judge is not None and judge.name == name:
            judge = _with_path(judge, path)  # a judge of its own (a judge named after a contender follows it)
        elif known is None:
            models.append(ModelEntry(name=name, path=path))
        else:
            models[known] = _with_path(models[known], path)
    if not models:
        raise ConfigError(f"{cfg_path}: no models; list them under 'models' or pass --model NAME=PATH")
    if len({m.name for m in models}) != len(models):
        raise ConfigError(f"{cfg_path}: model names must be unique")
    if judge is not None and judge.kind == "local" and not judge.path:
        same = next((m for m in models if m.name == judge.name), None)  # `judge: {name: CONTENDER}`
        if same is None:
            raise ConfigError(f"{cfg_path}: the judge '{judge.name}' has no path, endpoint or serve, and no "
                              f"contender has that name; pass --model {judge.name}=PATH")
        own = {"max_new_tokens": judge.max_new_tokens, "temperature": judge.temperature, "top_p": judge.top_p}
        judge = same.model_copy(update={**own, **{k: v for k, v in judge.model_dump(exclude_unset=True).items()
                                                  if k != "name"}})  # the model and prices; not its sampling
    resolved = []
    for m in models + ([judge] if judge is not None else []):
        m.check_kind(str(cfg_path))
        if m.kind == "local":
            if not m.path:
                raise ConfigError(f"{cfg_path}: model '{m.name}' has no path; pass --model {m.name}=PATH")
            m = m.model_copy(update={"path": str(resolve_path(m.path, base))})
            if not Path(m.path).exists():
                raise ConfigError(f"{cfg_path}: model '{m.name}': {m.path} not found")
        elif m.kind == "serve":
            if not m.serve.model:
                raise ConfigError(f"{cfg_path}: contender '{m.name}' (serve) has no model; pass --model {m.name}=PATH")
            m = m.model_copy(update={"serve": m.serve.model_copy(update={"model": str(resolve_path(m.serve.model, base))})})
            if not Path(m.serve.model).exists():
                raise ConfigError(f"{cfg_path}: contender '{m.name}': serve model {m.serve.model} not found")
        elif m.endpoint.tokenizer:
            m = m.model_copy(update={"endpoint": m.endpoint.model_copy(
                update={"tokenizer": str(resolve_path(m.endpoint.tokenizer, base))})})
        resolved.append(m)
    return resolved[:len(models)], (resolved[-1] if judge is not None else None)


def _with_path(m: ModelEntry, path: str) -> ModelEntry:
    if m.endpoint:
        raise ConfigError(f"--model {m.name}={path}: '{m.name}' is an endpoint; --model sets local or served paths")
    if m.serve:
        return m.model_copy(update={"serve": m.serve.model_copy(update={"model": path})})
    return m.model_copy(update={"path": path})


def run_bakeoff(cfg_path: Path, out: Path, overrides: list[str] | None = None, model_specs: list[str] | None = None,
                style_model: str | None = None, overwrite: bool = False) -> dict:
    """Ask, score and blind a bake-off as the config at `cfg_path` says (plus `NAME=PATH` model specs) into
    `out`; returns the summary. Into an `out` that holds this bake-off's answers it resumes: only the answers
    (and judgements) not yet on disk are asked for. A contender that fails is reported and the others
    finish; the run then raises one FoundryError naming each failure, after writing everything."""
    from foundry.checkpoints import pick_device
    from foundry.config import load_config
    from foundry.errors import FoundryError
    from foundry.eval.bakeoff.collect import ANSWERS, JUDGEMENTS, AnswerLog, ask_contenders, ask_judge
    from foundry.utils.io import atomic_write_json, atomic_write_text, read_json

    cfg = load_config(BakeoffConfig, cfg_path, overrides)
    models, judge = _contenders(cfg, cfg_path, model_specs or [])
    base = cfg_path.parent
    criteria = load_rubric(resolve_path(cfg.rubric, base), style_model)
    if any(c["type"] == "judge" for c in criteria) and judge is None:
        raise ConfigError(f"{cfg_path}: the rubric has judge criteria; name the judge under 'judge:' "
                          "(a contender's name, or a path, endpoint or serve of its own)")
    prompts = load_prompts(resolve_path(cfg.prompts, base), criteria)
    if out.exists() and any(out.iterdir()):
        if overwrite:
            for f in (ANSWERS, JUDGEMENTS):
                (out / f).unlink(missing_ok=True)
        elif not (out / ANSWERS).is_file():
            raise ConfigError(f"{out}: already holds a bake-off (or other files); pass --overwrite to regenerate "
                              "it, or --ratings FILLED.csv to add ratings")
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    log = AnswerLog(out / ANSWERS)
    try:
        answers, errors = ask_contenders(cfg, models, prompts, log, device, out)
    finally:
        log.close()
    judge_log = AnswerLog(out / JUDGEMENTS)
    try:
        judged, judge_info, judge_error = ask_judge(cfg, judge, criteria, prompts, answers, judge_log, device, out)
    finally:
        judge_log.close()
    if judge_error:
        errors[f"judge {judge.name}"] = judge_error
    auto = score_outputs(criteria, answers, prompts, device)
    for a in answers:
        a["scores"] = {**auto[(a["model"], a["prompt_id"])], **judged.get((a["model"], a["prompt_id"]), {})}
    previous = read_json(out / "blind_key.json") if (out / "blind_key.json").is_file() and not overwrite else None
    sheet, key = blind(answers, prompts, criteria, previous=previous)
    atomic_write_text(out / "outputs.jsonl", "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in answers))
    atomic_write_json(out / "state.json", {"config_path": str(cfg_path), "config": cfg.model_dump(mode="json"),
                                           "models": [m.model_dump() for m in models], "criteria": criteria,
                                           "prompts": prompts, "usage": usage_of(answers),
                                           "errors": {k: v for k, v in errors.items() if not k.startswith("judge ")},
                                           "judge": judge_info})
    atomic_write_text(out / "rating_sheet.csv", sheet)
    atomic_write_json(out / "blind_key.json", key)
    summary = refresh_summary(out)
    summary.update(config=str(cfg_path), ratings=None)
    if errors:
        missing = sum(r["expected_answers"] - r["answers"] for r in summary["models"])
        raise FoundryError(f"bakeoff {out}: {len(errors)} failed ({'; '.join(errors.values())}); {missing} answers "
                           "missing: re-run the same command to ask only for those")
    return summary
