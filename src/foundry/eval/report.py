"""`foundry report RUN_DIR`: the report card (report.md + report.html + loss plots) and MODEL_CARD.md of a run.

What it reads (everything a pipeline run leaves behind, found by walking RUN_DIR):
- stage directories: any directory holding `run.json` (`foundry.utils.io.write_run_record`: stage,
  created, code_version, config, parents, data_manifests, results) and, for training stages,
  `metrics.jsonl` (training records carry `step` and `loss`; evaluation records carry `step` and keys
  like `val/loss` or `val/<dataset>/loss`, as `foundry.train.loop` writes them);
- evaluation results: any JSON file with `"kind": "foundry.eval"` (`foundry eval --out`);
- bake-off summaries: any JSON file with `"kind": "foundry.bakeoff"` (`foundry bakeoff`);
- timing: `RUN/.pipeline/<stage>.json` (seconds per finished stage) and `RUN/pipeline.json`.
`checkpoints/`, `tokens/`, `tb/` and hidden directories are not searched.

What it writes to `--out` (default RUN_DIR): `report.md`, `report.html` (the same markdown rendered),
`plots/loss_<stage>.png` (one per training stage: training loss and every evaluation loss by step), and
`MODEL_CARD.md` (`foundry.eval.modelcard`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from foundry.errors import ConfigError, FoundryError
from foundry.utils.io import read_metrics
from foundry.utils.tables import md_table

SKIP_DIRS = {"checkpoints", "tokens", "tb", "plots", "__pycache__"}
MAX_JSON_BYTES = 20 << 20


@dataclass
class Stage:
    name: str  # path relative to the run directory
    dir: Path
    record: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.record.get("stage", "?"))

    @property
    def results(self) -> dict:
        r = self.record.get("results")
        return r if isinstance(r, dict) else {}


@dataclass
class RunView:
    root: Path
    stages: list[Stage]
    evals: list[tuple[Path, dict]]
    bakeoffs: list[tuple[Path, dict]]
    timing: dict  # stage name -> seconds (from the pipeline's state files)
    pipeline: dict | None


def _walk(root: Path, depth: int = 4):
    """Directories under `root` (itself included), skipping checkpoints, shards and hidden directories."""
    yield root
    if depth == 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return
    for child in children:
        if child.name.startswith(".") or child.name in SKIP_DIRS or child.name.endswith(".tmp"):
            continue
        yield from _walk(child, depth - 1)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def discover(run_dir: str | Path) -> RunView:
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: run directory not found")
    stages, evals, bakeoffs = [], [], []
    for d in _walk(root):
        run_json = d / "run.json"
        if run_json.is_file():
            record = _read_json(run_json)
            if not isinstance(record, dict):
                raise FoundryError(f"{run_json}: not valid JSON; the stage record is damaged")
            name = root.resolve().name if d == root else d.relative_to(root).as_posix()
            stages.append(Stage(name, d, record, read_metrics(d)))
        for f in sorted(d.glob("*.json")):
            if f.name == "run.json" or f.stat().st_size > MAX_JSON_BYTES:
                continue
            data = _read_json(f)
            if isinstance(data, dict) and data.get("kind") == "foundry.eval":
                evals.append((f, data))
            elif isinstance(data, dict) and data.get("kind") == "foundry.bakeoff":
                bakeoffs.append((f, data))
    timing, order = {}, {}
    state = root / ".pipeline"
    if state.is_dir():
        for f in state.glob("*.json"):
            data = _read_json(f)
            if isinstance(data, dict) and "seconds" in data:
                timing[f.stem] = data["seconds"]
    pipeline = _read_json(root / "pipeline.json") if (root / "pipeline.json").is_file() else None
    if isinstance(pipeline, dict):
        for i, entry in enumerate(pipeline.get("stages", [])):
            order[entry.get("name")] = i
    if not stages and not evals and not bakeoffs:
        raise ConfigError(f"{root}: no run.json, eval results or bake-off found; is this a foundry run directory?")
    # Pipeline order where the pipeline recorded one, else the order the stages finished in.
    stages.sort(key=lambda s: (order.get(s.name.split("/")[0], len(order)), str(s.record.get("created", "")), s.name))
    return RunView(root, stages, evals, bakeoffs, timing, pipeline if isinstance(pipeline, dict) else None)


# ---- plots -----------------------------------------------------------------------------------------
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


def plot_losses(stage: Stage, path: Path) -> bool:
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
def fmt(x, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def final_metrics(stage: Stage) -> list[tuple[str, str]]:
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
    from foundry.eval.bakeoff.summary import markdown_table

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
                from foundry.eval.bakeoff.summary import judge_text

                lines += ["#### The judge", "", judge_text(summary["judge"]), ""]
            failed = [m for m in summary.get("models", []) if m.get("error")]
            lines += [f"- contender {m['name']} failed: {m['error']}" for m in failed] + ([""] if failed else [])
    return "\n".join(lines).rstrip() + "\n"


def transfer_sections(root: Path, out_dir: Path) -> list[str]:
    """Each `foundry transfer` curve under the run (transfer.md + transfer.png): its plot and table."""
    lines = []
    for d in _walk(root):
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
    for d in _walk(root):
        results, table = d / "results.json", d / "report.md"
        if not (table.is_file() and results.is_file()) or results.stat().st_size > MAX_JSON_BYTES:
            continue
        data = _read_json(results)
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
        if s.kind in ("pretrain", "continue", "sft", "dpo"):
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


REPORT_CSS = """
:root{color-scheme:light;--ink:#1d1d1f;--muted:#5f6368;--line:#dadce0;--stripe:#f6f7f9;--accent:#1a5fb4}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);
 max-width:72rem;margin:1.5rem auto;padding:0 1.2rem;line-height:1.5;font-size:15px}
h1{font-size:1.7rem;margin:.2em 0 .6em}h2{font-size:1.3rem;margin-top:2em;border-bottom:1px solid var(--line);
 padding-bottom:.2em}h3{font-size:1.08rem;margin-top:1.5em}
a{color:var(--accent)}p,li{max-width:52rem}
.table-wrap{overflow-x:auto;margin:1em 0;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.92em;min-width:100%}
td,th{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;white-space:nowrap}
th{background:var(--stripe);position:sticky;top:0}tr:nth-child(even) td{background:#fbfbfc}
td:first-child,th:first-child{text-align:left}td{white-space:normal}
img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
code{background:#f4f4f4;padding:0 .2em;border-radius:3px;font-size:.92em}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto;border-radius:6px}
@media print{body{max-width:none}.table-wrap{overflow:visible;border:0}}
"""


def markdown_to_html(text: str, title: str) -> str:
    """A self-contained page: system fonts, inline CSS, no scripts, nothing fetched from the network (plots
    are the relative `plots/*.png` files beside it); wide tables scroll sideways instead of the page."""
    import html
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    style = " ".join(line.strip() for line in REPORT_CSS.strip().splitlines())
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, model_stage: str | None = None,
                 findings_spec: str | Path | None = None) -> dict:
    """Write report.md, report.html, plots, MODEL_CARD.md and, when the run states claims (`findings_spec`,
    else `RUN/findings.yaml`), findings.json; returns their paths."""
    from foundry.eval.findings import SPEC_FILE, compute_findings, read_claims
    from foundry.eval.modelcard import render_model_card
    from foundry.utils.io import atomic_write_json, atomic_write_text

    view = discover(run_dir)
    out = Path(out_dir) if out_dir is not None else view.root
    spec = Path(findings_spec) if findings_spec else view.root / SPEC_FILE
    claims = read_claims(spec) if findings_spec or spec.is_file() else []
    out.mkdir(parents=True, exist_ok=True)
    card = render_model_card(view, model_stage)  # before writing anything: a bad --model fails cleanly
    findings = compute_findings(claims, view.root)
    report = render_report(view, out, findings)
    if claims:
        atomic_write_json(out / "findings.json", {"kind": "foundry.findings", "findings": findings})
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "report.html", markdown_to_html(report, "foundry report"))
    atomic_write_text(out / "MODEL_CARD.md", card)
    return {"report": out / "report.md", "html": out / "report.html", "model_card": out / "MODEL_CARD.md",
            "plots": sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else [],
            "findings": findings}
