"""Model verbs: export, import (Hugging Face directories and GGUF files)."""

from __future__ import annotations

from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import ConfigError


def export_main(argv: list[str]) -> int:
    from foundry.checkpoints import load_model
    from foundry.model.hf import export_hf

    p = make_parser("export")
    p.add_argument("checkpoint", help="checkpoint directory (or run directory: its best checkpoint)")
    p.add_argument("--out", required=True, help="output directory (a .gguf file with --format gguf)")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: Hugging Face transformers directory; gguf: one file for llama.cpp / Ollama")
    p.add_argument("--quant", choices=["f16", "q8_0"], default=None,
                   help="GGUF weight type: f16 (default) or q8_0 (8-bit blocks of 32); --format gguf only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.quant and args.format != "gguf":
        raise ConfigError(f"--quant {args.quant}: applies to --format gguf only")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")
    model, tokenizer = load_model(args.checkpoint, "cpu")
    if args.format == "gguf":
        from foundry.model.gguf import export_gguf
        from foundry.model.llama import Llama

        if type(model) is not Llama:
            raise ConfigError(f"{args.checkpoint}: GGUF export is for the decoder models only (docs/GGUF.md: families)")
        export_gguf(model, tokenizer, out, quant=args.quant or "f16", overwrite=args.overwrite)
        print(f"exported {args.checkpoint} -> {out} (GGUF {args.quant or 'f16'}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters)")
        return 0
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
    p.add_argument("hf_dir", help="local Hugging Face model directory (config.json, safetensors, tokenizer.json) "
                                  "or a .gguf file")
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
    if args.hf_dir.endswith(".gguf"):
        from foundry.model.gguf import gguf_architecture

        arch = f"GGUF {gguf_architecture(args.hf_dir)}"
    else:
        cfg = read_json(Path(args.hf_dir) / "config.json")
        arch = (cfg.get("architectures") or [cfg.get("model_type")])[0]
    # save_checkpoint writes OUT.tmp and replaces an existing OUT (--overwrite) only once complete.
    save_checkpoint(out, model, tokenizer, meta={
        "stage": "import", "step": 0, "source": str(Path(args.hf_dir).resolve()), "source_architecture": arch,
        "chat_template": tokenizer.chat_template.name, "added_tokens": tokenizer.added_tokens,
    })
    template = ("its own chat template" if tokenizer.chat_template.name != "foundry" else
                f"foundry's chat template, {len(tokenizer.added_tokens)} marker token(s) added")
    print(f"imported {args.hf_dir} ({arch}, {model.num_params():,} parameters, "
          f"context {model.config.max_seq_len}, {template}) -> {out}")
    return 0
