"""`foundry <verb>`: one entry point whose verbs mirror the lifecycle.

Each verb is a plain `main(argv) -> int | None` in the commands layer (`foundry/commands/`), which parses
argv and calls the library with typed arguments; it is imported only when called (importing torch costs
seconds; `foundry --help` should not). User errors are FoundryError and
print as one line, with no traceback, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from foundry.errors import ConfigError, FoundryError

# verb -> (module:function, one-line help). Two-word verbs are written "noun verb".
VERBS: dict[str, tuple[str, str]] = {
    "quickstart": ("foundry.commands.pipeline:quickstart_main", "run the bundled recipe end to end (data to report)"),
    "run": ("foundry.commands.pipeline:run_main", "run a recipe's stages in order, skipping finished ones"),
    "data prepare": ("foundry.commands.data:prepare_main", "ingest, clean, deduplicate, decontaminate and split corpora"),
    "data tokenize": ("foundry.commands.data:tokenize_main", "tokenise a prepared dataset into packed token shards"),
    "tokenizer train": ("foundry.commands.data:tokenizer_train_main", "train a byte-level BPE tokenizer on a prepared dataset"),
    "data images": ("foundry.commands.clip:data_images_main", "prepare image-text pairs (captions JSONL or WebDataset tars) with provenance"),
    "clip": ("foundry.commands.clip:clip_main", "contrastive image-text pretraining (CLIP or SigLIP loss)"),
    "clip eval": ("foundry.commands.clip:clip_eval_main", "zero-shot classification, retrieval recall and linear probe of a CLIP model"),
    "pretrain": ("foundry.commands.train:pretrain_main", "next-token pretraining from random initialisation"),
    "continue": ("foundry.commands.train:continue_main", "continual pretraining on a domain mixture with replay"),
    "coverage": ("foundry.commands.eval:coverage_main", "how well a model and tokenizer cover a domain corpus"),
    "sft": ("foundry.commands.train:sft_main", "supervised instruction tuning on chat data"),
    "finetune": ("foundry.commands.train:finetune_main", "task fine-tuning: a sequence classifier on any model"),
    "transfer": ("foundry.commands.train:transfer_main", "label-efficiency curve: fine-tuning from pretrained vs random"),
    "dpo": ("foundry.commands.train:dpo_main", "preference optimisation (DPO, IPO, conservative DPO)"),
    "rl": ("foundry.commands.train:rl_main", "reinforcement learning against verifiable rewards (GRPO)"),
    "audit prefs": ("foundry.commands.data:audit_prefs_main", "audit a preference file for duplicates, contradictions, bias"),
    "generate": ("foundry.commands.serve:generate_main", "sample text from a model"),
    "chat": ("foundry.commands.serve:chat_main", "interactive terminal chat"),
    "serve": ("foundry.commands.serve:serve_main", "OpenAI-compatible HTTP server"),
    "index build": ("foundry.commands.serve:index_build_main", "build a retrieval index over a document folder"),
    "eval": ("foundry.commands.eval:eval_main", "perplexity, multiple-choice and generation tasks"),
    "bakeoff": ("foundry.commands.eval:bakeoff_main", "side-by-side model comparison on a rubric, with cost"),
    "report": ("foundry.commands.eval:report_main", "report card and model card for a run directory"),
    "export": ("foundry.commands.model:export_main", "export a checkpoint to a Hugging Face directory or a GGUF file"),
    "import": ("foundry.commands.model:import_main", "import a local Hugging Face Llama-family checkpoint or GGUF file"),
    "plan": ("foundry.commands.train:plan_main", "estimate memory, time and cost before a run"),
    "selftest": ("foundry.commands.train:selftest_main", "check resume, accumulation, export and chat template on your recipe"),
}


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one-line ConfigErrors instead of usage dumps and exit 2."""

    def error(self, message: str):  # noqa: D102
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def make_parser(verb: str, description: str | None = None) -> ArgParser:
    return ArgParser(prog=f"foundry {verb}", description=description or VERBS.get(verb, ("", ""))[1])


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: foundry <verb> [options]   (foundry <verb> --help for a verb's options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in VERBS.items()]
    return "\n".join(lines)


def resolve_verb(argv: list[str]) -> tuple[str, list[str]]:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in VERBS:
        return argv[0], argv[1:]
    nouns = {v.split()[0] for v in VERBS if " " in v}
    if argv and argv[0] in nouns:
        options = ", ".join(v for v in VERBS if v.startswith(argv[0] + " "))
        raise ConfigError(f"'{' '.join(argv[:2])}' is not a verb; did you mean one of: {options}?")
    raise ConfigError(f"unknown verb '{argv[0]}'; run 'foundry --help' for the list")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from foundry import __version__

        print(__version__)
        return 0

    def call() -> int:
        verb, rest = resolve_verb(argv)
        module_name, func_name = VERBS[verb][0].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)

    return guarded(call)


def guarded(call) -> int:
    """`call()`'s exit code, with a user error (FoundryError) printed as one line and exit 1, Ctrl-C as 130:
    how every verb ends, whether from the command line or from a pipeline stage."""
    try:
        return call()
    except FoundryError as exc:
        # one line, even when the message quotes a library error that spans several (YAML's do)
        print("foundry: error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip()),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("foundry: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
