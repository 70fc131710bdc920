"""`foundry bakeoff`: compare models side by side on a prompt set and a rubric, with cost, blinded for raters.

Flow:
1. `foundry bakeoff --config BAKEOFF.yaml --out DIR` generates every model's answer to every prompt
   (sampling seeded per prompt, the same seed for every model), times it, scores the automatic criteria,
   and writes `DIR/outputs.jsonl`, a blinded and shuffled `DIR/rating_sheet.csv` (a random blind id per
   answer, no model names), the key in `DIR/blind_key.json` (keep it away from raters), and the
   summary `DIR/bakeoff.json` + `DIR/bakeoff.md` (human criteria marked pending).
2. Raters fill the human criteria columns (integers on the criterion's scale; empty = not rated; an
   optional `rater` column allows several raters, whose scores of one answer are averaged).
3. `foundry bakeoff --out DIR --ratings FILLED.csv` validates the sheet against the key, un-blinds it
   and rewrites `bakeoff.json` / `bakeoff.md` with the human criteria included (criteria, models and
   automatic scores come from `DIR/state.json` and `DIR/outputs.jsonl`, as the generation run scored them).

Config (YAML; relative paths resolve against the config file's directory):
    prompts: prompts.jsonl        # {"id", "prompt", optional "system", "reference", and per-prompt fields}
    rubric: rubric.yaml
    models:                       # a path may be left out and given as --model NAME=PATH
      - {name: base, path: runs/base, price_per_1k_tokens: 0.002, price_per_compute_second: 0.0}
    seed: 0
    max_new_tokens: 96
    temperature: 0.7              # 0 = greedy
    top_p: 0.95
    chat: true                    # prompts go through the chat template

Rubric criteria (`type`; every criterion has `name`, optional `weight` (default 1) and `description`):
- `must_include`: required phrases (`patterns`, and/or the prompt field named by `from_prompt`); score =
  share present (`match: all`) or 1 if any is present (`match: any`); `regex: true` reads them as regexes.
- `must_not_include`: forbidden claims, same keys; score 1 if none is present, else 0.
- `length`: `min_words` / `max_words`; score 1 inside the bounds, else 0.
- `reference_similarity`: `metric: token_f1` (SQuAD-style bag-of-words F1) or `chrf` (Popovic 2015,
  character 1..6-grams, beta 2) against the prompt field `from_prompt` (default `reference`).
- `style_perplexity`: perplexity of the answer under a style model (`model: PATH`, or `--style-model`),
  a brand-voice proxy: lower is better. Mapped to [0, 1] on a log scale between `ppl_best` (score 1)
  and `ppl_worst` (score 0).
- `human`: rated by people on `scale: [1, 5]` (integers).
A criterion whose prompt field is absent for a prompt does not apply to it (it is left out of the mean).

Statistics: per model and criterion the mean over prompts with a 95% Student-t interval
(`foundry.eval.stats.mean_ci`). Automatic scores are in [0, 1]; human means are on their own scale.
Ranking: the weighted mean of every criterion's mean mapped to [0, 1] (human: (mean - lo) / (hi - lo)),
over the criteria that have scores; ties go to the cheaper model. Cost = tokens generated / 1000 *
price_per_1k_tokens + measured generation seconds * price_per_compute_second.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError, DataError
from foundry.eval.stats import mean_ci
from foundry.eval.tasks import contains

CRITERION_KEYS: dict[str, set[str]] = {
    "must_include": {"patterns", "from_prompt", "regex", "match", "ignore_case"},
    "must_not_include": {"patterns", "from_prompt", "regex", "ignore_case"},
    "length": {"min_words", "max_words"},
    "reference_similarity": {"metric", "from_prompt"},
    "style_perplexity": {"model", "ppl_best", "ppl_worst"},
    "human": {"scale"},
}
COMMON_KEYS = {"name", "type", "weight", "description"}
SHEET_FIXED = ("blind_id", "prompt_id", "prompt", "output")


class ModelEntry(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str = ""  # may be left to --model NAME=PATH
    price_per_1k_tokens: float = Field(0.0, ge=0)
    price_per_compute_second: float = Field(0.0, ge=0)


class BakeoffConfig(StrictModel):
    prompts: str
    rubric: str
    models: list[ModelEntry] = []
    seed: int = 0
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float | None = Field(0.95, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    chat: bool = True
    device: str = "auto"


# ---- rubric ----------------------------------------------------------------------------------------
class _LineLoader(yaml.SafeLoader):
    """A YAML loader that records each mapping's 1-based line as `__line__`."""


def _mapping_with_line(loader, node, deep=False):
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    mapping["__lines__"] = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def _str_list(value, where: str, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of non-empty strings")
    return list(value)


def load_rubric(path: str | Path, style_model: str | None = None) -> list[dict]:
    """The rubric's criteria, validated; every problem names `path:line`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: rubric not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML "
                          f"({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict) or not isinstance(data.get("criteria"), list) or not data["criteria"]:
        raise ConfigError(f"{path}: a rubric is a mapping with a non-empty 'criteria' list")
    extra = set(data) - {"name", "description", "criteria", "__line__", "__lines__"}
    if extra:
        raise ConfigError(f"{path}:{data['__line__']}: unknown rubric keys {sorted(extra)}")
    criteria, names = [], set()
    for raw in data["criteria"]:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: every criterion must be a mapping")
        where = f"{path}:{raw.pop('__line__')}"
        lines = raw.pop("__lines__")
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in CRITERION_KEYS:
            where = f"{path}:{lines.get('type', where.rsplit(':', 1)[1])}"
            raise ConfigError(f"{where}: unknown criterion type {kind!r}; expected one of {', '.join(CRITERION_KEYS)}")
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(f"{where}: criterion 'name' must be letters, digits, '_' or '-', got {name!r}")
        if name in names or name in SHEET_FIXED + ("rater", "comments"):
            raise ConfigError(f"{where}: criterion name '{name}' is used twice or reserved")
        names.add(name)
        unknown = set(raw) - COMMON_KEYS - CRITERION_KEYS[kind]
        if unknown:
            where = f"{path}:{min(lines[k] for k in unknown)}"
            raise ConfigError(f"{where}: criterion '{name}' ({kind}) has unknown keys {sorted(unknown)}; "
                              f"allowed: {sorted(COMMON_KEYS | CRITERION_KEYS[kind])}")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{where}: criterion '{name}': weight must be a number >= 0")
        c: dict[str, Any] = {"name": name, "type": kind, "weight": float(weight),
                             "description": str(raw.get("description", ""))}
        if kind in ("must_include", "must_not_include"):
            c["patterns"] = _str_list(raw.get("patterns"), where, "patterns")
            c["from_prompt"] = raw.get("from_prompt")
            c["regex"] = bool(raw.get("regex", False))
            c["ignore_case"] = bool(raw.get("ignore_case", True))
            c["match"] = raw.get("match", "all")
            if c["match"] not in ("all", "any"):
                raise ConfigError(f"{where}: criterion '{name}': match must be 'all' or 'any'")
            if not c["patterns"] and not c["from_prompt"]:
                raise ConfigError(f"{where}: criterion '{name}' needs 'patterns' and/or 'from_prompt'")
            if c["regex"]:
                for p in c["patterns"]:
                    try:
                        re.compile(p)
                    except re.error as exc:
                        raise ConfigError(f"{where}: criterion '{name}': pattern {p!r} does not compile ({exc})") from None
        elif kind == "length":
            lo, hi = raw.get("min_words"), raw.get("max_words")
            if lo is None and hi is None:
                raise ConfigError(f"{where}: criterion '{name}' needs min_words and/or max_words")
            if any(v is not None and (not isinstance(v, int) or v < 0) for v in (lo, hi)) or \
                    (lo is not None and hi is not None and lo > hi):
                raise ConfigError(f"{where}: criterion '{name}': min_words/max_words must be integers, min <= max")
            c.update(min_words=lo, max_words=hi)
        elif kind == "reference_similarity":
            c["metric"] = raw.get("metric", "token_f1")
            if c["metric"] not in ("token_f1", "chrf"):
                raise ConfigError(f"{where}: criterion '{name}': metric must be token_f1 or chrf")
            c["from_prompt"] = raw.get("from_prompt", "reference")
        elif kind == "style_perplexity":
            model = style_model or raw.get("model")
            if not model:
                raise ConfigError(f"{where}: criterion '{name}' needs 'model: PATH' (or pass --style-model)")
            c["model"] = str(resolve_path(model, path.parent))
            c["ppl_best"], c["ppl_worst"] = float(raw.get("ppl_best", 10.0)), float(raw.get("ppl_worst", 1000.0))
            if not 0 < c["ppl_best"] < c["ppl_worst"]:
                raise ConfigError(f"{where}: criterion '{name}': need 0 < ppl_best < ppl_worst")
        else:
            scale = raw.get("scale", [1, 5])
            if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(s, int) for s in scale)
                    or scale[0] >= scale[1]):
                raise ConfigError(f"{where}: criterion '{name}': scale must be [low, high] integers, low < high")
            c["scale"] = scale
        criteria.append(c)
    return criteria


def resolve_path(p: str | Path, base: Path) -> Path:
    """A relative path against `base` (the file that named it) if it exists there, else as given."""
    p = Path(p)
    if p.is_absolute() or not (base / p).exists():
        return p
    return base / p


# ---- prompts ---------------------------------------------------------------------------------------
def load_prompts(path: str | Path, criteria: list[dict]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    prompts, seen = [], set()
    list_fields = {c["from_prompt"] for c in criteria if c["type"] in ("must_include", "must_not_include")
                   and c.get("from_prompt")}
    text_fields = {c["from_prompt"] for c in criteria if c["type"] == "reference_similarity"}
    from foundry.data.sources import iter_json_lines

    for lineno, rec in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise DataError(f"{where}: expected an object with a non-empty 'prompt'")
        pid = str(rec.get("id", f"p{lineno}"))
        if pid in seen:
            raise DataError(f"{where}: duplicate prompt id '{pid}'")
        seen.add(pid)
        for f in list_fields:
            if f in rec:
                rec[f] = _str_list(rec[f], where, f)
        for f in text_fields:
            if f in rec and not isinstance(rec[f], str):
                raise DataError(f"{where}: '{f}' must be a string")
        if "system" in rec and not isinstance(rec["system"], str):
            raise DataError(f"{where}: 'system' must be a string")
        prompts.append({**rec, "id": pid})
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


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
        ppl = text_perplexity(model, tokenizer, output)["perplexity"]
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
            if c["type"] == "human":
                continue
            score, details = score_automatic(c, o["output"], by_id[o["prompt_id"]], styles.get(c.get("model")))
            row[c["name"]] = score
            if details:
                o["details"][c["name"]] = details
    return scores


# ---- generation ------------------------------------------------------------------------------------
def generate_outputs(cfg: BakeoffConfig, models: list[ModelEntry], prompts: list[dict], device: str) -> tuple[list, dict]:
    """Every model's answer to every prompt, and per-model {tokens, seconds}. Seed: cfg.seed + prompt index."""
    import torch

    from foundry.serve.generate import generate
    from foundry.checkpoints import load_model

    outputs, usage = [], {}
    for m in models:
        model, tokenizer = load_model(m.path, device=device)
        tokens, seconds = 0, 0.0
        for k, p in enumerate(prompts):
            ids = _prompt_ids(tokenizer, p, cfg.chat)
            room = model.config.max_seq_len - cfg.max_new_tokens
            ids = ids[-room:] if room > 0 else ids[-(model.config.max_seq_len // 2):]
            t0 = time.perf_counter()
            new = list(generate(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed + k))
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens += len(new)
            seconds += dt
            outputs.append({"model": m.name, "prompt_id": p["id"], "output": tokenizer.decode(new, skip_special=True),
                            "tokens": len(new), "seconds": round(dt, 4)})
        usage[m.name] = {"tokens": tokens, "seconds": seconds}
        print(f"[bakeoff] {m.name}: {len(prompts)} answers, {tokens} tokens in {seconds:.1f}s")
        del model
    return outputs, usage


def _prompt_ids(tokenizer, prompt: dict, chat: bool) -> list[int]:
    if not chat:
        return [tokenizer.eos_id] + tokenizer.encode(prompt["prompt"])
    from foundry.data.chat import render_chat

    messages = ([{"role": "system", "content": prompt["system"]}] if prompt.get("system") else [])
    messages.append({"role": "user", "content": prompt["prompt"]})
    ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    return list(ids)


# ---- the blinded rating sheet ----------------------------------------------------------------------
def human_criteria(criteria: list[dict]) -> list[dict]:
    return [c for c in criteria if c["type"] == "human"]


def blind(outputs: list[dict], prompts: list[dict], criteria: list[dict], seed: int) -> tuple[str, dict]:
    """(rating sheet CSV text, key): a random blind id per answer, rows shuffled, no model names."""
    rng = random.Random(f"bakeoff-blind-{seed}")
    by_id = {p["id"]: p for p in prompts}
    ids: set[str] = set()
    rows = []
    for o in outputs:
        while (bid := f"R{rng.randrange(16 ** 6):06x}") in ids:
            pass
        ids.add(bid)
        rows.append((bid, o))
    rng.shuffle(rows)
    human = [c["name"] for c in human_criteria(criteria)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*SHEET_FIXED, *human, "comments"])
    for bid, o in rows:
        writer.writerow([bid, o["prompt_id"], by_id[o["prompt_id"]]["prompt"], o["output"], *[""] * len(human), ""])
    key = {"seed": seed, "scales": {c["name"]: c["scale"] for c in human_criteria(criteria)},
           "key": {bid: {"model": o["model"], "prompt_id": o["prompt_id"]} for bid, o in rows}}
    return buf.getvalue(), key


def read_ratings(path: str | Path, key: dict, criteria: list[dict]) -> dict:
    """Validate a filled sheet and un-blind it: {(model, prompt_id): {criterion: mean over raters}}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: rating sheet not found")
    human = human_criteria(criteria)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often add a byte-order mark
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; export the sheet as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty rating sheet") from None
    header = [h.strip() for h in header]
    missing = [c for c in ["blind_id"] + [c["name"] for c in human] if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; use the rating_sheet.csv that bakeoff wrote")
    col = {h: i for i, h in enumerate(header)}
    collected: dict = defaultdict(lambda: defaultdict(list))
    seen: set = set()
    line = reader.line_num
    for row in reader:
        start, line = line + 1, reader.line_num  # a quoted answer may span several lines
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{start}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        bid = row[col["blind_id"]].strip()
        if bid not in key["key"]:
            raise DataError(f"{where}: blind id '{bid}' is not in the blind key; this row does not belong to "
                            "this bake-off's sheet")
        rater = row[col["rater"]].strip() if "rater" in col else ""
        if (bid, rater) in seen:
            raise DataError(f"{where}: blind id '{bid}' rated twice{f' by {rater}' if rater else ''}")
        seen.add((bid, rater))
        owner = key["key"][bid]
        for c in human:
            cell = row[col[c["name"]]].strip()
            if not cell:
                continue
            lo, hi = c["scale"]
            try:
                value = int(cell)
            except ValueError:
                value = None
            if value is None or not lo <= value <= hi:
                raise DataError(f"{where}: '{c['name']}' score {cell!r} is not an integer on the scale {lo}..{hi}")
            collected[(owner["model"], owner["prompt_id"])][c["name"]].append(value)
    return {k: {c: sum(v) / len(v) for c, v in crit.items()} for k, crit in collected.items()}


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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_name = {r["name"]: r for r in summary["models"]}
    for name in summary["ranking"]:
        r = by_name[name]
        overall = "-" if r["overall"] is None else f"{r['overall']:.3f}"
        cells = [str(r["rank"]), name, *[_cell(r["criteria"][c["name"]]) for c in crits], overall, str(r["tokens"]),
                 f"{r['seconds']:.2f}", f"{r['cost']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    parts = ["# Bake-off", "", f"{len(summary['models'])} models, {summary['prompts']} prompts. "
             f"Cells: mean ± half-width of the {summary['ci']}; automatic criteria score 0..1, human criteria "
             "their own scale. Overall: weighted mean of criteria mapped to 0..1.", "", markdown_table(summary), ""]
    if summary["human_pending"]:
        parts += [f"Human criteria not yet rated: {', '.join(summary['human_pending'])}. Fill rating_sheet.csv and "
                  "re-run with --ratings FILLED.csv.", ""]
    parts += ["## Criteria", ""]
    parts += [f"- **{c['name']}** ({c['type']}, weight {c['weight']:g}): {c['description']}" for c in summary["criteria"]]
    return "\n".join(parts) + "\n"


# ---- CLI -------------------------------------------------------------------------------------------
def write_summary(out: Path, summary: dict) -> None:
    from foundry.utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bakeoff.json", summary)
    atomic_write_text(out / "bakeoff.md", render_markdown(summary))
    print(markdown_table(summary))


def add_ratings(out: Path, ratings: str | Path) -> dict:
    """Un-blind a filled sheet against the bake-off in `out` and rewrite its summary with the human scores.

    Everything else (criteria, models, prompts, automatic scores) is read from what the generation run
    stored in `out`, so the ratings always meet the rubric their answers were scored with.
    """
    from foundry.utils.io import read_json

    state_file, key_file, outputs_file = out / "state.json", out / "blind_key.json", out / "outputs.jsonl"
    for f in (state_file, key_file, outputs_file):
        if not f.is_file():
            raise ConfigError(f"{f}: missing; run 'foundry bakeoff --config BAKEOFF.yaml --out {out}' first")
    state, key = read_json(state_file), read_json(key_file)
    outputs = [json.loads(line) for line in outputs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    criteria = state["criteria"]
    human = read_ratings(ratings, key, criteria)  # validated before anything is written
    auto = {(o["model"], o["prompt_id"]): o["scores"] for o in outputs}
    models = [ModelEntry(**m) for m in state["models"]]
    summary = summarise(criteria, models, state["usage"], auto, human, state["prompts"])
    summary.update(config=state.get("config_path"), ratings=str(ratings),
                   created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_summary(out, summary)
    return summary
