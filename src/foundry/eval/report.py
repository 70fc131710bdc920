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

from pathlib import Path

from foundry.eval.report_html import markdown_to_html
from foundry.eval.report_text import print_findings, render_report
from foundry.eval.run_view import discover

__all__ = ["discover", "markdown_to_html", "print_findings", "render_report", "write_report"]


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
