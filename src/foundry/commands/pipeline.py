"""Pipeline verbs: run (a recipe of stages), quickstart."""

from __future__ import annotations

from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import ConfigError


def print_summary(record: dict, run_dir: Path) -> None:
    print(f"\n[foundry run] {record['name']}: {len(record['stages'])} stages in {record['seconds']:.0f} s")
    for entry in record["stages"]:
        seconds = entry.get("seconds")
        print(f"  {entry['name']:<14} {entry['status']:<8} {'' if seconds is None else f'{seconds:7.1f} s'}")
    report = next((Path(e["output"]) / "report.md" for e in record["stages"]
                   if (Path(e["output"]) / "report.md").is_file()), None)
    if report is not None:
        findings = report.with_name("findings.json")
        if findings.is_file():
            from foundry.eval.report import print_findings
            from foundry.utils.io import read_json

            print()
            print_findings(read_json(findings)["findings"])
        print(f"\nReport: {report}")
        card = report.with_name("MODEL_CARD.md")
        if card.is_file():
            print(f"Model card: {card}")
    print(f"Run directory: {run_dir}")


def run_main(argv: list[str]) -> int:
    from foundry.pipeline import load_recipe, run_recipe
    parser = make_parser("run")
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="out_dir=PATH to write the run elsewhere; NAME=VALUE sets a "
                                                     "recipe variable (its vars:, e.g. model=HF_DIR)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="re-run this stage even if unchanged (repeatable)")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")
    args = parser.parse_args(argv)
    recipe_path = Path(args.recipe)
    recipe = load_recipe(recipe_path, args.overrides)
    record = run_recipe(recipe, recipe_path, args.force, args.until)
    print_summary(record, Path(recipe.out_dir).resolve())
    return 0


def quickstart_main(argv: list[str]) -> int:
    from foundry.utils.bundled import bundled_root
    parser = make_parser("quickstart")
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    parser.add_argument("--recipe", default=str(bundled_root() / "recipes" / "quickstart.yaml"))
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")
    args = parser.parse_args(argv)
    if not Path(args.recipe).is_file():
        raise ConfigError(f"{args.recipe}: the bundled quickstart recipe is missing (is this a full checkout?)")
    return run_main([args.recipe, f"out_dir={args.out}"] + (["--until", args.until] if args.until else []))
