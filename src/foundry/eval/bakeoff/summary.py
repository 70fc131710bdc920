"""A whole bake-off run (asking, scoring, blinding), its stored state, and rewriting the summary when ratings
arrive. The statistics and the recommendation are `decision`'s, the tables and the plot `tables`'."""

from __future__ import annotations

import json
import time
from pathlib import Path

from foundry.errors import ConfigError
from foundry.eval.bakeoff.decision import summarise, usage_of
from foundry.eval.bakeoff.rubric import BakeoffConfig, ModelEntry, load_prompts, load_rubric, resolve_path
from foundry.eval.bakeoff.scoring import score_outputs
from foundry.eval.bakeoff.sheet import blind, human_criteria, per_answer_means
from foundry.eval.bakeoff.tables import agreement_text, decision_text, plot_decision, render_markdown


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
    from foundry.eval.bakeoff.store import agreement

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
