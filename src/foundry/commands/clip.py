"""Image-text verbs: `data images` (prepare pairs), `clip` (train), `clip eval` (zero-shot, retrieval, probe)."""

from __future__ import annotations

from pathlib import Path

from foundry.cli import make_parser
from foundry.commands import load_recipe_args, recipe_parser
from foundry.errors import ConfigError, DataError


def data_images_main(argv: list[str]) -> int:
    from foundry.data.images import MIN_SIDE, prepare_pairs
    from foundry.data.sources import read_sidecar

    p = make_parser("data images")
    p.add_argument("sources", nargs="+", help="captions .jsonl ({image, caption, label}), WebDataset .tar shard, "
                   "or a folder holding captions.jsonl or *.tar; a SOURCE.yaml beside it gives the license")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--license", help="license of sources without a SOURCE.yaml")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out (by content hash)")
    p.add_argument("--template", action="append", default=[], help="zero-shot prompt for the labels, with {} "
                   "where the label goes (repeatable), for example 'a handwritten digit {}'")
    p.add_argument("--min-side", type=int, default=MIN_SIDE, help="drop images smaller than this on a side")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    specs = []
    for source in args.sources:
        path = Path(source)
        folder = path if path.is_dir() else path.parent
        sidecar = read_sidecar(folder / "SOURCE.yaml") if (folder / "SOURCE.yaml").is_file() else {}
        license_ = sidecar.get("license") or args.license
        if not license_:
            raise ConfigError(f"{source}: no license: add a SOURCE.yaml beside it or pass --license")
        specs.append({"path": source, "license": str(license_), "name": sidecar.get("name") or path.name,
                      "description": str(sidecar.get("notes", "")).strip()})
    manifest = prepare_pairs(specs, args.out, args.val_fraction, args.min_side, args.template, args.overwrite)
    first = manifest.get("first_dropped", {})
    dropped = ", ".join(f"{k} {v}" + (f" (first {first[k]})" if k in first else "")
                        for k, v in manifest["dropped"].items()) or "none"
    print(f"foundry data images: {manifest['pairs']} pairs (train {manifest['splits']['train']}, val "
          f"{manifest['splits']['val']}, {len(manifest['labels'])} labels); dropped: {dropped} -> {args.out}")
    return 0


def run_clip_stage(cfg, resume: bool = False) -> dict:
    """`foundry clip`'s typed entry point (the stage registry's): the zero-shot evaluators of `cfg.zero_shot`
    (built here, where training and evaluation meet), then `run_clip`."""
    from foundry.data.images import load_pairs
    from foundry.eval.clip import zero_shot_evaluator
    from foundry.train.clip import run_clip

    evaluators = {}
    for name, dataset in cfg.zero_shot.items():
        pairs = load_pairs(dataset, "val")
        if any(label is None for label in pairs.labels):
            raise DataError(f"zero_shot.{name}: {dataset} has pairs without a label; zero-shot needs labels")
        evaluators[name] = zero_shot_evaluator(pairs, pairs.templates)
    return run_clip(cfg, resume=resume, evaluators=evaluators)


def clip_main(argv: list[str]) -> int:
    from foundry.train.clip import ClipStageConfig

    p = recipe_parser("clip", ClipStageConfig, "train.max_steps=200 objective=siglip",
                      "recipe YAML (data, out_dir, model or init, train, zero_shot; see recipes/clip.yaml)")
    args = p.parse_args(argv)
    run_clip_stage(load_recipe_args(ClipStageConfig, args), resume=args.resume)
    return 0


def clip_eval_main(argv: list[str]) -> int:
    from foundry.checkpoints import load_model
    from foundry.data.images import load_pairs
    from foundry.eval.clip import evaluate_pairs, model_card, retrieval_grid
    from foundry.model.clip import Clip
    from foundry.utils.io import atomic_write_json, atomic_write_text

    p = make_parser("clip eval")
    p.add_argument("checkpoint", help="CLIP checkpoint or run directory")
    p.add_argument("--data", action="append", required=True, metavar="NAME=DIR",
                   help="dataset from 'foundry data images' to evaluate on (its val split; repeatable)")
    p.add_argument("--out", required=True, help="directory for results.json, report.md (with retrieval grids) "
                   "and model_card.md")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a directory")
    if (out / "results.json").exists() and not args.overwrite:
        raise ConfigError(f"--out {out}: holds an earlier evaluation (results.json); pass --overwrite to replace it")
    model, tokenizer = load_model(args.checkpoint)
    if not isinstance(model, Clip):
        raise ConfigError(f"{args.checkpoint}: not a CLIP checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    results, lines = {}, [f"# CLIP evaluation: {args.checkpoint}", "",
                          "| set | pairs | zero-shot acc | chance | linear probe | i2t R@1/5/10 | t2i R@1/5/10 |",
                          "|---|---|---|---|---|---|---|"]
    grids = ["", "## Retrieved images (rows: a class prompt; columns: its top 5 held-out images)", ""]
    for item in args.data:
        name, _, directory = item.rpartition("=")
        name = name or Path(directory).name
        val = load_pairs(directory, "val")
        train = load_pairs(directory, "train") if not args.no_probe else None
        r = evaluate_pairs(model, tokenizer, val, val.templates, train_set=train, probe=not args.no_probe)
        r.pop("_images", None), r.pop("_predicted", None)
        results[name] = r
        fmt = lambda key: f"{r[key]:.3f}" if key in r else "-"  # noqa: E731
        recall = lambda d: "/".join(f"{r[f'{d}_r@{k}']:.2f}" for k in (1, 5, 10))  # noqa: E731
        lines.append(f"| {name} | {r['n']} | {fmt('zero_shot_acc')} | {fmt('chance')} | {fmt('linear_probe_acc')} | "
                     f"{recall('i2t')} | {recall('t2i')} |")
        if all(label is not None for label in val.labels):
            classes = sorted(set(val.labels))[:6]
            grid = out / f"retrieval-{name}.png"
            retrieval_grid(model, tokenizer, val, [val.templates[0].format(c) for c in classes], grid)
            grids.append(f"![top-5 images for each class prompt, {name}]({grid.name})")
    atomic_write_json(out / "results.json", {"kind": "foundry.clip_eval", "checkpoint": str(args.checkpoint),
                                              "results": results})
    atomic_write_text(out / "report.md", "\n".join(lines + grids) + "\n")
    atomic_write_text(out / "model_card.md", model_card(args.checkpoint, model, results))
    for name, r in results.items():
        shot = f"zero-shot {r['zero_shot_acc']:.3f} (chance {r['chance']:.3f})" if "zero_shot_acc" in r else ""
        print(f"foundry clip eval: {name}: {shot} i2t R@1 {r['i2t_r@1']:.3f} t2i R@1 {r['t2i_r@1']:.3f}"
              + (f" linear probe {r['linear_probe_acc']:.3f}" if "linear_probe_acc" in r else ""))
    print(f"-> {out / 'results.json'}")
    return 0
