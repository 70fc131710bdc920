"""Per-model statistics and ranking, the bake-off tables, and a whole bake-off run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from foundry.errors import ConfigError
from foundry.eval.bakeoff.rubric import BakeoffConfig, ModelEntry, load_prompts, load_rubric, resolve_path
from foundry.eval.bakeoff.scoring import generate_outputs, score_outputs
from foundry.eval.bakeoff.sheet import blind, human_criteria, read_ratings
from foundry.eval.stats import mean_ci


# ---- the summary -----------------------------------------------------------------------------------
def summarise(criteria: list[dict], models: list[ModelEntry], usage: dict, auto: dict, human: dict | None,
              prompts: list[dict]) -> dict:
    """Per model and criterion: mean, 95% t-interval, n; weighted overall score; cost; ranking."""
    rows = []
    for m in models:
        per: dict = {}
        weighted, weights = 0.0, 0.0
        for c in criteria:
            source = human if c["type"] == "human" else auto
            values = [source[(m.name, p["id"])][c["name"]] for p in prompts
                      if source is not None and c["name"] in source.get((m.name, p["id"]), {})
                      and source[(m.name, p["id"])][c["name"]] is not None]
            stats = mean_ci(values)
            if c["type"] == "human":
                lo, hi = c["scale"]
                stats["normalised"] = None if stats["mean"] is None else (stats["mean"] - lo) / (hi - lo)
            else:
                stats["normalised"] = stats["mean"]
            per[c["name"]] = stats
            if stats["normalised"] is not None and c["weight"] > 0:
                weighted += c["weight"] * stats["normalised"]
                weights += c["weight"]
        u = usage.get(m.name, {"tokens": 0, "seconds": 0.0})
        cost = u["tokens"] / 1000 * m.price_per_1k_tokens + u["seconds"] * m.price_per_compute_second
        rows.append({"name": m.name, "path": m.path, "tokens": u["tokens"], "seconds": round(u["seconds"], 6),
                     "price_per_1k_tokens": m.price_per_1k_tokens,
                     "price_per_compute_second": m.price_per_compute_second, "cost": cost,
                     "criteria": per, "overall": weighted / weights if weights else None})
    ranked = sorted(rows, key=lambda r: (-(r["overall"] if r["overall"] is not None else -1), r["cost"], r["name"]))
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    pending = [c["name"] for c in human_criteria(criteria)
               if not any(r["criteria"][c["name"]]["n"] for r in rows)]
    return {"kind": "foundry.bakeoff", "criteria": criteria, "models": rows, "ranking": [r["name"] for r in ranked],
            "human_pending": pending, "prompts": len(prompts),
            "ci": "95% Student-t interval over prompts (mean +- t(0.975, n-1) * s / sqrt(n))"}


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "pending"
    if stats["half_width"] is None:
        return f"{stats['mean']:.2f} (n={stats['n']})"
    return f"{stats['mean']:.2f} ± {stats['half_width']:.2f}"


def markdown_table(summary: dict) -> str:
    """The bake-off table (rank order), used by bakeoff.md and by `foundry report`."""
    crits = summary["criteria"]
    head = ["rank", "model", *[f"{c['name']} (w={c['weight']:g})" for c in crits], "overall", "tokens",
            "compute s", "cost"]
    from foundry.utils.tables import md_table

    by_name = {r["name"]: r for r in summary["models"]}
    rows = []
    for name in summary["ranking"]:
        r = by_name[name]
        overall = "-" if r["overall"] is None else f"{r['overall']:.3f}"
        rows.append([str(r["rank"]), name, *[_cell(r["criteria"][c["name"]]) for c in crits], overall, str(r["tokens"]),
                     f"{r['seconds']:.2f}", f"{r['cost']:.4f}"])
    return md_table(head, rows)


def render_markdown(summary: dict) -> str:
    parts = ["# Bake-off", "", f"{len(summary['models'])} models, {summary['prompts']} prompts. "
             f"Cells: mean ± half-width of the {summary['ci']}; automatic criteria score 0..1, human criteria "
             "their own scale. Overall: weighted mean of criteria mapped to 0..1.", "", markdown_table(summary), ""]
    if summary["human_pending"]:
        parts += [f"Human criteria not yet rated: {', '.join(summary['human_pending'])}. Rate them in the browser "
                  "(foundry bakeoff rate OUT --rater NAME), or fill rating_sheet.csv and re-run with --ratings "
                  "FILLED.csv.", ""]
    if summary.get("agreement"):
        parts += ["## Raters' agreement", "", agreement_text(summary["agreement"]), ""]
    parts += ["## Criteria", ""]
    parts += [f"- **{c['name']}** ({c['type']}, weight {c['weight']:g}): {c['description']}" for c in summary["criteria"]]
    return "\n".join(parts) + "\n"


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
def write_summary(out: Path, summary: dict, quiet: bool = False) -> None:
    from foundry.utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bakeoff.json", summary)
    atomic_write_text(out / "bakeoff.md", render_markdown(summary))
    if not quiet:
        print(markdown_table(summary))
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
    criteria averaged over raters per answer, then mean and interval over prompts, and the raters'
    agreement."""
    from foundry.eval.bakeoff.store import agreement, per_answer_means

    state, key, outputs = _stored(out)
    criteria = state["criteria"]
    raters = rating_store(out).load()
    auto = {(o["model"], o["prompt_id"]): o["scores"] for o in outputs}
    models = [ModelEntry(**m) for m in state["models"]]
    summary = summarise(criteria, models, state["usage"], auto, per_answer_means(raters, key), state["prompts"])
    summary.update(config=state.get("config_path"), ratings=ratings or str(out / "ratings.json"),
                   created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if human_criteria(criteria):
        summary["agreement"] = agreement(raters, key, criteria)
    write_summary(out, summary, quiet)
    return summary


def run_bakeoff(cfg_path: Path, out: Path, overrides: list[str] | None = None, model_specs: list[str] | None = None,
                style_model: str | None = None, overwrite: bool = False) -> dict:
    """Generate, score and blind a bake-off as the config at `cfg_path` says (plus `NAME=PATH` model specs)
    into `out`; returns the summary (human criteria pending)."""
    from foundry.checkpoints import pick_device
    from foundry.config import load_config
    from foundry.utils.io import atomic_write_json, atomic_write_text

    model_specs = model_specs or []
    cfg = load_config(BakeoffConfig, cfg_path, overrides)
    base = cfg_path.parent
    models = list(cfg.models)
    for spec in model_specs:
        if "=" not in spec:
            raise ConfigError(f"--model {spec!r}: expected NAME=PATH")
        name, path = spec.split("=", 1)
        known = next((i for i, m in enumerate(models) if m.name == name), None)
        if known is None:
            models.append(ModelEntry(name=name, path=path))
        else:
            models[known] = models[known].model_copy(update={"path": path})
    if not models:
        raise ConfigError(f"{cfg_path}: no models; list them under 'models' or pass --model NAME=PATH")
    if len({m.name for m in models}) != len(models):
        raise ConfigError(f"{cfg_path}: model names must be unique")
    for m in models:
        if not m.path:
            raise ConfigError(f"{cfg_path}: model '{m.name}' has no path; pass --model {m.name}=PATH")
    models = [m.model_copy(update={"path": str(resolve_path(m.path, base))}) for m in models]
    criteria = load_rubric(resolve_path(cfg.rubric, base), style_model)
    prompts = load_prompts(resolve_path(cfg.prompts, base), criteria)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: already holds a bake-off; pass --overwrite to regenerate it, or "
                          "--ratings FILLED.csv to add ratings")
    for m in models:
        if not Path(m.path).exists():
            raise ConfigError(f"{cfg_path}: model '{m.name}': {m.path} not found")
    device = pick_device(cfg.device)
    outputs, usage = generate_outputs(cfg, models, prompts, device)
    auto = score_outputs(criteria, outputs, prompts, device)
    for o in outputs:
        o["scores"] = auto[(o["model"], o["prompt_id"])]
    summary = summarise(criteria, models, usage, auto, None, prompts)
    summary.update(config=str(cfg_path), ratings=None, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sheet, key = blind(outputs, prompts, criteria)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "outputs.jsonl", "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs))
    atomic_write_json(out / "state.json", {"config_path": str(cfg_path), "config": cfg.model_dump(mode="json"),
                                           "models": [m.model_dump() for m in models], "criteria": criteria,
                                           "prompts": prompts, "usage": usage})
    atomic_write_text(out / "rating_sheet.csv", sheet)
    atomic_write_json(out / "blind_key.json", key)
    write_summary(out, summary)
    return summary

