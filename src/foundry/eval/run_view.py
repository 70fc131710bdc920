"""What `foundry report` and the model card read from a run directory: its stages (`run.json`, `metrics.jsonl`),
evaluation results and bake-off summaries, and the pipeline's timing (the module docstring of
`foundry.eval.report` lists the files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundry.errors import ConfigError, FoundryError
from foundry.utils.io import read_json_or_none, read_metrics

SKIP_DIRS = {"checkpoints", "tokens", "tb", "plots", "__pycache__"}
MAX_JSON_BYTES = 20 << 20


@dataclass
class RunStage:
    """One stage directory of a run as the report reads it: its run.json and metrics.jsonl (not the recipe's
    stage, `foundry.pipeline.RecipeStage`, nor the stage runner, `foundry.train.stage.StageRunner`)."""

    name: str  # path relative to the run directory
    dir: Path
    record: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.record.get("stage", "?"))

    @property
    def spec(self):
        """The stage registry's entry for this stage (`foundry.stages.StageSpec`), None for other verbs' records."""
        from foundry.stages import spec_for_record

        return spec_for_record(self.record)

    @property
    def results(self) -> dict:
        r = self.record.get("results")
        return r if isinstance(r, dict) else {}


@dataclass
class RunView:
    root: Path
    stages: list[RunStage]
    evals: list[tuple[Path, dict]]
    bakeoffs: list[tuple[Path, dict]]
    timing: dict  # stage name -> seconds (from the pipeline's state files)
    pipeline: dict | None


def walk_run(root: Path, depth: int = 4):
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
        yield from walk_run(child, depth - 1)


def discover(run_dir: str | Path) -> RunView:
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: run directory not found")
    stages, evals, bakeoffs = [], [], []
    for d in walk_run(root):
        run_json = d / "run.json"
        if run_json.is_file():
            record = read_json_or_none(run_json)
            if not isinstance(record, dict):
                raise FoundryError(f"{run_json}: not valid JSON; the stage record is damaged")
            name = root.resolve().name if d == root else d.relative_to(root).as_posix()
            stages.append(RunStage(name, d, record, read_metrics(d)))
        for f in sorted(d.glob("*.json")):
            if f.name == "run.json" or f.stat().st_size > MAX_JSON_BYTES:
                continue
            data = read_json_or_none(f)
            if isinstance(data, dict) and data.get("kind") == "foundry.eval":
                evals.append((f, data))
            elif isinstance(data, dict) and data.get("kind") == "foundry.bakeoff":
                bakeoffs.append((f, data))
    timing, order = {}, {}
    state = root / ".pipeline"
    if state.is_dir():
        for f in state.glob("*.json"):
            data = read_json_or_none(f)
            if isinstance(data, dict) and "seconds" in data:
                timing[f.stem] = data["seconds"]
    pipeline = read_json_or_none(root / "pipeline.json") if (root / "pipeline.json").is_file() else None
    if isinstance(pipeline, dict):
        for i, entry in enumerate(pipeline.get("stages", [])):
            order[entry.get("name")] = i
    if not stages and not evals and not bakeoffs:
        raise ConfigError(f"{root}: no run.json, eval results or bake-off found; is this a foundry run directory?")
    # Pipeline order where the pipeline recorded one, else the order the stages finished in.
    stages.sort(key=lambda s: (order.get(s.name.split("/")[0], len(order)), str(s.record.get("created", "")), s.name))
    return RunView(root, stages, evals, bakeoffs, timing, pipeline if isinstance(pipeline, dict) else None)
