"""Training verbs: pretrain, continue, sft, dpo, rl, plan, selftest."""

from __future__ import annotations

import time

from foundry.cli import make_parser
from foundry.commands import load_recipe_args, recipe_parser
from foundry.errors import ConfigError


def _stage_main(verb: str, argv: list[str], example: str, config_help: str) -> int:
    """`foundry VERB --config RECIPE [--resume] [--overwrite] [key=value ...]` -> the stage registry's
    run(config, resume) for VERB."""
    from foundry.stages import TRAINING_VERBS

    spec = TRAINING_VERBS[verb]
    config_cls = spec.config_class()
    p = recipe_parser(verb, config_cls, example, config_help)
    args = p.parse_args(argv)
    spec.run_function()(load_recipe_args(config_cls, args), resume=args.resume)
    return 0


def run_training_stage(verb: str, argv: list[str]) -> dict:
    """A training verb's typed entry point, for the pipeline: `argv` (--config, overrides, --resume,
    --overwrite, --profile) parsed as the verb's own command line does, the config validated with the stage
    registry's config class and its run function called, with no detour through `main`; returns the results."""
    from foundry.stages import TRAINING_VERBS

    spec = TRAINING_VERBS[verb]
    config_cls = spec.config_class()
    parsed = recipe_parser(verb, config_cls, "", "recipe YAML").parse_args(argv)
    return spec.run_function()(load_recipe_args(config_cls, parsed), resume=parsed.resume)


def pretrain_main(argv: list[str]) -> int:
    return _stage_main("pretrain", argv, "train.max_steps=100", "recipe YAML (see recipes/pretrain-kjv.yaml)")


def sft_main(argv: list[str]) -> int:
    return _stage_main("sft", argv, "train.max_steps=100 pack=false lora.rank=8",
                       "recipe YAML (init, data, out_dir, train, ...)")


def dpo_main(argv: list[str]) -> int:
    return _stage_main("dpo", argv, "loss=ipo beta=0.5 train.max_steps=100",
                       "recipe YAML (init, data, out_dir, train, ...)")


def rl_main(argv: list[str]) -> int:
    return _stage_main("rl", argv, "group_size=8 kl_beta=0 train.max_steps=50",
                       "recipe YAML (init, prompts, verifiers, out_dir, train, ...; see recipes/rl.yaml)")


def continue_main(argv: list[str]) -> int:
    from foundry.train.continual import ContinueConfig, compare_runs, run_continue

    p = recipe_parser("continue", ContinueConfig, "train.lr=1e-4", "recipe YAML (see recipes/continue-*.yaml)",
                      config_required=False)
    p.add_argument("--compare", nargs="+", metavar="RUN", help="instead of training: tabulate finished continue runs "
                   "of one parent (before/after on every dataset) into --out")
    p.add_argument("--out", help="with --compare: directory for results.md and results.json")
    args = p.parse_args(argv)
    if args.compare:
        if args.config or not args.out:
            raise ConfigError("foundry continue --compare RUN... needs --out DIR and no --config")
        compare_runs(args.compare, args.out)
        return 0
    if not args.config:
        raise ConfigError("foundry continue: --config RECIPE is required (or --compare RUN... --out DIR)")
    run_continue(load_recipe_args(ContinueConfig, args), resume=args.resume)
    return 0


def plan_main(argv: list[str]) -> int:
    import json

    from foundry.train.plan import (GPUS, PRESETS, STRATEGIES, format_plan, model_config_for, parse_number, plan,
                                    recipe_settings)

    p = make_parser("plan")
    p.add_argument("model", nargs="?", help="a Hugging Face directory or foundry checkpoint to fine-tune: prints the "
                   "memory of the run (with --context, --method) and whether it fits")
    p.add_argument("--context", type=int, help="tokens per sequence for MODEL's run")
    p.add_argument("--method", choices=("full", "lora"), default="full", help="MODEL: train all weights or adapters")
    p.add_argument("--activation-checkpointing", action="store_true", help="MODEL: recompute blocks in backward")
    p.add_argument("--lora-rank", type=int, default=8, help="MODEL with --method lora: adapter rank (default 8)")
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="MODEL with --method lora: comma-separated Linears")
    p.add_argument("--config", help="recipe YAML (reads its model and train sections)")
    p.add_argument("--preset", help=f"model preset ({', '.join(PRESETS)}); overrides the recipe's")
    p.add_argument("--micro-batch", type=int, help="sequences per micro-batch per device")
    p.add_argument("--block-size", type=int, help="tokens per sequence")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step per device")
    p.add_argument("--world-size", type=int, default=1, help="number of devices (all nodes)")
    p.add_argument("--strategy", choices=STRATEGIES, help="ddp or fsdp (default: the recipe's, else ddp)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--tokens", default="1e9", help="token budget, e.g. 2e9 or 2B (default 1B)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    p.add_argument("--gpu", choices=sorted(GPUS), help="sets peak FLOP/s and memory (default h100; for MODEL, "
                   "default: this machine's memory)")
    p.add_argument("--peak-tflops", type=float, help="device peak bf16 TFLOP/s (overrides --gpu)")
    p.add_argument("--device-gib", type=float, help="device memory in GiB (overrides --gpu)")
    p.add_argument("--price", type=float, default=2.5, help="price per GPU-hour (default 2.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.model is not None:
        return _plan_model(args)
    args.gpu = args.gpu or "h100"

    model_section, train_section = recipe_settings(args.config) if args.config else ({}, {})
    cfg = model_config_for(model_section, args.preset, args.config or "plan")

    def pick(flag, key, default):
        return flag if flag is not None else int(train_section.get(key, default))

    micro = pick(args.micro_batch, "micro_batch_size", 16)
    block = pick(args.block_size, "block_size", min(1024, cfg.max_seq_len))
    accum = pick(args.grad_accum, "grad_accum_steps", 1)
    if args.grad_accum is None and train_section.get("global_batch_size") and micro > 0 and args.world_size > 0:
        from types import SimpleNamespace

        from foundry.train.distributed import resolve_batch

        # the recipe fixes the global batch: the accumulation follows from the world size, as in training
        accum = resolve_batch(SimpleNamespace(global_batch_size=int(train_section["global_batch_size"]),
                                              micro_batch_size=micro, grad_accum_steps=accum), args.world_size)
    strategy = args.strategy or ("fsdp" if train_section.get("distributed") == "fsdp" else "ddp")
    for name, value in (("--micro-batch", micro), ("--block-size", block), ("--grad-accum", accum),
                        ("--world-size", args.world_size)):
        if value < 1:
            raise ConfigError(f"plan: {name} must be at least 1, got {value}")
    peak = (args.peak_tflops * 1e12) if args.peak_tflops else GPUS[args.gpu].peak_bf16_flops
    device_gib = args.device_gib if args.device_gib else GPUS[args.gpu].memory_gib
    result = plan(cfg, micro, block, accum, args.world_size, strategy, args.dtype,
                  parse_number(args.tokens, "--tokens"), args.mfu, peak, args.price, device_gib)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def _plan_model(args) -> int:
    """`foundry plan MODEL --context N --method full|lora`: the fine-tuning run's memory, and whether it fits."""
    import json

    from foundry.train.plan import GPUS, format_finetune_plan, model_config_at, plan_finetune

    if args.context is None or args.context < 1:
        raise ConfigError("plan: MODEL needs --context N (tokens per sequence), at least 1")
    micro = args.micro_batch or 1
    cfg = model_config_at(args.model)
    if args.gpu:
        device, device_gib = args.gpu.upper(), args.device_gib or GPUS[args.gpu].memory_gib
    else:
        device, device_gib = "this machine (CPU)", args.device_gib or _machine_gib()
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    result = plan_finetune(cfg, args.context, args.method, args.activation_checkpointing, micro, device_gib, device,
                           args.lora_rank, targets)
    print(json.dumps(result, indent=2) if args.json else format_finetune_plan(result))
    return 0


def _machine_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def selftest_main(argv: list[str]) -> int:
    from foundry.config import load_config
    from foundry.selftest import format_table, run_selftest
    from foundry.train.pretrain import PretrainConfig

    p = make_parser("selftest")
    p.add_argument("--config", required=True, help="your pretraining recipe (as for 'foundry pretrain')")
    p.add_argument("--steps", type=int, default=6, help="optimiser steps per run (default 6; at least 2)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the recipe")
    args = p.parse_args(argv)
    if args.steps < 2:
        raise ConfigError(f"--steps must be at least 2 (one before and one after the interruption), got {args.steps}")
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    started = time.perf_counter()
    checks, notes = run_selftest(cfg, args.steps)
    print(f"foundry selftest: {args.config}, {args.steps} steps on CPU (float32)")
    for note in notes:
        print(f"  note: {note}")
    print(format_table(checks))
    failed = [c.name for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed in {time.perf_counter() - started:.0f}s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def finetune_main(argv: list[str]) -> int:
    return _stage_main("finetune", argv, "train.max_steps=100 lora.rank=8",
                       "recipe YAML (init, data, val_data, out_dir, train, ...); see docs/ENCODERS.md")


def transfer_main(argv: list[str]) -> int:
    return _stage_main("transfer", argv, "seeds=[0,1] sizes=[16,64,256]",
                       "recipe YAML (pretrained, data, test_data, out_dir, ...); see docs/ENCODERS.md")
