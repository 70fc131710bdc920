"""Findings: the lessons a run was built to show, each computed from its results with a 95% interval and a verdict.

A recipe states its claims (`findings:` in the recipe, copied by `foundry run` to `RUN/findings.json`);
nothing in a report's Findings is typed by hand. A claim names an evaluation results file (`foundry eval
--out`), a metric, and two sides of arms, and says which side should come out better:

    - id: grounding
      lesson: for facts, grounding beats post-training
      claim: grounded answers against closed-book answers on questions no model saw
      results: eval_grounding/results.json
      metric: task:questions            # or task:NAME:SCORE, or bpb:DATASET
      better: [grounded_sft@grounded_acc]
      than: [base_sft]

Arms are model names from the results file. `NAME@SCORE` reads another per-item score of the same task
(`grounded_acc`, `acc_norm`, `margin`); a name with `*` is the per-item average of every model it matches
(seeds of one arm). With several arms a side is their sum, so `better: [a0, b1], than: [a1, b0]` tests
the contrast (a0 - a1) - (b0 - b1): "b falls less than a".

The effect is measured in the direction of improvement (accuracy up; bits per byte down), per item
where the arms share their items (same task, or the same validation windows under one tokenizer), and
its interval is the Student-t interval of those paired differences (`foundry.eval.stats.mean_ci`); a
plain one-against-one comparison of right/wrong scores uses the Agresti-Min interval for matched
proportions instead (`paired_proportions_ci`), which stays honest when every pair differs the same way.
Arms without shared items fall back to an unpaired interval (each side's standard errors added in
quadrature, normal quantile). Verdict: *holds* when the whole interval shows an improvement,
*contradicted* when the whole interval shows the opposite, else *not shown at this scale*.

A claim marked `cost: true` states a price rather than a lesson (general-text bits per byte after
preference tuning, say): its verdict reads *a cost* when the whole interval is a loss, *no cost
shown* when it spans zero, and *a gain* when the whole interval is an improvement.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError
from foundry.eval.stats import mean_ci, paired_proportions_ci

HOLDS, CONTRADICTED, NOT_SHOWN, NOT_MEASURED = "holds", "contradicted", "not shown at this scale", "not measured"
COST_VERDICTS = {HOLDS: "a gain", CONTRADICTED: "a cost", NOT_SHOWN: "no cost shown"}


class Claim(StrictModel):
    id: str = Field(description="a short identifier, unique in the recipe")
    lesson: str = Field(description="the lesson in words, as a reader of the report knows it")
    claim: str = Field("", description="what is compared, in words")
    results: str = Field(description="evaluation results JSON, relative to the run directory")
    metric: str = Field(pattern=r"^(bpb:.+|task:[^:]+(:[A-Za-z_]+)?)$",
                        description="'bpb:DATASET' (lower is better), 'task:NAME' (accuracy) or 'task:NAME:SCORE'")
    better: list[str] = Field(min_length=1, description="arms expected to come out better (model names)")
    than: list[str] = Field(min_length=1, description="arms they are compared against")
    cost: bool = Field(False, description="a price to show beside a lesson rather than a lesson (verdict: a cost, "
                                          "no cost shown, a gain)")


SPEC_FILE = "findings.yaml"  # in the run directory: the recipe's claims, as written there by `foundry run`


def check_unique(claims: list[Claim], where: str) -> list[Claim]:
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: findings claim ids must be unique, got {ids}")
    return claims


def read_claims(path: str | Path) -> list[Claim]:
    """Claims from a YAML mapping with a `findings:` list (a recipe, or `RUN/findings.yaml`)."""
    from foundry.config import config_from_dict, read_yaml

    items = read_yaml(path).get("findings")
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a 'findings:' list of claims")
    claims = [config_from_dict(Claim, item if isinstance(item, dict) else {}, f"{path}: findings[{i}]")
              for i, item in enumerate(items)]
    return check_unique(claims, str(path))


def _models(results: dict, pattern: str) -> list[dict]:
    return [m for m in results.get("models", []) if fnmatch.fnmatchcase(m.get("name", ""), pattern)]


def arm_scores(results: dict, metric: str, arm: str) -> list[float]:
    """Per-item values of one arm (averaged over the models a glob matches); raises KeyError when absent."""
    name, _, score_override = arm.partition("@")
    kind, _, rest = metric.partition(":")
    models = _models(results, name)
    if not models:
        raise KeyError(f"no model named {name!r} in the results")
    series = []
    for m in models:
        if kind == "bpb":
            block = m.get("perplexity", {}).get(rest)
            if block is None or "block_bpb" not in block:
                raise KeyError(f"{m['name']} has no per-window bits per byte on {rest!r}")
            series.append(block["block_bpb"])
        else:
            task, _, score = rest.partition(":")
            score = score_override or score or "acc"
            block = m.get("tasks", {}).get(task)
            if block is None or score not in block.get("scores", {}):
                raise KeyError(f"{m['name']} has no per-item {score!r} on task {task!r}")
            series.append(block["scores"][score])
    if len({len(s) for s in series}) != 1:
        raise KeyError(f"the models matching {name!r} were scored on different items")
    return [sum(values) / len(values) for values in zip(*series)]


def evaluate_claim(claim: Claim, run_dir: Path) -> dict:
    """The claim's arms, effect, interval and verdict (see the module docstring)."""
    out = {"id": claim.id, "lesson": claim.lesson, "claim": claim.claim, "metric": claim.metric,
           "better": claim.better, "than": claim.than}
    path = run_dir / claim.results
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        sides = [[arm_scores(results, claim.metric, a) for a in arms] for arms in (claim.better, claim.than)]
    except (OSError, json.JSONDecodeError) as exc:
        return {**out, "verdict": NOT_MEASURED, "reason": f"{claim.results}: {exc.__class__.__name__}"}
    except KeyError as exc:
        return {**out, "verdict": NOT_MEASURED, "reason": f"{claim.results}: {exc.args[0]}"}
    sign = -1.0 if claim.metric.startswith("bpb:") else 1.0  # effects point towards improvement
    out["arm_means"] = {"better": [sum(s) / len(s) for s in sides[0]], "than": [sum(s) / len(s) for s in sides[1]]}
    lengths = {len(s) for side in sides for s in side}
    if len(lengths) == 1:
        diffs = [sign * (sum(v[:len(sides[0])]) - sum(v[len(sides[0]):]))
                 for v in zip(*sides[0], *sides[1])]
        ci = mean_ci(diffs)
        effect, low, high, n, paired = ci["mean"], ci["ci_low"], ci["ci_high"], ci["n"], True
        binary = all(v in (0.0, 1.0) for side in sides for s in side for v in s)
        if binary and len(sides[0]) == len(sides[1]) == 1 and n > 1:
            low, high = paired_proportions_ci(sides[0][0], sides[1][0])
    else:
        effect = sign * (sum(out["arm_means"]["better"]) - sum(out["arm_means"]["than"]))
        variance = sum(mean_ci(s)["std"] ** 2 / len(s) for side in sides for s in side if len(s) > 1)
        half = 1.959964 * math.sqrt(variance) if variance else None
        low, high = (effect - half, effect + half) if half is not None else (None, None)
        n, paired = min(lengths), False
    if low is None:
        verdict = NOT_SHOWN
    elif low > 0:
        verdict = HOLDS
    elif high < 0:
        verdict = CONTRADICTED
    else:
        verdict = NOT_SHOWN
    if claim.cost:
        verdict = COST_VERDICTS[verdict]
    return {**out, "effect": effect, "ci_low": low, "ci_high": high, "n": n, "paired": paired, "verdict": verdict}


def compute_findings(claims: list[Claim], run_dir: str | Path) -> list[dict]:
    return [evaluate_claim(c, Path(run_dir)) for c in claims]


def _num(x) -> str:
    return "-" if x is None else f"{x:+.3f}"


def finding_rows(findings: list[dict]) -> list[list[str]]:
    """Table rows: lesson, comparison, arm means, effect with its interval, n, verdict."""
    rows = []
    for f in findings:
        arms = f"{' + '.join(f['better'])} vs {' + '.join(f['than'])}"
        if f["verdict"] == NOT_MEASURED:
            rows.append([f["lesson"], f"{f['claim']} ({f['metric']}: {arms})", "-", "-", "-",
                         f"{NOT_MEASURED}: {f['reason']}"])
            continue
        means = (" + ".join(f"{v:.3f}" for v in f["arm_means"]["better"]) + " vs "
                 + " + ".join(f"{v:.3f}" for v in f["arm_means"]["than"]))
        interval = f"{f['effect']:+.3f} [{_num(f['ci_low'])}, {_num(f['ci_high'])}]"
        rows.append([f["lesson"], f"{f['claim']} ({f['metric']}: {arms})", means, interval,
                     f"{f['n']}{'' if f['paired'] else ' (unpaired)'}", f"**{f['verdict']}**"])
    return rows


FINDINGS_HEADER = ["lesson", "comparison", "means", "effect [95% CI]", "n", "verdict"]
FINDINGS_NOTE = ("Each effect points towards improvement (accuracy up, bits per byte down), paired over the "
                 "items both sides were scored on; *holds* means the whole 95% interval is an improvement.")
