"""`foundry run RECIPE.yaml`: a recipe is an ordered list of stages, each one `foundry <verb>` call.

A stage reads its parents' outputs through placeholders: `{out}` is the stage's own output directory
(`RUN/<stage name>`), `{stage:NAME}` is an earlier stage's, `{run}` the run directory and `{repo}` the
folder holding the bundled `data/` and `recipes/` (the checkout, or the installed package's copy: see
`foundry.utils.bundled`), so bundled data resolves from anywhere. A training verb's
`config:` mapping is written to `RUN/.pipeline/NAME.yaml` (what fingerprints and people read), validated by
the stage registry's config class (`foundry.stages`) and handed to the stage's run function, in this process
but not through the command line; other verbs run their `main(argv)`. Every stage starts from the process
state the pipeline found (torch threads, default dtype, deterministic and TF32 flags, grad mode, RNG states:
`ProcessState`), so what one stage sets does not carry into the next.

Recipe variables: `vars:` maps NAME to a default (null: the run needs one), read as `{var:NAME}` and set on the
command line as `foundry run RECIPE NAME=VALUE` (recipes/adapt.yaml: `model=HF_DIR`). A value that is the
whole string keeps its type (`max_steps: "{var:steps}"` stays a number); a default may use `{run}` and `{repo}`.

Each finished stage leaves `RUN/.pipeline/NAME.json` with a fingerprint of its verb, arguments, config
and its parents' fingerprints. A re-run skips a stage whose fingerprint is unchanged, so after a failure
the run resumes at the failed stage; a stage with `resume: [--resume]` gets those arguments when a
previous attempt left output behind (an interrupted training run continues where it stopped).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from foundry.cli import VERBS
from foundry.config import StrictModel, config_from_dict, read_yaml
from foundry.errors import ConfigError, FoundryError
from foundry.eval.findings import SPEC_FILE, Claim, check_unique
from foundry.utils.bundled import bundled_root
from foundry.utils.io import atomic_write_json, atomic_write_text, code_version, read_json

PLACEHOLDER = re.compile(r"\{(out|run|repo|stage:([A-Za-z0-9_\-]+)|var:([A-Za-z0-9_\-]+))\}")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class RecipeStage(StrictModel):
    """One stage of a recipe: a `foundry <verb>` call with its arguments and config (not a stage's run
    directory, `foundry.eval.run_view.RunStage`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    verb: str
    args: list[str] = []
    config: dict[str, Any] | None = None
    resume: list[str] = []
    output: str = Field("{out}", description="what the stage writes, when not its own directory "
                                             "(for example '{stage:data}/tokens')")
    keep_output: bool = Field(False, description="the verb itself checks what its output already holds ('data "
                              "prepare' and 'data tokenize' do nothing when it holds the same, and write other "
                              "tokenizers' shards beside), so the runner never moves it aside: for outputs that "
                              "several runs share, such as a corpus")
    description: str = ""


class Recipe(StrictModel):
    name: str
    out_dir: str
    description: str = ""
    vars: dict[str, Any] = Field({}, description="recipe variables: NAME: default (null: required), read as "
                                 "{var:NAME}, set as 'foundry run RECIPE NAME=VALUE'")
    stages: list[RecipeStage]
    findings: list[Claim] = Field([], description="the lessons the run should show, computed by the report "
                                                  "(see foundry.eval.findings)")


def _typed(value: str) -> Any:
    """A command-line value as YAML reads it (30 -> int, true -> bool), numbers like 1e-3 included."""
    if NUMBER.fullmatch(value):
        return int(value) if value.lstrip("+-").isdigit() else float(value)
    parsed = yaml.safe_load(value) if value else value
    return parsed if isinstance(parsed, (bool, int, float)) else value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A recipe with `out_dir=PATH` and `NAME=VALUE` (its `vars:`) set from the command line."""
    data = read_yaml(path)
    variables = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    for word in overrides or []:
        key, eq, value = word.partition("=")
        if key == "out_dir" and value:
            data["out_dir"] = value
        elif eq and key in variables:
            variables[key] = _typed(value)
        else:
            allowed = ", ".join(["out_dir"] + list(variables))
            raise ConfigError(f"{path}: '{word}' sets nothing this recipe has; set out_dir=PATH or one of its "
                              f"variables as NAME=VALUE ({allowed})")
    missing = [k for k, v in variables.items() if v is None]
    if missing:
        raise ConfigError(f"{path}: this recipe needs {' '.join(f'{k}=VALUE' for k in missing)} on the command line "
                          f"(see its vars:)")
    recipe = config_from_dict(Recipe, data, str(path))
    for name, value in recipe.vars.items():
        bad = [m.group(0) for m in PLACEHOLDER.finditer(json.dumps(value)) if m.group(1) not in ("run", "repo")]
        if bad:
            raise ConfigError(f"{path}: variable '{name}' uses {bad[0]}; a variable may use only {{run}} and {{repo}}")
    seen: set[str] = set()
    for stage in recipe.stages:
        if stage.verb not in VERBS or stage.verb in ("run", "quickstart"):
            raise ConfigError(f"{path}: stage '{stage.name}': unknown verb '{stage.verb}'")
        if stage.name in seen:
            raise ConfigError(f"{path}: stage name '{stage.name}' is used twice")
        unknown = [m.group(3) for m in PLACEHOLDER.finditer(json.dumps(stage.model_dump()))
                   if m.group(3) and m.group(3) not in recipe.vars]
        if unknown:
            raise ConfigError(f"{path}: stage '{stage.name}' reads {{var:{unknown[0]}}}, which is not in the "
                              f"recipe's vars:")
        for parent in _references(stage):
            if parent not in seen:
                raise ConfigError(f"{path}: stage '{stage.name}' reads stage '{parent}', which does not run "
                                  f"before it")
        seen.add(stage.name)
    check_unique(recipe.findings, str(path))
    for claim in recipe.findings:
        if claim.results.split("/")[0] not in seen:
            raise ConfigError(f"{path}: finding '{claim.id}' reads '{claim.results}', which no stage writes "
                              f"(the first part must be a stage name)")
    return recipe


def _references(stage: RecipeStage) -> list[str]:
    text = json.dumps([stage.args, stage.config, stage.resume, stage.output])
    return [m.group(2) for m in PLACEHOLDER.finditer(text) if m.group(2)]


def _substitute(value: Any, mapping: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole and not isinstance(mapping[whole.group(1)], str):
            return mapping[whole.group(1)]  # a variable that is the whole value keeps its type
        return PLACEHOLDER.sub(lambda m: str(mapping[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _fingerprint(stage: RecipeStage, args: list[str], config: dict | None, parent_prints: list[str]) -> str:
    blob = json.dumps({"verb": stage.verb, "args": args, "config": config, "parents": parent_prints},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_budget(config: dict | None, args: list[str]) -> float | None:
    """A stage's time box in seconds: a `...max_seconds=N` argument, else its config's `train.max_seconds`
    (or a top-level `max_seconds`); None when the stage is not time-boxed."""
    for arg in reversed(args):
        m = re.fullmatch(r"(?:[\w.]+\.)?max_seconds=([0-9.]+)", arg)
        if m:
            return float(m.group(1))
    if isinstance(config, dict):
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        value = train.get("max_seconds", config.get("max_seconds"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def stage_list(names: list[str], budgets: dict[str, float | None]) -> str:
    """The run's stages, numbered, with the time box of each that has one."""
    from foundry.utils.timefmt import clock

    boxed = [b for b in budgets.values() if b]
    lines = [f"[foundry run] {len(names)} stage(s)" + (f"; time boxes add up to {clock(sum(boxed))}" if boxed else "")]
    lines += [f"  {i}/{len(names)} {n}" + (f" (time box {clock(budgets[n])})" if budgets.get(n) else "")
              for i, n in enumerate(names, 1)]
    return "\n".join(lines)


def run_stage(verb: str, argv: list[str], has_config: bool) -> int:
    """Run one stage (`argv`: its verb and arguments) in this process; its exit code. A training verb with a
    config goes to its typed entry point (the stage registry's config class validates the config file, its run
    function trains); other verbs (and a training verb without a config, such as `continue --compare`) go through
    their `main(argv)`."""
    from foundry.cli import guarded, main as cli_main
    from foundry.stages import TRAINING_VERBS

    if has_config and verb in TRAINING_VERBS:
        from foundry.commands.train import run_training_stage

        def call() -> int:
            run_training_stage(verb, argv[len(verb.split()):])
            return 0

        return guarded(call)
    return cli_main(argv)


class ProcessState:
    """The process-wide settings a stage may change (torch's threads, default dtype, deterministic-algorithm and
    TF32 flags, grad mode, the RNG states of torch, NumPy and `random`), captured once; `restored()` puts them
    back before and after each stage, so no stage inherits what an earlier one set (a stage seeds its own RNGs
    from its config)."""

    def __init__(self):
        import random

        import numpy as np
        import torch

        self.threads = torch.get_num_threads()
        self.dtype = torch.get_default_dtype()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.allow_tf32)
        self.matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.grad = torch.is_grad_enabled()
        self.seed, self.torch_rng = torch.initial_seed(), torch.get_rng_state()
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()

    def restore(self) -> None:
        import random

        import numpy as np
        import torch

        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.dtype)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32) = self.cudnn
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_grad_enabled(self.grad)
        torch.set_rng_state(self.torch_rng)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(self.seed)  # a fresh process's CUDA generators start from the same seed
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)

    @contextlib.contextmanager
    def restored(self):
        self.restore()
        try:
            yield
        finally:
            self.restore()


def run_recipe(recipe: Recipe, recipe_path: Path, force: list[str] | None = None, until: str | None = None) -> dict:
    """Run every stage in order (up to and including `until`, when given); returns the pipeline record
    (also written to RUN/pipeline.json)."""
    names = [s.name for s in recipe.stages]
    if until is not None and until not in names:
        raise ConfigError(f"{recipe_path}: --until '{until}' is not a stage of this recipe ({', '.join(names)})")
    run_dir = Path(recipe.out_dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    state_dir = run_dir / ".pipeline"
    state_dir.mkdir(parents=True, exist_ok=True)
    prints: dict[str, str] = {}
    record: dict[str, Any] = {"recipe": str(recipe_path), "name": recipe.name, "code_version": code_version(),
                              "vars": recipe.vars, "stages": []}
    base = {"run": str(run_dir), "repo": str(bundled_root())}
    variables = {f"var:{k}": _substitute(v, base) for k, v in recipe.vars.items()}
    findings = yaml.safe_dump({"findings": [c.model_dump() for c in recipe.findings]}, sort_keys=False)
    if recipe.findings:
        atomic_write_text(run_dir / SPEC_FILE, findings)
    force = set(force or [])
    process_state = ProcessState()  # as the pipeline found it: every stage starts from it, as a fresh process would
    started = time.time()
    stages = recipe.stages[:names.index(until) + 1] if until is not None else recipe.stages
    from foundry.utils.timefmt import clock

    budgets = {s.name: stage_budget(s.config, [str(a) for a in s.args]) for s in stages}
    print(stage_list([s.name for s in stages], budgets), flush=True)
    for number, stage in enumerate(stages, 1):
        where = f"{number}/{len(stages)} {stage.name}"
        mapping = {"out": str(run_dir / stage.name), **base, **variables}
        mapping.update({f"stage:{name}": str(run_dir / name) for name in prints})
        out = Path(_substitute(stage.output, mapping))
        args = [str(a) for a in _substitute(stage.args, mapping)]
        config = _substitute(stage.config, mapping) if stage.config is not None else None
        # A stage that reads the whole run directory (a report) depends on every stage before it.
        reads_run = "{run}" in json.dumps([stage.args, stage.config])
        parents = list(prints) if reads_run else _references(stage)
        parent_prints = [prints[p] for p in parents] + ([hashlib.sha256(findings.encode()).hexdigest()] if reads_run else [])
        fp = _fingerprint(stage, args, config, parent_prints)
        done_file = state_dir / f"{stage.name}.json"
        done = read_json(done_file) if done_file.is_file() else None
        entry = {"name": stage.name, "verb": stage.verb, "fingerprint": fp, "output": str(out)}
        if done and done.get("fingerprint") == fp and out.exists() and stage.name not in force:
            print(f"[foundry run] {where}: unchanged, skipped (finished {done['finished']})")
            entry.update(status="skipped", seconds=done.get("seconds"))
            record["stages"].append(entry)
            prints[stage.name] = fp
            continue
        argv = stage.verb.split() + list(args)
        if config is not None:
            config_path = state_dir / f"{stage.name}.yaml"
            atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
            argv += ["--config", str(config_path)]
        attempt_file = state_dir / f"{stage.name}.attempt"
        if out.exists() and not stage.keep_output:
            last_attempt = attempt_file.read_text().strip() if attempt_file.is_file() else None
            if stage.resume and last_attempt == fp and not done:
                argv += stage.resume  # an interrupted attempt of this same stage: continue it
            else:
                # Output of other inputs (or of a non-resumable attempt): keep it aside, never delete it.
                aside = state_dir / f"{stage.name}.previous"
                shutil.rmtree(aside, ignore_errors=True)
                out.rename(aside)
        done_file.unlink(missing_ok=True)
        atomic_write_text(attempt_file, fp)
        box = f"time box {clock(budgets[stage.name])}, " if budgets[stage.name] else ""
        print(f"[foundry run] {where} ({box}run so far {clock(time.time() - started)}): foundry {' '.join(argv)}",
              flush=True)
        t0 = time.time()
        with process_state.restored():
            code = run_stage(stage.verb, argv, config is not None)
        seconds = round(time.time() - t0, 1)
        if code != 0:
            entry.update(status="failed", seconds=seconds)
            record["stages"].append(entry)
            record["seconds"] = round(time.time() - started, 1)
            atomic_write_json(run_dir / "pipeline.json", record)
            raise FoundryError(f"{recipe_path}: stage '{stage.name}' failed (exit {code}); fix it and re-run "
                               f"'foundry run {recipe_path}' to resume from this stage")
        atomic_write_json(done_file, {"fingerprint": fp, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "seconds": seconds, "argv": argv})
        entry.update(status="ran", seconds=seconds)
        left = sum(b or 0 for s, b in budgets.items() if s in names[names.index(stage.name) + 1:])
        print(f"[foundry run] {where}: done in {clock(seconds)}"
              + (f"; time boxes still ahead {clock(left)}" if left else ""), flush=True)
        record["stages"].append(entry)
        prints[stage.name] = fp
    record["seconds"] = round(time.time() - started, 1)
    atomic_write_json(run_dir / "pipeline.json", record)
    return record

