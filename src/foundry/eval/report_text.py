"""The report card's Markdown: headlines, findings, stages and timing, loss curves (PNG), final metrics, transfer and
image-text sections, evaluation and bake-off tables; and the findings table on the terminal."""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

from foundry.eval.run_view import MAX_JSON_BYTES, RunView, RunStage, walk_run
from foundry.utils.io import read_json_or_none
from foundry.utils.tables import fmt, md_table


def loss_series(metrics: list[dict]) -> dict[str, tuple[list, list]]:
    """{"train": (steps, losses), "val/loss": (...), ...}: training loss and every evaluation loss."""
    series: dict[str, tuple[list, list]] = {}
    for rec in metrics:
        if rec.get("event"):
            continue
        for key, value in rec.items():
            if key == "loss" or key.endswith("/loss"):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    name = "train" if key == "loss" else key
                    series.setdefault(name, ([], []))
                    series[name][0].append(rec["step"])
                    series[name][1].append(value)
    return dict(sorted(series.items(), key=lambda kv: (kv[0] != "train", kv[0])))


def plot_losses(stage: RunStage, path: Path) -> bool:
    """A PNG of the stage's loss curves; False when it has no loss records."""
    series = loss_series(stage.metrics)
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (steps, values) in series.items():
        style = {"linewidth": 1.2} if name == "train" else {"marker": "o", "markersize": 4, "linewidth": 1.6}
        ax.plot(steps, values, label=name, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{stage.name} ({stage.kind})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True


# ---- tables ----------------------------------------------------------------------------------------
def final_metrics(stage: RunStage) -> list[tuple[str, str]]:
    """(name, value) pairs: the stage's scalar results (run.json), else its last logged values."""
    pairs = []
    for key, value in stage.results.items():
        if isinstance(value, (int, float, str, bool)) and value is not None and key != "status":
            pairs.append((key, fmt(value)))
    if not pairs and stage.metrics:
        last: dict = {}
        for rec in stage.metrics:
            last.update({k: v for k, v in rec.items() if isinstance(v, (int, float))})
        pairs = [(k, fmt(v)) for k, v in last.items()]
    if "totals" in stage.results and isinstance(stage.results["totals"], dict):  # a dataset stage
        docs = stage.results["totals"].get("documents", {})
        for k in ("read", "kept", "train", "val"):
            if k in docs:
                pairs.append((f"documents {k}", fmt(docs[k])))
        for k, v in (docs.get("dropped") or {}).items():
            pairs.append((f"dropped {k}", fmt(v)))
    return pairs


def eval_tables(results: dict) -> str:
    from foundry.eval.harness import task_rows

    parts = []
    models = results.get("models", [])
    datasets = sorted({d for m in models for d in m.get("perplexity", {})})
    if datasets:
        rows = []
        for m in models:
            for d in datasets:
                r = m["perplexity"].get(d)
                if r:
                    rows.append([m["name"], d, fmt(r["loss"]), fmt(r["ppl"]), fmt(r["bpb"]),
                                 fmt(r["tokens"])])
        parts.append(md_table(["model", "dataset (val)", "loss", "perplexity", "bits/byte", "tokens"], rows))
    rows = task_rows(results)
    if rows:
        parts.append(md_table(["task", "model", "n", "acc ± stderr", "acc_norm / grounded"], rows))
    shots = results.get("shots")
    if shots:
        parts.append(f"Multiple-choice tasks scored with {shots} few-shot examples.")
    return "\n\n".join(parts)


# ---- the report ------------------------------------------------------------------------------------
def render_findings(findings: list[dict]) -> list[str]:
    """The Findings section: every claim's measured effect, interval and verdict, computed, never typed."""
    from foundry.eval.findings import FINDINGS_HEADER, FINDINGS_NOTE, finding_rows

    if not findings:
        return []
    verdicts = [f["verdict"] for f in findings]
    summary = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
    return ["## Findings", "", f"{len(findings)} claims: {summary}. {FINDINGS_NOTE}", "",
            md_table(FINDINGS_HEADER, finding_rows(findings)), ""]


def render_report(view: RunView, out_dir: Path, findings: list[dict] = ()) -> str:
    from foundry.eval.bakeoff.tables import markdown_table

    title = (view.pipeline or {}).get("name") or view.root.resolve().name
    lines = [f"# Report card: {title}", "",
             f"Run directory `{view.root}`, report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             "See MODEL_CARD.md for lineage, data provenance and intended use.", ""]
    lines += render_findings(list(findings))
    lines += headlines(view)
    # Timing
    lines += ["## Stages and timing", ""]
    rows = []
    for s in view.stages:
        top = s.name.split("/")[0]
        seconds = view.timing.get(top)
        train_s = s.results.get("train_seconds", s.results.get("seconds"))
        rows.append([s.name, s.kind, s.record.get("created", "-"), fmt(seconds) if seconds is not None else "-",
                     fmt(train_s) if isinstance(train_s, (int, float)) else "-",
                     str(s.results.get("status", "-"))])
    listed = {s.name.split("/")[0] for s in view.stages}
    for name, seconds in view.timing.items():
        if name not in listed:
            rows.append([name, "-", "-", fmt(seconds), "-", "-"])
    lines += [md_table(["stage", "kind", "created", "wall s (pipeline)", "train s", "status"], rows), ""]
    if view.pipeline and view.pipeline.get("seconds") is not None:
        lines += [f"Whole pipeline (last complete record): {fmt(view.pipeline['seconds'])} s.", ""]
    elif view.timing:
        lines += [f"Sum of finished stages: {fmt(round(sum(view.timing.values()), 1))} s.", ""]
    # Training curves and final metrics
    lines += ["## Stages", ""]
    for s in view.stages:
        lines += [f"### {s.name} ({s.kind})", ""]
        plot = out_dir / "plots" / f"loss_{re.sub(r'[^A-Za-z0-9_.-]+', '_', s.name)}.png"
        if plot_losses(s, plot):
            lines += [f"![loss curves of {s.name}](plots/{plot.name})", ""]
            series = loss_series(s.metrics)
            summary = []
            for name, (steps, values) in series.items():
                summary.append([name, fmt(steps[0]), fmt(values[0]), fmt(steps[-1]), fmt(values[-1]), fmt(min(values))])
            lines += [md_table(["curve", "first step", "first loss", "last step", "last loss", "min loss"], summary), ""]
        metrics = final_metrics(s)
        if metrics:
            lines += ["Final metrics:", "", md_table(["metric", "value"], [list(p) for p in metrics]), ""]
    lines += transfer_sections(view.root, out_dir)
    lines += image_text_sections(view.root, out_dir)
    # Evaluation
    if view.evals:
        lines += ["## Evaluation", ""]
        for path, results in view.evals:
            lines += [f"From `{_rel(path, view.root)}`:", "", eval_tables(results), ""]
    if view.bakeoffs:
        lines += ["## Bake-off", ""]
        for path, summary in view.bakeoffs:
            lines += [f"From `{_rel(path, view.root)}` ({summary.get('prompts', '?')} prompts; cells: mean ± "
                      f"half-width of the {summary.get('ci', '95% interval')}):", "", markdown_table(summary), ""]
            if summary.get("human_pending"):
                lines += [f"Human criteria pending: {', '.join(summary['human_pending'])}.", ""]
            if summary.get("recommendation"):
                lines += [f"**Recommendation.** {summary['recommendation']['text']}", ""]
            elif summary.get("ranking"):
                lines += [f"Ranking: {' > '.join(summary['ranking'])}.", ""]
            png = path.parent / str(summary.get("plot") or "bakeoff.png")
            if summary.get("plot") and png.is_file():
                name = f"bakeoff_{re.sub(r'[^A-Za-z0-9_.-]+', '_', _rel(path.parent, view.root))}.png"
                (out_dir / "plots").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, out_dir / "plots" / name)
                lines += [f"![bake-off: total against cost](plots/{name})", ""]
            if summary.get("judge"):
                from foundry.eval.bakeoff.tables import judge_text

                lines += ["#### The judge", "", judge_text(summary["judge"]), ""]
            failed = [m for m in summary.get("models", []) if m.get("error")]
            lines += [f"- contender {m['name']} failed: {m['error']}" for m in failed] + ([""] if failed else [])
    return "\n".join(lines).rstrip() + "\n"


def transfer_sections(root: Path, out_dir: Path) -> list[str]:
    """Each `foundry transfer` curve under the run (transfer.md + transfer.png): its plot and table."""
    lines = []
    for d in walk_run(root):
        table, png = d / "transfer.md", d / "transfer.png"
        if not (table.is_file() and png.is_file()):
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", d.relative_to(root).as_posix() if d != root else root.resolve().name)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out_dir / "plots" / f"transfer_{name}.png")
        body = table.read_text(encoding="utf-8").splitlines()
        heading = body[0].lstrip("# ") if body and body[0].startswith("#") else name
        lines += ["## Transfer curve", "", f"### {heading}", "", f"![transfer curve](plots/transfer_{name}.png)", "",
                  *body[1:], ""]
    return lines


def image_text_sections(root: Path, out_dir: Path) -> list[str]:
    """Each `foundry clip eval` under the run (its report.md and retrieval grids): zero-shot, retrieval and
    linear-probe table, and the images each class prompt retrieves."""
    lines = []
    for d in walk_run(root):
        results, table = d / "results.json", d / "report.md"
        if not (table.is_file() and results.is_file()) or results.stat().st_size > MAX_JSON_BYTES:
            continue
        data = read_json_or_none(results)
        if not (isinstance(data, dict) and data.get("kind") == "foundry.clip_eval"):
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", d.relative_to(root).as_posix() if d != root else root.resolve().name)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        body = table.read_text(encoding="utf-8")
        for png in sorted(d.glob("retrieval-*.png")):
            shutil.copyfile(png, out_dir / "plots" / f"clip_{name}_{png.name}")
            body = body.replace(f"]({png.name})", f"](plots/clip_{name}_{png.name})")
        body_lines = body.splitlines()
        heading = body_lines[0].lstrip("# ") if body_lines and body_lines[0].startswith("#") else name
        if not lines:
            lines += ["## Image-text evaluation", ""]
        lines += [f"### {heading}", "", *[ln.replace("## ", "#### ", 1) if ln.startswith("## ") else ln
                                             for ln in body_lines[1:]], ""]
    return lines


def headlines(view: RunView) -> list[str]:
    """A few bullet points: each training stage's best validation loss, each task's scores, the bake-off winner."""
    bullets = []
    for s in view.stages:
        if s.spec is not None and s.spec.trains:
            best = {k.removeprefix("best/"): v for k, v in s.results.items()
                    if k.startswith("best/") and isinstance(v, (int, float))}
            if not best and isinstance(s.results.get("val/loss"), (int, float)):
                best = {"val/loss": s.results["val/loss"]}
            if best:
                bullets.append(f"- **{s.name}** ({s.kind}): best " + ", ".join(f"{k} {fmt(v)}" for k, v in best.items()))
    for _, results in view.evals:
        tasks = sorted({t for m in results.get("models", []) for t in m.get("tasks", {})})
        for t in tasks:
            scores = [(m["name"], m["tasks"][t]["acc"]) for m in results["models"] if t in m.get("tasks", {})]
            bullets.append(f"- **{t}** accuracy: " + ", ".join(f"{n} {fmt(a, 3)}" for n, a in scores))
    for _, summary in view.bakeoffs:
        if summary.get("ranking"):
            rec = summary.get("recommendation") or {}
            bullets.append(f"- **bake-off** ranking: {' > '.join(summary['ranking'])}"
                           + (f"; choose {rec['choose']}" if rec.get("choose") else "")
                           + (" (human criteria pending)" if summary.get("human_pending") else ""))
    return ["## Headlines", "", *bullets, ""] if bullets else []


def print_findings(findings: list[dict]) -> None:
    """The Findings table on the terminal (the quickstart ends with it)."""
    from rich.console import Console
    from rich.table import Table

    from foundry.eval.findings import FINDINGS_HEADER, finding_rows

    table = Table(title="Findings (effect towards improvement, 95% interval)", show_lines=True)
    for col in FINDINGS_HEADER:
        table.add_column(col)
    for row in finding_rows(findings):
        table.add_row(*[cell.replace("**", "") for cell in row])
    Console(width=160).print(table)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
