"""Serving verbs: generate, chat, serve, index build."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from foundry.cli import make_parser
from foundry.errors import ConfigError


def sampling_parser(verb: str, max_new_tokens: int, temperature: float):
    """The options every sampling verb (generate, chat) shares: model, sampling, device, retrieval."""

    p = make_parser(verb)
    p.set_defaults(verb=verb)  # named in errors (a CLIP checkpoint is refused: "foundry chat needs ...")
    p.add_argument("model", metavar="MODEL_PATH", help="checkpoint directory or run directory")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--device", default="auto")
    add_index_argument(p)
    return p


def load_for_sampling(args):
    """Check the shared options, then load (model, tokenizer, retrieval index or None)."""
    from foundry.checkpoints import load_model, pick_device

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    index = load_index_arg(args)
    model, tokenizer = load_model(args.model, device=pick_device(args.device), verb=f"foundry {args.verb}")
    return model, tokenizer, index


def add_index_argument(parser) -> None:
    """The `--index DIR` / `--passages K` options shared by generate, chat and serve."""
    parser.add_argument("--index", default=None, help="retrieval index (foundry index build) to ground answers in")
    parser.add_argument("--passages", type=int, default=3, help="passages retrieved per question (with --index)")


def load_index_arg(args):
    """The retrieval index --index names (None without one)."""
    from foundry.serve.retrieval import Index

    if getattr(args, "index", None) is None:
        return None
    if args.passages < 1:
        raise ConfigError(f"--passages {args.passages}: must be at least 1")
    return Index.load(args.index)


def generate_main(argv: list[str]) -> int:
    from foundry.serve.generate import chat_prompt_ids, generate, stream_text
    from foundry.serve.retrieval import grounded_prompt

    p = sampling_parser("generate", max_new_tokens=200, temperature=0.8)
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--no-stream", action="store_true", help="print the completion once finished")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each token")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    args = p.parse_args(argv)
    model, tokenizer, index = load_for_sampling(args)
    if index is not None:  # the retrieved passages, with their sources, go in front of the question
        args.prompt = grounded_prompt(index, args.prompt, args.passages)
    prompt_ids = chat_prompt_ids(tokenizer, args.prompt) if args.chat else tokenizer.encode(args.prompt)
    tokens = generate(model, tokenizer, prompt_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache)
    if args.no_stream:
        print(("" if args.chat else args.prompt) + tokenizer.decode(list(tokens)))
    else:
        if not args.chat:
            sys.stdout.write(args.prompt)
        stream_text(tokenizer, tokens)
    return 0


def chat_main(argv: list[str]) -> int:
    from foundry.serve.chat import chat_loop

    p = sampling_parser("chat", max_new_tokens=256, temperature=0.7)
    p.add_argument("--system", default=None, help="system prompt")
    args = p.parse_args(argv)
    model, tokenizer, index = load_for_sampling(args)
    chat_loop(model, tokenizer, system=args.system, index=index, passages=args.passages,
              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed)
    return 0


def serve_main(argv: list[str]) -> int:
    from foundry.serve.server import ServerSettings, create_app
    import uvicorn

    from foundry.checkpoints import load_model, pick_device

    p = make_parser("serve")
    p.add_argument("model", metavar="MODEL_PATH", help="checkpoint directory or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("FOUNDRY_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $FOUNDRY_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="the id clients pass as 'model' (default: directory name)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: context)")
    p.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-concurrency", type=int, default=16,
                   help="requests decoded together in one batched step; more wait in the queue")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for a place; one more is refused with 429 and Retry-After")
    p.add_argument("--device", default="auto")
    add_index_argument(p)
    args = p.parse_args(argv)
    for flag in ("port", "max_tokens_limit", "max_concurrency"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be at least 0, got {args.max_queue}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise ConfigError(f"--max-prompt-tokens must be at least 1, got {args.max_prompt_tokens}")
    index = load_index_arg(args)
    model, tokenizer = load_model(args.model, device=pick_device(args.device))
    model.eval()
    name = args.model_name or Path(args.model).resolve().name
    settings = ServerSettings(model_name=name, api_key=args.api_key, max_prompt_tokens=args.max_prompt_tokens,
                              max_tokens_limit=args.max_tokens_limit, max_concurrency=args.max_concurrency,
                              passages=args.passages, max_queue=args.max_queue)
    if hasattr(model.config, "labels"):  # a sequence classifier (foundry finetune): /v1/classify only
        from foundry.serve.classify import create_classify_app

        app = create_classify_app(model, tokenizer, settings)
    else:
        app = create_app(model, tokenizer, settings, index=index)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it")
    print(f"serving '{name}' at http://{args.host}:{args.port}/v1 "
          f"({args.max_concurrency} decoded together, {args.max_queue} may queue, max_tokens <= {args.max_tokens_limit}"
          f"{', grounded in ' + args.index if index is not None else ''})", flush=True)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("foundry.serve").setLevel(logging.INFO)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def index_build_main(argv: list[str]) -> int:
    from foundry.serve.retrieval import Index, collect_passages
    from foundry.utils.io import atomic_directory

    p = make_parser("index build")
    p.add_argument("docs", help="folder of .txt / .md documents (searched recursively)")
    p.add_argument("--out", required=True, help="output index directory")
    p.add_argument("--min-words", type=int, default=12, help="shorter paragraphs join the next one")
    p.add_argument("--max-words", type=int, default=160, help="longer paragraphs are cut into windows")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.max_words < 1 or args.min_words < 0:
        raise ConfigError("--max-words must be >= 1 and --min-words >= 0")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    passages = collect_passages(args.docs, args.min_words, args.max_words)
    index = Index.build(passages)
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        index.save(tmp)
    files = len({p["source"] for p in passages})
    print(f"indexed {len(passages)} passages from {files} files in {time.perf_counter() - t0:.2f}s -> {out}")
    return 0
