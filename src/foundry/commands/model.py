"""Model verbs: export, import (Hugging Face directories)."""

from __future__ import annotations

from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import ConfigError


def export_main(argv: list[str]) -> int:
    from foundry.checkpoints import load_model
    from foundry.model.hf import export_hf

    p = make_parser("export")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory: its best checkpoint)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Hugging Face transformers directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")
    model, tokenizer = load_model(args.checkpoint, "cpu")
    if getattr(model.config, "architecture", None) == "clip":  # an image-text model: CLIPModel + CLIPProcessor
        from foundry.data.images import IMAGE_MEAN, IMAGE_STD
        from foundry.model.clip_hf import export_clip_hf

        export_clip_hf(model, tokenizer, out, IMAGE_MEAN, IMAGE_STD, overwrite=args.overwrite)
        print(f"exported {args.checkpoint} -> {out} (Hugging Face CLIPModel + CLIPProcessor, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters)")
        return 0
    from foundry.model.llama import Llama

    if type(model) is Llama:
        export_hf(model, tokenizer, out, overwrite=args.overwrite)
        from foundry.model.families import export_family

        arch = export_family(model.config).architecture  # the class the model came from (model/families.py)
    else:  # the encoder (BertForMaskedLM) or a sequence classifier (docs/ENCODERS.md)
        from foundry.model.encoder_hf import export_encoder_hf

        arch = export_encoder_hf(model, tokenizer, out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {out} (Hugging Face {arch}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def import_main(argv: list[str]) -> int:
    from foundry.checkpoints import save_checkpoint
    from foundry.checkpoints import import_hf
    from foundry.model.hf import DEFAULT_MAX_SEQ_LEN
    from foundry.utils.io import read_json

    p = make_parser("import")
    p.add_argument("hf_dir", help="local Hugging Face model directory (config.json, safetensors, tokenizer.json)")
    p.add_argument("--out", required=True, help="output foundry checkpoint directory")
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN,
                   help=f"cap on the context length (default {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")
    if args.max_seq_len < 2:
        raise ConfigError(f"--max-seq-len {args.max_seq_len}: must be at least 2")
    model, tokenizer = import_hf(args.hf_dir, args.max_seq_len)
    cfg = read_json(Path(args.hf_dir) / "config.json")
    # save_checkpoint writes OUT.tmp and replaces an existing OUT (--overwrite) only once complete.
    save_checkpoint(out, model, tokenizer, meta={
        "stage": "import", "step": 0, "source": str(Path(args.hf_dir).resolve()),
        "source_architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
    })
    print(f"imported {args.hf_dir} ({(cfg.get('architectures') or [cfg.get('model_type')])[0]}, "
          f"{model.num_params():,} parameters, context {model.config.max_seq_len}) -> {out}")
    return 0
