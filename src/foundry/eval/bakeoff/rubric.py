"""The bake-off's inputs: its config, its rubric (criteria checked line by line) and its prompts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from foundry.config import StrictModel
from foundry.errors import ConfigError, DataError
from foundry.eval.bakeoff.sheet import SHEET_FIXED


CRITERION_KEYS: dict[str, set[str]] = {
    "must_include": {"patterns", "from_prompt", "regex", "match", "ignore_case"},
    "must_not_include": {"patterns", "from_prompt", "regex", "ignore_case"},
    "length": {"min_words", "max_words"},
    "reference_similarity": {"metric", "from_prompt"},
    "style_perplexity": {"model", "ppl_best", "ppl_worst"},
    "human": {"scale"},
    "judge": {"scale", "anchors", "compare_with", "max_new_tokens"},
}
COMMON_KEYS = {"name", "type", "weight", "description"}


class EndpointSpec(StrictModel):
    """An OpenAI-compatible chat completions endpoint (hosted API, vLLM, TGI, llama.cpp, Ollama, foundry serve)."""
    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.example.com/v1; requests go to {base_url}/chat/completions")
    model: str = Field(description="the model id the endpoint expects")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the key (never the key itself)")
    stream: bool = Field(True, description="stream the reply (time to first token); false for endpoints that cannot")
    timeout_s: float = Field(60.0, gt=0, description="per request: connect, and the longest wait between bytes")
    total_timeout_s: float = Field(600.0, gt=0, description="the longest one reply may take, streaming included")
    max_retries: int = Field(4, ge=0, description="retries of a 429, 5xx, timeout or refused connection")
    backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles each retry (Retry-After wins)")
    max_backoff_s: float = Field(30.0, ge=0, description="the longest single wait, Retry-After included")
    tokenizer: str | None = Field(None, description="tokenizer directory to count tokens when the reply has no usage")
    concurrency: int = Field(1, gt=0, description="requests in flight at once (latency then includes queueing)")


class ServeSpec(StrictModel):
    """One of our own models served by `foundry serve` in a subprocess on a free 127.0.0.1 port."""
    model: str = ""  # may be left to --model NAME=PATH
    start_timeout_s: float = Field(120.0, gt=0, description="how long to wait for /health")
    max_concurrency: int = Field(4, gt=0)


class ModelEntry(StrictModel):
    """A contender (or the judge): exactly one of `path` (foundry checkpoint, run or HF directory),
    `endpoint` or `serve`. Sampling settings left out come from the bake-off config."""
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str = ""  # may be left to --model NAME=PATH
    endpoint: EndpointSpec | None = None
    serve: ServeSpec | None = None
    price_per_1k_tokens: float = Field(0.0, ge=0, description="per 1,000 generated tokens")
    price_per_1m_input_tokens: float = Field(0.0, ge=0)
    price_per_1m_output_tokens: float = Field(0.0, ge=0)
    price_per_compute_second: float = Field(0.0, ge=0, description="per second of local generation")
    max_new_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)

    @property
    def kind(self) -> str:
        return "endpoint" if self.endpoint else "serve" if self.serve else "local"

    def check_kind(self, where: str) -> None:
        given = [k for k, v in (("path", self.path), ("endpoint", self.endpoint), ("serve", self.serve)) if v]
        if len(given) > 1:
            raise ConfigError(f"{where}: contender '{self.name}' has {' and '.join(given)}; give exactly one")


class BakeoffConfig(StrictModel):
    prompts: str
    rubric: str
    models: list[ModelEntry] = []
    judge: ModelEntry | None = Field(None, description="the model that scores 'judge' criteria (any contender kind)")
    seed: int = 0
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float | None = Field(0.95, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    chat: bool = True
    device: str = "auto"
    batch_size: int = Field(64, gt=0, description="prompts a local model decodes together; each batch's answers "
                                                  "are on disk before the next starts")


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
        elif kind == "judge":
            c.update(_scale(raw, where, name))
            anchors = raw.get("anchors") or {}
            if isinstance(anchors, dict):
                anchors = {k: v for k, v in anchors.items() if k not in ("__line__", "__lines__")}
            lo, hi = c["scale"]
            if not isinstance(anchors, dict) or not all(isinstance(k, int) and lo <= k <= hi and isinstance(v, str)
                                                        for k, v in anchors.items()):
                raise ConfigError(f"{where}: criterion '{name}': anchors must map scores on {lo}..{hi} to text, "
                                  "e.g. {1: wrong, 5: exactly right}")
            if not c["description"]:
                raise ConfigError(f"{where}: criterion '{name}' (judge) needs a 'description': the judge reads it")
            c["anchors"] = {int(k): v for k, v in sorted(anchors.items())}
            c["compare_with"] = raw.get("compare_with")
            c["max_new_tokens"] = int(raw.get("max_new_tokens", 16))
        else:
            c.update(_scale(raw, where, name))
        criteria.append(c)
    for c in criteria:
        if c["type"] == "judge" and c["compare_with"] is not None and not any(
                h["name"] == c["compare_with"] and h["type"] == "human" for h in criteria):
            raise ConfigError(f"{path}: criterion '{c['name']}': compare_with '{c['compare_with']}' is not a "
                              "human criterion of this rubric")
    return criteria


def _scale(raw: dict, where: str, name: str) -> dict:
    scale = raw.get("scale", [1, 5])
    if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(s, int) for s in scale)
            or scale[0] >= scale[1]):
        raise ConfigError(f"{where}: criterion '{name}': scale must be [low, high] integers, low < high")
    return {"scale": scale}


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


