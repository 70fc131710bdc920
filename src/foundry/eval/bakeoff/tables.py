"""The bake-off's tables and texts (markdown and the terminal) and its decision plot, rendered from a summary."""

from __future__ import annotations

from pathlib import Path

from foundry.eval.bakeoff.decision import money
from foundry.utils.tables import md_table


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
                     money(cost if cost is not None or r.get("answers") == 0 else r.get("cost")), latency,
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
    lines = [f"Judge: {judge['name']} ({judge['kind']}): {judge['calls']} answers judged, {judge['unparseable']} "
             f"replies unparseable (left out, listed in judgements.jsonl), {judge['input_tokens']} input and "
             f"{judge['output_tokens']} output tokens, cost {money(judge['cost'])} (the evaluation's, not a "
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
