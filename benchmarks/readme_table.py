"""Render the README's "Measured, with the peer in the same run" table from `benchmarks/results/*.json`.

Every figure in that table comes from a raw result file written by a benchmark script; this rewrites the
section's heading, note and table in README.md (nothing else) and prints it.

    python benchmarks/readme_table.py [--check]   # --check: exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HEADING = "## Measured, with the peer in the same run"


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


def render() -> str:
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
    lines = [HEADING, "", *textwrap.wrap(note, 110), "", "| what | foundry | peer | how |", "|---|---|---|---|"]
    for rec in quality:
        lines += quality_rows(rec)
    for rec in throughput:
        lines += throughput_rows([rec])
    for rec in dpo:
        lines += dpo_rows(rec)
    return "\n".join(lines) + "\n"


def replace_section(readme: str, section: str) -> str:
    """The heading, its note and the first table after it are replaced; what follows the table is kept."""
    lines = readme.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    i = start + 1
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    return "".join(lines[:start]) + section + "".join(lines[i:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's table is out of date")
    args = p.parse_args()
    section = render()
    readme_path = REPO / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = replace_section(readme, section)
    print(section)
    if args.check:
        return int(updated != readme)
    readme_path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
