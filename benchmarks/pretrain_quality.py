"""Pretraining quality per compute: held-out bits per byte after a fixed wall-clock budget, against a peer.

The King James text (the bundled books in canonical order) with its last 1% held out; foundry pretrains
with `recipes/pretrain-kjv.yaml` for `--seconds`, then (with `--peer`) the Hugging Face baseline
(`benchmarks/hf_baseline_pretrain.py`: tokenizers + LlamaForCausalLM + Trainer, ~4.2M parameters) gets
the same split and budget, one after the other on the same machine. Prints both and the ratio.

    python benchmarks/pretrain_quality.py --seconds 300 [--peer] [--work /tmp/quality]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_split(work: Path, vocab_size: int) -> tuple[Path, Path, Path]:
    """Dataset dir (train = first 99%, val = last 1% of the text), tokenizer dir, and the raw text file."""
    from foundry.commands.data import tokenize_main
    from foundry.data.tokenizer import Tokenizer

    books = sorted((REPO / "data/general/kjv").glob("*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in books)
    cut = text.rfind("\n", 0, int(len(text) * 0.99)) + 1
    raw = work / "kjv.txt"
    raw.write_text(text, encoding="utf-8")
    dataset, tok_dir = work / "dataset", work / "tokenizer"
    dataset.mkdir(parents=True, exist_ok=True)
    docs = {"train": [d for d in text[:cut].split("\f") if d.strip()],
            "val": [d for d in text[cut:].split("\f") if d.strip()]}
    for split, parts in docs.items():
        with open(dataset / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(parts):
                f.write(json.dumps({"id": f"{split}{i}", "source": "kjv", "text": d}) + "\n")
    (dataset / "manifest.json").write_text("{}")
    Tokenizer.train(docs["train"], vocab_size=vocab_size, min_frequency=2).save(tok_dir)
    tokenize_main([str(dataset), "--tokenizer", str(tok_dir), "--no-progress", "--overwrite"])
    return dataset, tok_dir, raw


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/foundry-quality"))
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--peer", action="store_true", help="also run the Hugging Face baseline")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset, tok_dir, raw = build_split(args.work, args.vocab_size)

    out = args.work / "foundry-run"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "foundry.cli", "pretrain", "--config", str(REPO / "recipes/pretrain-kjv.yaml"),
                    f"out_dir={out}", f"data={dataset}", f"tokenizer={tok_dir}", f"train.max_seconds={args.seconds}",
                    "train.progress=false", "overwrite=true"], check=True)
    wall = time.time() - t0
    run = json.loads((out / "run.json").read_text())
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / "best" / "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # tied lm_head stored once
    ours = {"system": "foundry", "params": params, "train_seconds": args.seconds, "wall_seconds": round(wall, 1),
            "steps": run["results"].get("step"), "held_out_bpb": run["results"].get("val/bpb")}
    print(json.dumps(ours))
    if args.peer:
        peer_out = subprocess.run([sys.executable, str(REPO / "benchmarks/hf_baseline_pretrain.py"), str(raw),
                                   "--seconds", str(args.seconds), "--out", str(args.work / "hf-run")],
                                  check=True, capture_output=True, text=True).stdout
        peer = json.loads(peer_out.strip().splitlines()[-1])
        print(json.dumps(peer))
        print(f"held-out bits per byte: foundry {ours['held_out_bpb']:.3f} vs HF Trainer {peer['held_out_bpb']:.3f} "
              f"-> foundry is {100 * (1 - ours['held_out_bpb'] / peer['held_out_bpb']):.1f}% lower")


if __name__ == "__main__":
    main()
