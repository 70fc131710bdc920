"""MODEL_CARD.md: lineage, data provenance, knowledge cutoff, evaluation and intended use of a run's model.

Lineage follows `parents.checkpoint` links in `run.json` records from the model's stage back to a stage
that started from random weights (or a checkpoint made outside foundry). Data provenance comes from
the `manifest.json` of every dataset directory a lineage stage names in its `parents` (the format of
`foundry data prepare`: per source file its path, sha256, license, origin, collection date and the
documents kept and dropped by reason). The knowledge cutoff is the latest collection date among the
sources of the pretraining and continual-pretraining data.
"""

from __future__ import annotations

from pathlib import Path

from foundry.errors import ConfigError
from foundry.eval.run_view import RunView, RunStage
from foundry.stages import spec_for_record
from foundry.utils.io import read_json_or_none
from foundry.utils.tables import fmt, md_table

CHECKPOINT_ROLES = ("checkpoint", "init", "reference")


def _paths_in(value) -> list[str]:
    """Every string found in a `parents` value (a path, a list of paths, a mapping of name -> path)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return []


def _owner_record(path: Path, view: RunView) -> tuple[str, Path, dict] | None:
    """(name, directory, run.json) of the stage that holds `path` (walking up its parent directories)."""
    try:
        path = path.resolve()
    except OSError:
        return None
    for d in [path, *path.parents]:
        f = d / "run.json"
        if f.is_file():
            record = read_json_or_none(f)
            if isinstance(record, dict):
                try:
                    name = d.relative_to(view.root.resolve()).as_posix() or d.name
                except ValueError:
                    name = str(d)
                return name, d, record
    return None


def pick_model_stage(view: RunView, name: str | None) -> RunStage | None:
    if name is not None:
        stage = next((s for s in view.stages if s.name == name or s.name.split("/")[-1] == name), None)
        if stage is None:
            raise ConfigError(f"{view.root}: no stage '{name}' (stages: {', '.join(s.name for s in view.stages)})")
        return stage
    trained = [s for s in view.stages if (s.spec is not None and s.spec.trains) or (s.dir / "checkpoints").is_dir()]
    finished = [s for s in trained if s.results.get("status") not in ("running", "interrupted")]
    return (finished or trained or [None])[-1]


def lineage(view: RunView, stage: RunStage) -> list[dict]:
    """From the model's stage back to its root: [{name, dir, record, parent_checkpoint}], newest first."""
    chain, seen = [], set()
    current: tuple[str, Path, dict] | None = (stage.name, stage.dir, stage.record)
    while current is not None and str(current[1]) not in seen and len(chain) < 50:
        name, d, record = current
        seen.add(str(d))
        parents = record.get("parents") or {}
        ckpt = next((parents[r] for r in CHECKPOINT_ROLES if isinstance(parents.get(r), str)), None)
        chain.append({"name": name, "dir": d, "record": record, "parent_checkpoint": ckpt,
                      "reference": parents.get("reference") if isinstance(parents.get("reference"), str) else None})
        current = _owner_record(Path(ckpt), view) if ckpt else None
        if ckpt and current is None:
            chain.append({"name": ckpt, "dir": Path(ckpt), "record": {"stage": "external"}, "parent_checkpoint": None,
                          "reference": None})
    return chain


def datasets_of(record: dict) -> list[tuple[Path, dict]]:
    """(dataset dir, manifest) for every dataset the stage trained on (named in its parents).

    A dataset in a continual-pretraining mixture with weight 0 is only evaluated on, never trained on,
    so it is left out.
    """
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    mixture = config.get("mixture") if isinstance(config.get("mixture"), list) else []
    eval_only = {str(Path(m["data"]).resolve()) for m in mixture
                 if isinstance(m, dict) and m.get("weight") == 0 and isinstance(m.get("data"), str)}
    found, seen = [], set()
    for p in _paths_in(record.get("parents") or {}):
        d = Path(p)
        manifest = d / "manifest.json"
        key = str(d.resolve())
        if manifest.is_file() and key not in seen and key not in eval_only:
            seen.add(key)
            data = read_json_or_none(manifest)
            if isinstance(data, dict):
                found.append((d, data))
    return found


def data_files_of(record: dict) -> list[dict]:
    """Manifest-style source records for a stage that trains on a file directly (sft, dpo: `config.data`),
    with the license, origin and collection date of the nearest SOURCE.yaml above the file."""
    from foundry.data.sources import read_sidecar

    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    path = config.get("data")
    if not isinstance(path, str) or not Path(path).is_file():
        return []
    file = Path(path)
    side: dict = {}
    for folder in list(file.resolve().parents)[:4]:
        if (folder / "SOURCE.yaml").is_file():
            try:
                side = read_sidecar(folder / "SOURCE.yaml")
            except Exception:  # a damaged sidecar must not stop the card; the source shows as unlicensed
                side = {}
            break
    sha = (record.get("data_manifests") or {}).get(file.name)
    if sha is None:
        from foundry.utils.io import sha256_file

        sha = sha256_file(file)
    with open(file, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return [{"path": str(file), "group": str(file.parent), "sha256": sha, "license": side.get("license"),
             "origin": side.get("origin") or side.get("source"), "collected": side.get("collected"),
             "unlicensed": not side.get("license"), "documents": {"kept": lines, "dropped": {}}}]


def _short(path: str, keep: int = 3) -> str:
    parts = Path(path).parts
    return "/".join(parts[-keep:]) if len(parts) > keep else path


def _date(value) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:10]


def provenance(chain: list[dict]) -> tuple[list[list[str]], list[list[str]], list[str], dict, list[list[str]]]:
    """(source rows grouped by corpus, cleaning rows, unlicensed source paths,
    {"cutoff", "cutoff_source", "later"}, one row per source file)."""
    groups: dict[tuple, list] = {}
    files, cleaning, unlicensed, seen_files = [], [], [], set()
    cutoff, cutoff_source, later = None, None, []
    for entry in reversed(chain):  # oldest stage first
        kind = str(entry["record"].get("stage", "?"))
        spec = spec_for_record(entry["record"])
        direct = data_files_of(entry["record"])
        for d, manifest in datasets_of(entry["record"]) + [(Path(x["path"]).parent, {"sources": [x]}) for x in direct]:
            for src in manifest.get("sources", []):
                docs = src.get("documents", {})
                dropped = docs.get("dropped", {}) or {}
                lic = src.get("license")
                path = str(src.get("path", "?"))
                if not lic or src.get("unlicensed"):
                    unlicensed.append(path)
                collected = _date(src.get("collected"))
                corpus = src.get("group") or str(Path(path).parent)
                key = (entry["name"], kind, d.name, _short(corpus, 2), lic if lic else "**UNLICENSED**",
                       str(src.get("origin") or "-"), collected or "-")
                agg = groups.setdefault(key, [0, 0, 0])
                agg[0] += 1
                agg[1] += docs.get("kept") or 0
                agg[2] += sum(v for v in dropped.values() if isinstance(v, int))
                if (d.name, path) not in seen_files:
                    seen_files.add((d.name, path))
                    files.append([d.name, _short(path), lic if lic else "**UNLICENSED**", collected or "-",
                                  str(src.get("sha256", "")), fmt(docs.get("kept"))])
                if collected:
                    if spec is not None and spec.sets_cutoff:
                        if cutoff is None or collected > cutoff:
                            cutoff, cutoff_source = collected, src.get("path")
                    else:
                        later.append((collected, src.get("path"), kind))
            if "totals" not in manifest:  # a file trained on directly: no cleaning pass to report
                continue
            tot = (manifest.get("totals") or {}).get("documents", {})
            dr = tot.get("dropped", {}) or {}
            evals = manifest.get("eval_files") or []
            eval_names = ", ".join(_short(e.get("path", str(e)) if isinstance(e, dict) else str(e), 1) for e in evals)
            cleaning.append([entry["name"], d.name, fmt(tot.get("read")), fmt(tot.get("kept")),
                             fmt(dr.get("exact_duplicate")), fmt(dr.get("near_duplicate")),
                             fmt(dr.get("contaminated")), eval_names or "none", fmt(dr.get("too_short"))])
    later = [x for x in later if cutoff is None or x[0] > cutoff]
    rows = [[*key, fmt(n), fmt(kept), fmt(dropped)] for key, (n, kept, dropped) in groups.items()]
    cut = {"cutoff": cutoff, "cutoff_source": cutoff_source, "later": later}
    return rows, cleaning, sorted(set(unlicensed)), cut, files


def _model_facts(stage_dir: Path) -> dict:
    try:
        from foundry.checkpoints import load_model_config, resolve_checkpoint

        ckpt = resolve_checkpoint(stage_dir)
        cfg = load_model_config(ckpt)
        return {"checkpoint": ckpt, "params": cfg.num_params(), "context": cfg.max_seq_len, "layers": cfg.n_layer,
                "width": cfg.n_embd, "vocab": cfg.vocab_size, **_chat_facts(ckpt)}
    except Exception:  # a card is still useful for a run whose checkpoint was moved or damaged
        return {}


def _chat_facts(ckpt: Path) -> dict:
    """The chat template a checkpoint's tokenizer carries, the tokens foundry added to its vocabulary and its
    stop tokens (from tokenizer_config.json), for the card's architecture lines."""
    import hashlib

    from foundry.data.chat import CHAT_TEMPLATE

    config = read_json_or_none(ckpt / "tokenizer_config.json")
    template = config.get("chat_template") if isinstance(config, dict) else None
    if not isinstance(template, str):
        return {}
    digest = hashlib.sha256(template.encode()).hexdigest()[:12]
    return {"template": "foundry's" if template == CHAT_TEMPLATE else f"the model's own (sha256 {digest})",
            "added_tokens": config.get("foundry_added_tokens") or [], "stop_tokens": config.get("foundry_stop_tokens") or []}


def render_model_card(view: RunView, model_stage: str | None = None) -> str:
    stage = pick_model_stage(view, model_stage)
    lines = ["# Model card", ""]
    if stage is None:
        return "\n".join(lines + [f"No training stage found in `{view.root}`; nothing to describe.", ""])
    facts = _model_facts(stage.dir)
    chain = lineage(view, stage)
    did = f": {stage.spec.card}" if stage.spec is not None else ""
    lines += [f"Model: the output of stage **{stage.name}** ({stage.kind}{did}) in `{view.root}`.", ""]
    if facts:
        lines += [f"- Checkpoint: `{facts['checkpoint']}`",
                  f"- Architecture: Llama-family decoder, {facts['params'] / 1e6:.2f}M parameters, {facts['layers']} "
                  f"layers, width {facts['width']}, vocabulary {facts['vocab']:,}, context {facts['context']} tokens"]
        if facts.get("template"):
            lines.append(f"- Chat template: {facts['template']}" + (
                f"; stops at {', '.join(f'`{t}`' for t in facts['stop_tokens'])}" if facts["stop_tokens"] else ""))
        if facts.get("added_tokens"):
            lines.append(f"- Tokens foundry added to the vocabulary (embedding rows initialised as the mean of the "
                         f"others): {', '.join(f'`{t}`' for t in facts['added_tokens'])}")
        lines.append("")
    tok = (stage.record.get("parents") or {}).get("tokenizer")
    if not tok:
        tok = next(((e["record"].get("parents") or {}).get("tokenizer") for e in chain
                    if (e["record"].get("parents") or {}).get("tokenizer")), None)
    if tok:
        sha = next(((e["record"].get("parents") or {}).get("tokenizer_sha256") for e in chain
                    if (e["record"].get("parents") or {}).get("tokenizer_sha256")), None)
        lines += [f"- Tokenizer: `{tok}`" + (f" (sha256 {sha[:12]})" if sha else ""), ""]

    # Lineage
    lines += ["## Lineage", "", "Newest first; each stage started from the checkpoint in its row.", ""]
    rows = []
    for e in chain:
        r = e["record"]
        spec = spec_for_record(r)
        results = r.get("results") or {}
        val = next((results[k] for k in ("best/val/loss", "val/loss") if isinstance(results.get(k), (int, float))), None)
        if val is None:
            val = next((v for k, v in results.items() if k.startswith("best/") and isinstance(v, (int, float))), None)
        rows.append([e["name"], str(r.get("stage", "?")), str(r.get("created", "-")),
                     f"`{e['parent_checkpoint']}`" if e["parent_checkpoint"] else "random initialisation"
                     if spec is not None and spec.from_scratch else "-",
                     fmt(results.get("step")), fmt(val), str(r.get("code_version", "-"))[:16],
                     spec.card if spec is not None else "-"])
    lines += [md_table(["stage", "kind", "created", "started from", "steps", "best val loss", "code", "what it did"],
                       rows), ""]
    refs = [e for e in chain if e.get("reference")]
    for e in refs:
        lines += [f"Stage {e['name']} used the reference model `{e['reference']}`.", ""]

    # Data
    source_rows, cleaning, unlicensed, cut, files = provenance(chain)
    lines += ["## Training data provenance", ""]
    if source_rows:
        lines += ["Per corpus (every source file, with its sha256, is listed at the end of this card):", "",
                  md_table(["stage", "kind", "dataset", "corpus", "license", "origin", "collected", "files",
                            "docs kept", "docs dropped"], source_rows), ""]
        lines += ["Cleaning, deduplication and decontamination per dataset:", "",
                  md_table(["stage", "dataset", "docs read", "kept", "exact duplicates", "near duplicates",
                            "contaminated (decontamination)", "decontaminated against", "too short"], cleaning), ""]
    else:
        lines += ["No dataset manifest was found among the lineage's parents.", ""]
    if unlicensed:
        lines += [f"**Flagged: {len(unlicensed)} source(s) without a license:** "
                  + ", ".join(f"`{_short(u)}`" for u in unlicensed)
                  + ". Establish the right to use them before distributing this model.", ""]
    else:
        lines += ["Every source states a license.", ""] if source_rows else []

    # Knowledge cutoff
    lines += ["## Knowledge cutoff", ""]
    if cut["cutoff"]:
        lines += [f"**Knowledge cutoff: {cut['cutoff']}.** This is the latest collection date among the pretraining "
                  f"and continual-pretraining sources (set by `{_short(cut['cutoff_source'] or '?')}`). The model knows "
                  f"nothing of events after {cut['cutoff']}.", ""]
    else:
        lines += ["Knowledge cutoff: **unknown**: no pretraining source states its collection date. Record "
                  "`collected` in each source's SOURCE.yaml.", ""]
    for date, path, kind in cut["later"]:
        lines += [f"Note: {kind} data `{_short(path or '?')}` was collected later ({date}); it shapes behaviour, "
                  "and may carry facts, up to that date.", ""]

    # Evaluation of this model
    own = []
    stage_dir = stage.dir.resolve()
    for path, results in view.evals:
        for m in results.get("models", []):
            evaluated = Path(str(m.get("path", ""))).resolve()
            if evaluated == stage_dir or stage_dir in evaluated.parents:
                for d, r in m.get("perplexity", {}).items():
                    own.append([f"perplexity {d} (val)", fmt(r.get("ppl")), f"bits/byte {fmt(r.get('bpb'))}"])
                for t, r in m.get("tasks", {}).items():
                    extra = f"acc_norm {fmt(r.get('acc_norm'))}" if r.get("kind") == "mc" else (
                        f"grounded {fmt(r.get('grounded_acc'))}" if "grounded_acc" in r else "")
                    own.append([f"{t} (n={r.get('n')})", f"acc {fmt(r.get('acc'))}", extra])
    if own:
        lines += ["## Evaluation", "", md_table(["measure", "value", "also"], own), "",
                  "Full tables, with the other models compared, are in report.md.", ""]

    # Intended use
    size = f"{facts['params'] / 1e6:.1f}M-parameter " if facts else ""
    lines += ["## Intended use", "",
              f"A small {size}language model built with foundry for research, teaching and as a starting point for "
              "domain adaptation, evaluated only on the tasks listed above. Use it to study training dynamics, to "
              "compare recipes, or to draft text in the domain of its training data under human review.", "",
              "## Limits", "",
              "- It produces fluent but often wrong text: do not rely on it for facts, advice (medical, legal, "
              "financial, safety) or decisions about people.",
              f"- It knows nothing after its knowledge cutoff ({cut['cutoff'] or 'unknown'}) and little outside its "
              "training sources listed above; it inherits their biases and their language coverage.",
              "- Scores above come from small bundled tasks; they show relative progress between stages, not "
              "fitness for any deployment.",
              "- Check the licenses above (and any flagged unlicensed source) before redistributing the weights or "
              "their outputs.", ""]
    if files:
        lines += ["## Source files", "", md_table(["dataset", "file", "license", "collected", "sha256", "docs kept"],
                                                   files), ""]
    return "\n".join(lines)

