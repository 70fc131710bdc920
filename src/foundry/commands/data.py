"""Data verbs: data prepare, data tokenize, tokenizer train, audit prefs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import DataError


def executor_options(items: list[str]) -> dict:
    """--executor-option KEY=VALUE pairs for the engine's executor (whole numbers become ints)."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DataError(f"--executor-option {item!r}: expected KEY=VALUE")
        options[key] = int(value) if value.isdigit() else value
    return options


def prepare_main(argv: list[str]) -> int:
    from foundry.data.decontam import DEFAULT_NGRAM, Decontaminator
    from foundry.data.prepare import check_existing_output, dataset_fingerprint, prepare, print_summary
    from foundry.data.sources import TXT_SPLITS, find_sources
    from foundry.utils.io import sha256_file

    p = make_parser("data prepare")
    p.add_argument("src", nargs="+", help=".txt/.md/.rst, .jsonl, .parquet files (or .gz of text/jsonl), or folders")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    p.add_argument("--txt-split", choices=TXT_SPLITS, default=None,
                   help="how a text file becomes documents (default: the SOURCE.yaml's txt_split, else 'file')")
    p.add_argument("--license", help="license for sources whose SOURCE.yaml does not say")
    p.add_argument("--origin", help="origin URL for sources whose SOURCE.yaml does not say")
    p.add_argument("--collected", help="collection date YYYY-MM-DD for sources whose SOURCE.yaml does not say")
    p.add_argument("--eval", action="append", default=[], metavar="FILE",
                   help="eval file (.txt, or .jsonl: all string fields) to decontaminate against; repeatable")
    p.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="decontamination n-gram length in words")
    p.add_argument("--min-chars", type=int, default=100, help="drop documents shorter than this after cleaning")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--near-dup-threshold", type=float, default=0.8,
                   help="MinHash Jaccard at or above which a document is a near duplicate (1 disables)")
    p.add_argument("--on-bad-utf8", choices=("skip", "error"), default="error",
                   help="undecodable lines: refuse the file (default) or skip them and count them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset at --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="tasks run at once by the engine (default: all cores); 0 = the single-process path")
    p.add_argument("--executor", choices=("local", "slurm", "ray", "inline"), default="local",
                   help="datatrove executor: local (embedded, this machine), slurm or ray (many machines); "
                        "inline = the single-process path (same output, no engine)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the engine's executor (e.g. partition=cpu, time=4:00:00 for slurm); repeatable")
    p.add_argument("--buckets", type=int, default=None,
                   help="hash buckets for the engine's exact and MinHash matching, the tasks of that stage "
                        "(default: --workers, or one per 256 MB of input if more); the output does not depend on it")
    p.add_argument("--work-dir", help="the engine's intermediate files and task records, kept for a resume "
                                      "until the run finishes (default: OUT.prepare-work beside --out)")
    args = p.parse_args(argv)

    if not 0 <= args.val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 < args.near_dup_threshold <= 1:
        raise DataError(f"--near-dup-threshold must be in (0, 1], got {args.near_dup_threshold}")
    if args.min_chars < 0 or args.ngram < 1:
        raise DataError("--min-chars must be >= 0 and --ngram >= 1")
    out = Path(args.out)
    cli_prov = {"license": args.license, "origin": args.origin, "collected": args.collected}
    sources = find_sources(args.src, cli_prov)
    for s in sources:
        if out.resolve() in s.path.resolve().parents:
            raise DataError(f"{s.path}: is inside the output directory {out}; choose another --out")
    decon = Decontaminator(args.eval, args.ngram) if args.eval else None
    settings = {"text_field": args.text_field, "txt_split": args.txt_split, "min_chars": args.min_chars,
                "val_fraction": args.val_fraction, "near_dup_threshold": args.near_dup_threshold,
                "on_bad_utf8": args.on_bad_utf8, "ngram": args.ngram}
    src_info = [{"path": str(s.path), "sha256": sha256_file(s.path), "provenance": s.provenance} for s in sources]
    fingerprint = dataset_fingerprint(src_info, settings, decon.files if decon else [])
    if check_existing_output(out, fingerprint, args.overwrite):
        print(f"{out}: already holds this dataset (same sources and settings); nothing to do")
        return 0
    if args.buckets is None:
        args.buckets = max(1, args.workers, -(-sum(s.path.stat().st_size for s in sources) // (256 << 20)))
    if args.workers < 0 or args.buckets < 1:
        raise DataError("--workers must be >= 0 and --buckets >= 1")
    if args.executor != "inline" and args.workers != 0:
        from foundry.data.engine import PrepareJob, prepare_on_engine

        options = executor_options(args.executor_option)
        job = PrepareJob(
            sources=[{"path": str(s.path), "format": s.format, "provenance": s.provenance, "group": s.group}
                     for s in sources],
            out=str(out), work=args.work_dir or str(out.with_name(out.name + ".prepare-work")),
            text_field=args.text_field, txt_split=args.txt_split, min_chars=args.min_chars,
            val_fraction=args.val_fraction, near_dup_threshold=args.near_dup_threshold, on_bad_utf8=args.on_bad_utf8,
            eval_paths=list(args.eval), eval_files=decon.files if decon else [], ngram=args.ngram,
            buckets=args.buckets, fingerprint=fingerprint, overwrite=out.exists(),
            extra_settings={"ngram": args.ngram})
        manifest = prepare_on_engine(job, workers=args.workers, executor=args.executor, options=options,
                                     progress=not args.no_progress)
        if manifest is None:
            print(f"submitted to {args.executor}; the dataset appears at {out} when the last task finishes "
                  f"(task logs: {job.work}/logs)")
            return 0
        print_summary(manifest, out)
        return 0
    manifest = prepare(sources, out, text_field=args.text_field, txt_split=args.txt_split, min_chars=args.min_chars,
                       val_fraction=args.val_fraction, near_dup_threshold=args.near_dup_threshold,
                       on_bad_utf8=args.on_bad_utf8, decontaminator=decon, overwrite=out.exists(),
                       progress=not args.no_progress, fingerprint=fingerprint, extra_settings={"ngram": args.ngram})
    print_summary(manifest, out)
    return 0


def tokenize_main(argv: list[str]) -> int:
    from foundry.checkpoints import load_tokenizer
    from foundry.data.shards import DEFAULT_SHARD_TOKENS, tokenize_dataset, tokenizer_key

    p = make_parser("data tokenize")
    p.add_argument("dataset", help="dataset directory made by 'foundry data prepare'")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer directory (or tokenizer.json), or the model whose tokenizer to use: a foundry "
                        "checkpoint or run directory, or a Hugging Face model directory")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenising tasks at once (default: all cores)")
    p.add_argument("--executor", choices=("local", "slurm", "ray", "inline"), default="local",
                   help="datatrove executor (local: this machine; slurm, ray: many); inline = the single-process "
                        "path with its own process pool (same shards)")
    p.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the engine's executor (e.g. partition=cpu for slurm); repeatable")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace this tokenizer's existing shards (other "
                                                            "tokenizers' shards are never touched)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    out = Path(args.dataset) / "tokens" / tokenizer_key(tokenizer.sha256)
    executor = "inline" if args.workers == 0 else args.executor
    index = tokenize_dataset(args.dataset, tokenizer, workers=max(1, args.workers), shard_tokens=args.shard_tokens,
                             overwrite=args.overwrite, progress=not args.no_progress, record_config=vars(args),
                             executor=executor, options=executor_options(args.executor_option),
                             tokenizer_source=str(args.tokenizer))
    if index is None and executor not in ("local", "inline"):
        print(f"submitted to {executor}; the shards appear in {out} when the last task finishes")
        return 0
    if index is None:
        print(f"{args.dataset}: already tokenised with this tokenizer ({tokenizer.sha256[:12]}); nothing to do "
              "(--overwrite to redo)")
        return 0
    for split, s in index["splits"].items():
        print(f"{split}: {s['documents']} documents, {s['tokens']} tokens, {s['bytes']} bytes "
              f"({s['bytes'] / max(s['tokens'], 1):.2f} bytes/token), {len(s['shards'])} shard(s)")
    total, seconds = sum(s["tokens"] for s in index["splits"].values()), index["seconds"]
    print(f"tokenised {total} tokens in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} tokens/s) -> {out}")
    return 0


def tokenizer_train_main(argv: list[str]) -> int:
    from foundry.data.tokenizer import train_tokenizer

    p = make_parser("tokenizer train")
    p.add_argument("dataset", help="dataset directory made by 'foundry data prepare' (trains on train.jsonl)")
    p.add_argument("--out", required=True, help="output directory for tokenizer.json and tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2, help="merges need a pair seen at least this often")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    result = train_tokenizer(args.dataset, args.out, args.vocab_size, args.min_frequency, args.overwrite,
                             record_config=vars(args))
    val = result["fertility"]
    print(f"tokenizer: vocab {result['vocab_size']}, trained on {result['documents']} documents in "
          f"{result['train_seconds']:.1f}s -> {args.out}")
    print(f"fertility on {val['split']}: {val['tokens_per_word']:.3f} tokens/word, "
          f"{val['bytes_per_token']:.2f} bytes/token ({val['tokens']} tokens, {val['words']} words)")
    return 0


def audit_prefs_main(argv: list[str]) -> int:
    from foundry.data.prefs import audit_pairs, format_table, read_preferences
    from foundry.utils.io import atomic_write_json, atomic_write_text

    p = make_parser("audit prefs")
    p.add_argument("file", help="preference JSONL: {\"prompt\" or \"messages\", \"chosen\", \"rejected\"} per line")
    p.add_argument("--fix", metavar="OUT", help="write the cleaned records here (and a report to OUT.report.json)")
    p.add_argument("--report", metavar="JSON", help="where --fix writes its report (default OUT.report.json)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON instead of a table")
    p.add_argument("--out", metavar="JSON", help="also write the audit (counts, length bias, flagged lines) here")
    p.add_argument("--model", metavar="CKPT", help="also flag pairs this model confidently reverses (give it a model "
                                                  "trained on the file, e.g. its DPO run): the likely flipped labels")
    p.add_argument("--disagree-margin", type=float, default=1.0, metavar="NATS",
                   help="with --model: flag when log p(rejected) exceeds log p(chosen) by more than this")
    p.add_argument("--device", default="auto", help="with --model: auto | cpu | cuda | cuda:N")
    p.add_argument("--overwrite", action="store_true", help="let --fix and --out replace existing output files")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise DataError(f"{args.out}: already exists; pass --overwrite to replace it")

    if args.disagree_margin < 0:
        raise DataError(f"--disagree-margin must be >= 0, got {args.disagree_margin}")
    pairs = read_preferences(args.file, allow_empty=True)
    result = audit_pairs(pairs)
    if args.model:
        from foundry.checkpoints import load_model, pick_device
        from foundry.data.prefs import add_model_flags
        from foundry.eval.harness import score_preferences
        from foundry.eval.tasks import PrefItem

        model, tokenizer = load_model(args.model, device=pick_device(args.device))
        scorable = [p for p in pairs if p.chosen.strip() and p.rejected.strip()]
        scored = score_preferences(model, tokenizer, [PrefItem(p.messages, p.chosen, p.rejected, str(p.line))
                                                      for p in scorable])
        add_model_flags(result, {p.line: m for p, m in zip(scorable, scored["scores"]["margin"])}, args.disagree_margin)
    as_json = {"kind": "foundry.audit", "input": str(args.file), **result,
               "flags": {str(k): v for k, v in result["flags"].items()}}
    if args.json:
        print(json.dumps(as_json, indent=2))
    else:
        print(format_table(result, args.file))
    if args.out:
        atomic_write_json(args.out, as_json)
    if not args.fix:
        return 0
    out = Path(args.fix)
    report = Path(args.report) if args.report else out.with_name(out.name + ".report.json")
    if Path(args.file).resolve() in (out.resolve(), report.resolve()):
        raise DataError(f"{out}: --fix output must not be the input file")
    for target in (out, report):
        if target.exists() and not args.overwrite:
            raise DataError(f"{target}: already exists; pass --overwrite to replace it")
    kept = [p for p in pairs if p.line not in result["flags"]]
    removed = [{"line": p.line, "checks": result["flags"][p.line], "record": p.record}
               for p in pairs if p.line in result["flags"]]
    atomic_write_text(out, "".join(json.dumps(p.record, ensure_ascii=False) + "\n" for p in kept))
    atomic_write_json(report, {"input": str(args.file), "output": str(out), "kept": len(kept),
                               "removed": len(removed), "counts": result["counts"],
                               "length_bias": result["length_bias"], "removed_records": removed})
    print(f"kept {len(kept)} of {len(pairs)} records -> {out} (report: {report})")
    return 0
