"""Evaluation verbs: eval, bakeoff, report, coverage."""

from __future__ import annotations

import json
import time
from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import ConfigError


def eval_main(argv: list[str]) -> int:
    from foundry.eval.harness import evaluate, lm_eval_row, model_name, print_tables
    from foundry.eval.tasks import load_task
    from foundry.utils.io import atomic_write_json, code_version

    p = make_parser("eval")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoint or run directory, optionally named: NAME=PATH")
    p.add_argument("--data", nargs="+", action="extend", default=[], metavar="DATASET_DIR",
                   help="dataset directories (from 'foundry data prepare'); scores their val split")
    p.add_argument("--tasks", nargs="+", action="extend", default=[], metavar="TASK.jsonl",
                   help="multiple-choice or generation task files (see foundry.eval.tasks)")
    p.add_argument("--out", help="write results JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples for multiple-choice tasks")
    p.add_argument("--index", help="retrieval index directory: also run every task grounded")
    p.add_argument("--k", type=int, default=3, help="passages retrieved per grounded prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation task answer length")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many val tokens per dataset")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--lm-eval", nargs="+", action="extend", default=[], metavar="TASK",
                   help="lm-evaluation-harness tasks too (offline; --shots applies; see docs/EVALUATION.md)")
    p.add_argument("--lm-eval-include", metavar="DIR", help="folder of local lm-eval task YAMLs")
    p.add_argument("--lm-eval-limit", type=int, metavar="N", help="score only the first N items of each lm-eval task")
    p.add_argument("--labelled", metavar="FILE", help="a classifier (foundry finetune): score it on labelled JSONL "
                   "{text, label} or CSV (accuracy, macro-F1, confusion matrix)")
    args = p.parse_args(argv)

    if args.labelled:
        return _eval_classifiers(args)
    if not args.data and not args.tasks and not args.lm_eval:
        raise ConfigError("foundry eval: nothing to evaluate; pass --data DATASET_DIR, --tasks TASK.jsonl "
                          "and/or --lm-eval TASK")
    if args.lm_eval_limit is not None and args.lm_eval_limit < 1:
        raise ConfigError(f"foundry eval: --lm-eval-limit must be >= 1, got {args.lm_eval_limit}")
    if args.shots < 0:
        raise ConfigError(f"foundry eval: --shots must be >= 0, got {args.shots}")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"{args.out}: already exists; pass --overwrite to replace it")
    for d in args.data:
        if not Path(d).is_dir():
            raise ConfigError(f"{d}: dataset directory not found")
    tasks = [load_task(t) for t in args.tasks]  # validate every file before any model is loaded
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"foundry eval: two task files share a name ({names}); rename one")
    for t in tasks:
        if t.kind == "mc":
            t.split_shots(args.shots)
    lm_eval_manager = None
    if args.lm_eval:  # unknown names fail here, before any model is loaded
        from foundry.eval import lm_eval

        lm_eval_manager = lm_eval.task_manager(args.lm_eval, args.lm_eval_include)
        lm_eval.check_tasks(args.lm_eval, lm_eval_manager)
    index = None
    if args.index:
        from foundry.serve.retrieval import Index

        index = Index.load(args.index)

    from foundry.checkpoints import load_model, pick_device

    device = pick_device(args.device)
    results: dict = {"kind": "foundry.eval", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "code_version": code_version(), "shots": args.shots, "index": args.index,
                     "datasets": [str(d) for d in args.data], "task_files": list(args.tasks), "models": []}
    if args.lm_eval:
        results["lm_eval"] = {"tasks": args.lm_eval, "include": args.lm_eval_include, "limit": args.lm_eval_limit,
                              "version": lm_eval.lm_eval_version()}
    taken: set[str] = set()
    for spec in args.models:
        name, path = model_name(spec, taken)
        taken.add(name)
        print(f"[eval] {name} ({path})")
        model, tokenizer = load_model(path, device=device, verb="foundry eval")
        block = evaluate(model, tokenizer, args.data, tasks, args.shots, index, args.max_new_tokens,
                         args.max_tokens, args.batch_size, k=args.k)
        if args.lm_eval:
            t0 = time.perf_counter()
            block["lm_eval"] = lm_eval.run_lm_eval(model, tokenizer, args.lm_eval, limit=args.lm_eval_limit,
                                                   num_fewshot=args.shots, batch_size=args.batch_size,
                                                   manager=lm_eval_manager)
            block["seconds"]["lm_eval"] = round(time.perf_counter() - t0, 2)
            for task, r in block["lm_eval"].items():
                print(f"  lm-eval {task}: {lm_eval_row(task, name, r)[3]}")
        results["models"].append({"name": name, "path": str(Path(path).resolve()), **block})
        del model
    print_tables(results)
    if args.out:
        atomic_write_json(args.out, results)
        print(f"results -> {args.out}")
    return 0


def bakeoff_main(argv: list[str]) -> int:
    from foundry.eval.bakeoff.summary import add_ratings, run_bakeoff

    if argv[:1] == ["rate"]:
        return bakeoff_rate_main(argv[1:])
    if argv[:1] == ["summary"]:
        return bakeoff_summary_main(argv[1:])
    p = make_parser("bakeoff", "side-by-side comparison of local models, OpenAI-compatible endpoints and served "
                               "models on a rubric (automatic, judge and human criteria), with cost, latency and a "
                               "recommendation (docs/BAKEOFF.md); a re-run into the same --out asks only for missing "
                               "answers. Also: 'foundry bakeoff rate OUT --rater NAME' (the rating page) and "
                               "'foundry bakeoff summary OUT' (the decision table from the ratings store)")
    p.add_argument("--config", help="bake-off YAML (models, prompts, rubric, sampling); not needed with --ratings")
    p.add_argument("--out", required=True, help="output directory (outputs, rating sheet, key, summary)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="add a local model, or set the path of a contender (local or serve:) or judge the config "
                        "names; repeatable")
    p.add_argument("--style-model", help="model for style_perplexity criteria (overrides the rubric's)")
    p.add_argument("--ratings", help="a filled rating_sheet.csv: un-blind it and add the human criteria")
    p.add_argument("--overwrite", action="store_true",
                   help="ask every contender afresh into an --out that already has answers (default: resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the bake-off in --out, asking only for missing answers (what a re-run does "
                        "anyway; the pipeline passes it to an interrupted stage)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. temperature=0)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ConfigError("foundry bakeoff: --resume keeps the answers in --out and --overwrite discards them; "
                          "pass one")
    if args.ratings:
        add_ratings(out, args.ratings)
        print(f"summary with ratings -> {out / 'bakeoff.md'}")
        return 0
    if not args.config:
        raise ConfigError("foundry bakeoff: --config BAKEOFF.yaml is required to generate a bake-off")

    from foundry.checkpoints import require_language_model

    for spec in args.model:  # a CLIP checkpoint is refused here, in one line, before anything is generated
        _, _, path = spec.partition("=")
        if path and Path(path).exists():
            require_language_model(path, "foundry bakeoff --model")
    summary = run_bakeoff(Path(args.config), out, args.overrides, args.model, args.style_model, args.overwrite)
    if summary["human_pending"]:
        print(f"\nrating sheet for raters: {out / 'rating_sheet.csv'} (the key, {out / 'blind_key.json'}, stays "
              f"with you); then: foundry bakeoff --out {out} --ratings FILLED.csv\n"
              f"or rate in the browser: foundry bakeoff rate {out} --rater NAME [--rater NAME ...]")
    print(f"summary -> {out / 'bakeoff.md'}")
    return 0


def bakeoff_rate_main(argv: list[str]) -> int:
    import uvicorn

    from foundry.eval.bakeoff.rate import create_rating_app, ensure_raters
    from foundry.eval.bakeoff.summary import refresh_summary

    p = make_parser("bakeoff rate", "a local web page where named raters rate the blinded answers of a bake-off "
                                    "(docs/PEOPLE.md)")
    p.add_argument("out", metavar="OUT", help="the bake-off directory (from 'foundry bakeoff --config ... --out OUT')")
    p.add_argument("--rater", action="append", default=[], metavar="NAME",
                   help="a rater to create a link for (repeatable); raters named before keep their links")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    out = Path(args.out)
    if not (out / "blind_key.json").is_file():
        raise ConfigError(f"{out}: not a bake-off directory (no blind_key.json); run "
                          f"'foundry bakeoff --config BAKEOFF.yaml --out {out}' first")
    raters = ensure_raters(out, args.rater)
    if not raters:
        raise ConfigError(f"{out}: no raters yet; name them: foundry bakeoff rate {out} --rater alice --rater bob")
    app = create_rating_app(out, raters)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"rating page for {out} (ratings saved to {out / 'ratings.json'} as they are given):")
    for name, token in raters.items():
        print(f"  {name}: http://{shown}:{args.port}/?t={token}")
    print("Send each rater their own link. Ctrl-C stops the page and rewrites the summary.")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    refresh_summary(out)
    print(f"summary with ratings -> {out / 'bakeoff.md'}")
    return 0


def bakeoff_summary_main(argv: list[str]) -> int:
    from foundry.eval.bakeoff.summary import refresh_summary

    p = make_parser("bakeoff summary", "print the decision table and recommendation, and rewrite OUT/bakeoff.json "
                                       "and bakeoff.md from the ratings store, with the raters' agreement")
    p.add_argument("out", metavar="OUT", help="the bake-off directory")
    args = p.parse_args(argv)
    refresh_summary(Path(args.out))
    print(f"summary with ratings -> {Path(args.out) / 'bakeoff.md'}")
    return 0


def report_main(argv: list[str]) -> int:
    from foundry.eval.report import print_findings, write_report

    p = make_parser("report")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from 'foundry run' or any stage)")
    p.add_argument("--out", help="where to write report.md, report.html, plots/ and MODEL_CARD.md (default RUN_DIR)")
    p.add_argument("--model", dest="model_stage", metavar="STAGE",
                   help="the stage whose model the card describes (default: the last training stage)")
    p.add_argument("--findings", metavar="YAML",
                   help="claims to compute (a mapping with a 'findings:' list; default RUN_DIR/findings.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run_dir)
    existing = [f for f in ("report.md", "MODEL_CARD.md") if (out / f).exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{out / existing[0]}: already exists; pass --overwrite to replace the report")
    paths = write_report(args.run_dir, out, args.model_stage, args.findings)
    if paths["findings"]:
        print_findings(paths["findings"])
    print(f"report: {paths['report']} (+ {paths['html'].name}, {len(paths['plots'])} plot(s))")
    print(f"model card: {paths['model_card']}")
    return 0


def coverage_main(argv: list[str]) -> int:
    from foundry.eval.coverage import coverage_report, discover_base_dataset, print_report

    p = make_parser("coverage")
    p.add_argument("model", help="checkpoint or run directory")
    p.add_argument("--domain", required=True, help="domain dataset directory (made by 'foundry data prepare')")
    p.add_argument("--base", help="the model's own (pretraining) dataset; default: from the model's run.json")
    p.add_argument("--top", type=int, default=200, help="how many of the domain's frequent words/bigrams to check")
    p.add_argument("--max-chars", type=int, default=2_000_000, help="characters read per corpus for word statistics")
    p.add_argument("--max-tokens", type=int, default=16_384, help="tokens of each val split the model scores")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--out", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    for name in ("top", "max_chars", "max_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"foundry coverage: --{name.replace('_', '-')} must be positive")

    from foundry.checkpoints import load_start, pick_device

    base = Path(args.base) if args.base else discover_base_dataset(Path(args.model))
    if base is None:
        raise ConfigError(f"{args.model}: its run.json does not say which dataset it was trained on; "
                          "pass --base DATASET_DIR")
    start = load_start(args.model, device=pick_device(args.device))  # foundry checkpoint or run, or HF directory
    model, tokenizer = start.model, start.tokenizer
    report = coverage_report(model, tokenizer, args.domain, base, top_n=args.top, max_chars=args.max_chars,
                             max_tokens=args.max_tokens)
    report["model_path"] = str(args.model)
    if args.out:
        from foundry.utils.io import atomic_write_json

        atomic_write_json(args.out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def _eval_classifiers(args) -> int:
    """`foundry eval CLASSIFIER... --labelled FILE`: accuracy, macro-F1 and the confusion matrix of each."""
    import json

    from foundry.checkpoints import load_model, pick_device
    from foundry.eval.classification import score_classifier
    from foundry.utils.classification import format_confusion
    from foundry.utils.io import atomic_write_text

    if args.data or args.tasks or args.lm_eval:
        raise ConfigError("foundry eval: --labelled scores classifiers only; pass it without --data/--tasks/--lm-eval")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"{args.out}: already exists; pass --overwrite to replace it")
    results = {}
    for spec in args.models:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        model, tokenizer = load_model(path, device=pick_device(args.device))
        scores = score_classifier(model, tokenizer, args.labelled, batch_size=args.batch_size)
        results[name] = scores
        print(f"{name}: {args.labelled}: accuracy {scores['acc']:.3f}, macro-F1 {scores['macro_f1']:.3f} "
              f"({scores['n']} examples)")
        print(format_confusion(scores["confusion"], scores["labels"]))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")
    return 0
