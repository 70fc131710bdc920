"""Render every benchmark table of README.md and docs/BENCHMARKS.md from `benchmarks/results/`.

Every figure in those tables comes from a raw result file written by a committed script; this rewrites each
section's heading, note and table (nothing else) and prints them:
- README.md, "What the quickstart shows": each lesson's verdict over the quickstart runs from fresh clones
  (`benchmarks/results/quickstart_runs/*/findings.json`, written by `benchmarks/quickstart_runs.sh`);
- README.md, "Headline comparisons": the four or five comparisons with a peer that matter most, from the
  same raw files as the full tables;
- docs/BENCHMARKS.md, "Measured, with the peer in the same run" and "Post-training a real model's
  architecture against TRL": every comparison.

    python benchmarks/readme_table.py [--check]   # --check: exit 1 if a table is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURED = "## Measured, with the peer in the same run"
POSTTRAIN = "## Post-training a real model's architecture against TRL"
QUICKSTART = "## What the quickstart shows"
HEADLINE = "## Headline comparisons"


def loads_seen(*records: dict) -> list[float]:
    values = []
    for r in records:
        m = r["machine"]
        values += [m["load_average_start"][0], m["load_average_end"][0]]
    return values


def quality_rows(q: dict) -> list[str]:
    by = {c["contender"]: c for c in q["contenders"]}
    ours = by["foundry"]

    def desc(c: dict) -> str:
        lr = f"{c['final_lr']:.1e}" if c.get("final_lr") is not None else "n/a"
        return (f"{c['params'] / 1e6:.1f}M params, {c['steps']:,} steps, {c['tokens']:,} tokens, "
                f"last lr {lr}")

    def recipe(c: dict) -> str:  # results before 2026-12-01 name neither: AdamW on a plain Llama
        kind = c.get("optimizer_kind") or c.get("optimizer") or "adamw"  # HF records its optimizer as a repr
        return "Muon + QK-norm" if kind == "muon" else "AdamW"

    together = f"run together, {q['threads']} thread each" if q.get("together") else f"{q['threads']} threads"
    rows = []
    for peer, what in (("hf-foundry-recipe", "foundry's exact recipe"),
                       ("hf-foundry-adamw", "foundry's recipe before 2026-12-01"),
                       ("hf-defaults", "`Trainer`'s defaults (lr 5e-5, linear)")):
        if peer not in by:
            continue
        p = by[peer]
        stack = f"HF tokenizers + `{p.get('model_class', 'LlamaForCausalLM')}` + `Trainer`"
        if peer != "hf-defaults":
            what = f"{what}, {recipe(p)}"
        rows.append(f"| held-out bits per byte after {q['seconds']:.0f} s of pretraining (KJV, last 1%; {together}) "
                    f"| **{ours['held_out_bpb']:.3f}** ({recipe(ours)}; {desc(ours)}) | {p['held_out_bpb']:.3f} "
                    f"({stack}, {what}; {desc(p)}) "
                    f"| `{q['command']}`: {100 * (1 - ours['held_out_bpb'] / p['held_out_bpb']):.1f}% lower |")
    return rows


def throughput_rows(records: list[dict]) -> list[str]:
    rows = []
    for rec in records:
        for c in rec["configs"]:
            f, t = c["tokens_per_s"]["foundry"], c["tokens_per_s"]["transformers"]
            r = c["ratio_foundry_over_transformers"]
            rows.append(
                f"| training tokens/s, {c['preset']} preset ({c['params']['foundry'] / 1e6:.1f}M params; batch "
                f"{c['batch']}x{c['block']}, {rec['threads']} thread{'s' if rec['threads'] > 1 else ''}, median of "
                f"{c['rounds']} rounds x {c['steps_per_round']} steps) | {f['median']:,.0f} ({f['min']:,.0f}-{f['max']:,.0f}) "
                f"| {t['median']:,.0f} ({t['min']:,.0f}-{t['max']:,.0f}; "
                f"`LlamaForCausalLM`, {c['params']['transformers'] / 1e6:.1f}M params) | `{rec['command']}`: "
                f"{r['median']:.2f}x (per-round {r['min']:.2f}-{r['max']:.2f}x) |")
    return rows


def dpo_rows(d: dict) -> list[str]:
    res, rows = d["results"], []
    o = res["foundry"]
    for trl, what in (("trl-precompute", "TRL `DPOTrainer`, `precompute_ref_log_probs=True` (like ours)"),
                      ("trl-default", "TRL `DPOTrainer`, its default (reference forward every step)")):
        t, r = res[trl], d["ratios_foundry_over"][trl]
        mem = f", peak memory {r['peak_memory']:.2f}x" if r.get("peak_memory") else ""
        rows.append(f"| DPO pairs/s, {d['preset']} preset, {d['batch']} pairs/step, {d['device']} "
                    f"| {o['pairs_per_s_timed']:.2f} ({o['peak_mem_mb']:.0f} MB) | {t['pairs_per_s_timed']:.2f} "
                    f"({what}; {t['peak_mem_mb']:.0f} MB) | `{d['command']}`: {r['pairs_per_s_timed']:.2f}x on "
                    f"training steps, {r['pairs_per_s_whole_run']:.2f}x whole run{mem} |")
    return rows


def measured_section() -> str:
    quality = sorted((json.loads(p.read_text()) for p in RESULTS.glob("pretrain_quality*.json")
                      if json.loads(p.read_text()).get("scored_part") == "test"),
                     key=lambda r: r["machine"]["date_utc"])
    throughput = sorted((json.loads(p.read_text()) for p in RESULTS.glob("train_throughput*.json")),
                        key=lambda r: (r["configs"][0]["params"]["foundry"], r["machine"]["date_utc"]))
    dpo = sorted((json.loads(p.read_text()) for p in RESULTS.glob("dpo_throughput*.json")),
                 key=lambda r: r["machine"]["date_utc"])
    records = [*quality, *throughput, *dpo]
    cpus = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores" for r in records})
    seen = loads_seen(*records)
    note = (f"Rendered by `python benchmarks/readme_table.py` from the raw results in `benchmarks/results/` "
            f"(machine, load average and every figure). Machine: {'; '.join(cpus)}, shared with other jobs (1-minute "
            f"load average {min(seen):.0f} to {max(seen):.0f} during these runs), so absolute speeds are far below a "
            "quiet machine's. Each ratio compares like with like: the quality contenders and the DPO sides ran at the "
            "same time, the throughput contenders in alternating rounds in one process. Memory is peak RSS growth "
            "of each side's own process. Throughput: tokens/s median (min-max) over rounds, and the median of the "
            "per-round ratio (min-max); no MFU here, as the matmul peak it divides by moved with the load. "
            "Pretraining: train on the first 98% of the text, the recipe's lr re-checked on the next 1% (dev; "
            "`results/pretrain_quality_dev_lr*.json`), the last 1% reported; every contender scored by one function "
            "on its final weights; the HF peers plan their step count from their first steps so their schedules end "
            "inside the budget.")
    lines = [MEASURED, "", *textwrap.wrap(note, 110), "", "| what | foundry | peer | how |", "|---|---|---|---|"]
    for rec in quality:
        lines += quality_rows(rec)
    for rec in throughput:
        lines += throughput_rows([rec])
    for rec in dpo:
        lines += dpo_rows(rec)
    return "\n".join(lines) + "\n"


def posttrain_records() -> list[dict]:
    records = (json.loads(p.read_text()) for p in RESULTS.glob("real_model_posttrain*.json"))
    # a run's --name is its `benchmark`; side files (a memory profile) have no per-model results
    return sorted((r for r in records if str(r.get("benchmark", "")).startswith("real_model_posttrain")
                   and "models" in r), key=lambda r: r["machine"]["date_utc"])


def posttrain_rows(rec: dict) -> list[str]:
    rows = []
    for name, m in rec["models"].items():
        depth = f"{m['layers']} of {m['full_depth']} layers" if m["layers"] != m["full_depth"] else "full depth"
        for combo in m["combos"].values():
            ours, trl = combo["results"]["foundry"], combo["results"]["trl"]
            r, mem = combo["ratio_tokens_per_s"], combo["ratio_peak_rss"]
            rows.append(f"| {name} ({depth}) | {combo['stage'].upper()} {combo['method']} "
                        f"| {ours['real_tokens_per_s']['median']:,.0f} | {trl['real_tokens_per_s']['median']:,.0f} "
                        f"| **{r['median']:.2f}x** ({r['min']:.2f}-{r['max']:.2f}) "
                        f"| {ours['peak_rss_mb']:,.0f} / {trl['peak_rss_mb']:,.0f} | **{mem:.2f}x** "
                        f"| {combo['loss_max_abs_diff']:.1e} | `{rec['command']}` |")
    return rows


def posttrain_section() -> str:
    records = posttrain_records()
    note = ("`benchmarks/real_model_posttrain.py`: foundry against TRL (`SFTTrainer`; `DPOTrainer` with "
            "`precompute_ref_log_probs=True`) on models built from the real architectures' configs with random "
            "weights, the same token ids, masks and row order on both sides, rows padded to the batch's longest, "
            "fp32, gradient checkpointing on both (TRL's default), each side in its own process, rounds in "
            "alternating order. Real (non-padding) tokens/s median over rounds and the per-round ratio (min-max); "
            "peak RSS of each whole process; the largest loss difference over the steps shows both did the same "
            "math. Machines and load averages are in each result file.")
    lines = [POSTTRAIN, "", *textwrap.wrap(note, 110), "",
             "| model | stage | foundry tok/s | TRL tok/s | ratio (min-max) | peak RSS MB foundry / TRL | memory "
             "ratio | max loss diff | command |", "|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        lines += posttrain_rows(rec)
    return "\n".join(lines) + "\n"


def quickstart_section() -> str:
    runs = sorted(p for p in (RESULTS / "quickstart_runs").glob("*/findings.json"))
    by_claim: dict[tuple, list[dict]] = {}
    for path in runs:
        for f in json.loads(path.read_text())["findings"]:
            by_claim.setdefault((f["lesson"], f["claim"]), []).append(f)
    meta = [json.loads((p.parent / "run.json").read_text()) for p in runs if (p.parent / "run.json").is_file()]
    minutes = ", ".join(f"{m['seconds'] / 60:.1f}" for m in meta)
    commits = ", ".join(sorted({m["commit"][:7] for m in meta}))
    note = (f"Each lesson the quickstart is built to show, over {len(runs)} runs from fresh clones on the 2-core "
            f"build machine (commit {commits}; {minutes} minutes each; `bash benchmarks/quickstart_runs.sh`, "
            "raw files in `benchmarks/results/quickstart_runs/`): the verdicts its Findings gave (an effect with a "
            "95% interval paired over the evaluation items; `holds` when the interval excludes 0 in the lesson's "
            "direction), and the effect's range over the runs.")
    lines = [QUICKSTART, "", *textwrap.wrap(note, 110), "",
             "| lesson | comparison | verdicts over the runs | effect, lowest to highest run |", "|---|---|---|---|"]
    last = None
    for (lesson, claim), found in by_claim.items():
        counts: dict[str, int] = {}
        for f in found:
            counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
        verdicts = ", ".join(f"{k} {v}/{len(found)}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        effects = sorted(f["effect"] for f in found if f.get("effect") is not None)
        span = f"{effects[0]:+.3f} to {effects[-1]:+.3f}" if effects else "-"
        lines.append(f"| {lesson if lesson != last else ''} | {claim} | {verdicts} | {span} |")
        last = lesson
    return "\n".join(lines) + "\n"


def headline_section() -> str:
    """Five comparisons with a peer, one line each, from the raw files the full tables read."""
    rows = []
    latest: dict[tuple, tuple] = {}  # (model, stage, method) -> its newest measurement
    for rec in posttrain_records():
        for name, m in rec["models"].items():
            for combo in m["combos"].values():
                latest[(name, combo["stage"], combo["method"])] = (m, combo)
    picks = [("smollm2-135m", "sft", "full"), ("smollm2-135m", "dpo", "full"), ("llama3.2-1b", "sft", "lora")]
    for key in picks:
        if key not in latest:
            continue
        m, combo = latest[key]
        depth = f"{m['layers']}/{m['full_depth']} layers" if m["layers"] != m["full_depth"] else "full depth"
        r = combo["ratio_tokens_per_s"]
        rows.append(f"| {key[1].upper()} ({key[2]}) of a {key[0]}-shaped model ({depth}, CPU, fp32) against TRL "
                    f"| **{r['median']:.2f}x** real tokens/s (per round {r['min']:.2f}-{r['max']:.2f}x) at "
                    f"**{combo['ratio_peak_rss']:.2f}x** its peak memory | `real_model_posttrain*.json` |")
    quality = json.loads((RESULTS / "pretrain_quality_muon_qknorm.json").read_text())
    by = {c["contender"]: c["held_out_bpb"] for c in quality["contenders"]}
    rows.append(f"| pretraining quality in 300 s against HF `Trainer` with the same recipe (KJV, held-out bits "
                f"per byte, one run) | **{by['foundry']:.3f}** against {by['hf-foundry-recipe']:.3f} "
                f"({100 * (1 - by['foundry'] / by['hf-foundry-recipe']):.1f}% lower) | "
                f"`pretrain_quality_muon_qknorm.json` |")
    rl = json.loads((RESULTS / "rl_throughput.json").read_text())
    rows.append(f"| GRPO completions/s against TRL `GRPOTrainer` (same weights, prompts, G = {rl['group']}, one run) "
                f"| **{rl['ratio_foundry_over_trl']:.1f}x** ({rl['results']['foundry']['completions_per_s_timed']:.1f} "
                f"against {rl['results']['trl']['completions_per_s_timed']:.1f}) | `rl_throughput.json` |")
    note = ("Every figure below is rendered from a raw result in `benchmarks/results/` by `python "
            "benchmarks/readme_table.py`; the peer got the same model, data, dtype and padding policy. All the "
            "others, with their spread, machine and load, are in `docs/BENCHMARKS.md`.")
    lines = [HEADLINE, "", *textwrap.wrap(note, 110), "",
             "| comparison | result | raw file |", "|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


def replace_section(text: str, heading: str, section: str) -> str:
    """The heading, its note and the first table after it are replaced; what follows the table is kept."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    i = start + 1
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    return "".join(lines[:start]) + section + "".join(lines[i:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    args = p.parse_args()
    targets = {REPO / "README.md": [(QUICKSTART, quickstart_section()), (HEADLINE, headline_section())],
               REPO / "docs" / "BENCHMARKS.md": [(MEASURED, measured_section()), (POSTTRAIN, posttrain_section())]}
    stale = 0
    for path, sections in targets.items():
        text = path.read_text(encoding="utf-8")
        updated = text
        for heading, section in sections:
            updated = replace_section(updated, heading, section)
            print(section)
        if args.check:
            stale += updated != text
        else:
            path.write_text(updated, encoding="utf-8")
    return int(stale > 0)


if __name__ == "__main__":
    sys.exit(main())
