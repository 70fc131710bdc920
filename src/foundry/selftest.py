"""`foundry selftest --config RECIPE [--steps N]`: check, on YOUR pretraining recipe, the promises the
rest of foundry rests on, in about a minute on a CPU, and print a pass/fail table.

    foundry selftest --config recipes/my-pretrain.yaml [--steps 6] [train.seed=3 ...]

Checks (each runs the project's own code: the one training loop, checkpoints, HF export, chat template):
1. resume: a run interrupted after its mid-point checkpoint and resumed with `resume=True` logs the same
   losses, bit for bit, and ends on the same weights as an uninterrupted run (accelerate #2016: resume must
   restore the data position too).
2. accumulation: one optimiser step of k micro-batches of B sequences has the gradient of one batch of
   k*B (trl #2175). The gradient is read back from the checkpointed AdamW state: after one step,
   exp_avg = (1 - beta1) * grad exactly, so nothing outside the loop recomputes it.
3. export: `foundry export` output loaded by transformers gives the same logits (max |diff| < 1e-4).
4. chat template: our `render_chat` ids equal transformers' `apply_chat_template` on the exported tokenizer.

Everything runs on CPU in float32 (the deterministic setting; see docs/DETERMINISM.md) in a temporary
directory, with the recipe's data, tokenizer, model, optimiser and schedule. To fit the minute, runs are
cut to a few steps of at most 4 sequences of at most 128 tokens; a model over MAX_PARAMS parameters is
replaced by the `test` preset with the recipe's vocabulary (the table says when either happens).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from foundry.train.objectives import SourceBase


MAX_PARAMS = 30_000_000  # larger models are swapped for the `test` preset (a minute on CPU)
MAX_MICRO_BATCH, MAX_BLOCK, MAX_ACCUM = 4, 128, 4
LOGIT_TOLERANCE = 1e-4
GRAD_RTOL = 1e-5  # float32 sums in another order; a wrong normalisation is off by a factor, not 1e-5

CHAT_SAMPLE = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which book follows Ruth?"},
    {"role": "assistant", "content": "1 Samuel."},
    {"role": "user", "content": "And in French, s'il te plaît? (naïve café, 日本)"},
]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


class _Interrupted(Exception):
    """Raised by the batch source partway through a step: the run dies as if killed."""


class _InterruptingSource(SourceBase):
    """Wraps a batch source; its `fail_after + 1`-th batch request raises `_Interrupted`."""

    def __init__(self, source, fail_after: int):
        self.source, self.fail_after, self.calls = source, fail_after, 0

    def next_batch(self, batch_size: int) -> dict:
        self.calls += 1
        if self.calls > self.fail_after:
            raise _Interrupted
        return self.source.next_batch(batch_size)

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


def shrink(cfg, steps: int) -> tuple[object, object, list[str]]:
    """(train config, model config, notes): the recipe cut down to `steps` CPU steps that fit a minute."""
    from foundry.data.shards import check_tokenizer_matches
    from foundry.data.tokenizer import Tokenizer
    from foundry.train.pretrain import ModelSpec, build_model_config

    tc = cfg.train
    notes = []
    micro, block = min(tc.micro_batch_size, MAX_MICRO_BATCH), min(tc.block_size, MAX_BLOCK)
    accum = min(max(tc.grad_accum_steps, 1), MAX_ACCUM)
    if (micro, block, accum) != (tc.micro_batch_size, tc.block_size, tc.grad_accum_steps):
        notes.append(f"batch cut to {accum} x {micro} sequences of {block} tokens "
                     f"(recipe: {tc.grad_accum_steps} x {tc.micro_batch_size} of {tc.block_size})")
    small = tc.model_copy(update=dict(
        max_steps=steps, micro_batch_size=micro, block_size=block, grad_accum_steps=accum, global_batch_size=None,
        warmup_steps=min(tc.warmup_steps, steps // 2), checkpoint_every=max(1, steps // 2), keep_last=2,
        log_every=1, device="cpu", dtype="float32", compile=False, progress=False, distributed="none",
        max_seconds=None, eval_every=10 * steps))
    tokenizer = Tokenizer.load(cfg.tokenizer)
    check_tokenizer_matches(cfg.data, tokenizer)  # a recipe that cannot train is an error, not four FAILs
    model_config = build_model_config(cfg.model, tokenizer, block)
    if model_config.num_params() > MAX_PARAMS:
        spec = ModelSpec(preset="test", vocab_size=cfg.model.vocab_size, tie_embeddings=cfg.model.tie_embeddings,
                         rope_theta=cfg.model.rope_theta, norm_eps=cfg.model.norm_eps)
        big = model_config.num_params()
        model_config = build_model_config(spec, tokenizer, block)
        notes.append(f"model {cfg.model.preset} ({big / 1e6:.1f}M parameters) swapped for the 'test' preset "
                     f"({model_config.num_params() / 1e6:.2f}M) to fit a minute on CPU")
    return small, model_config, notes


def _run(cfg, tc, model_config, run_dir: Path, interrupt_after: int | None = None, resume: bool = False) -> None:
    """One pretraining run through the stage runner, as `foundry pretrain` sets it up (seeded init, TokenBlocks)."""
    import torch

    from foundry.data.shards import TokenBlocks
    from foundry.data.tokenizer import Tokenizer
    from foundry.model.llama import Llama
    from foundry.train.objectives import NextTokenObjective
    from foundry.train.stage import StageRunner

    run_cfg = cfg.model_copy(update={"out_dir": str(run_dir), "train": tc, "overwrite": False})
    with StageRunner("selftest", run_cfg, resume) as runner:
        torch.manual_seed(tc.seed)  # the initial weights depend only on the seed
        model = Llama(model_config)
        tokenizer = Tokenizer.load(cfg.tokenizer)
        source = TokenBlocks(cfg.data, "train", tc.block_size, tc.seed, tokenizer=tokenizer)
        if interrupt_after is not None:
            source = _InterruptingSource(source, interrupt_after)
        runner.open_run_dir()
        try:
            runner.finish(runner.train(model, NextTokenObjective(), source, tokenizer))
        except _Interrupted:
            pass


def check_resume(cfg, tc, model_config, work: Path) -> Check:
    from foundry.checkpoints import MODEL_FILE, step_checkpoints
    from foundry.utils.io import read_metrics

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r and "event" not in r}

    whole, broken = work / "uninterrupted", work / "interrupted"
    _run(cfg, tc, model_config, whole)
    # die while drawing the batches of the step after the mid-point checkpoint, then resume
    cut = tc.checkpoint_every
    _run(cfg, tc, model_config, broken, interrupt_after=cut * tc.grad_accum_steps + 1)
    died_at = max(losses(broken), default=0)
    _run(cfg, tc, model_config, broken, resume=True)
    a, b = losses(whole), losses(broken)
    same_losses = a == b and len(a) == tc.max_steps
    same_weights = (step_checkpoints(whole)[-1] / MODEL_FILE).read_bytes() == \
        (step_checkpoints(broken)[-1] / MODEL_FILE).read_bytes()
    if same_losses and same_weights:
        return Check("resume == uninterrupted", True, f"interrupted after step {died_at}, resumed from step {cut}: "
                                                      f"{len(a)} losses bit for bit, final weights identical")
    first = next((s for s in sorted(a) if a.get(s) != b.get(s)), None)
    detail = (f"step {first}: loss {a.get(first)!r} vs {b.get(first)!r} after resume" if first is not None
              else "losses match but the final weights differ")
    return Check("resume == uninterrupted", False, detail)


def check_accumulation(cfg, tc, model_config, work: Path) -> Check:
    import torch

    from foundry.checkpoints import load_train_state, step_checkpoints

    k = max(2, tc.grad_accum_steps)
    b = tc.micro_batch_size
    one_step = dict(max_steps=1, warmup_steps=0, grad_clip=None, checkpoint_every=1)
    accumulated = tc.model_copy(update=dict(one_step, micro_batch_size=b, grad_accum_steps=k))
    large = tc.model_copy(update=dict(one_step, micro_batch_size=k * b, grad_accum_steps=1))
    grads = []
    for name, c in (("accumulated", accumulated), ("large", large)):
        _run(cfg, c, model_config, work / name)
        state = load_train_state(step_checkpoints(work / name)[-1])["optimizer"]["state"]
        beta1 = c.beta1
        grads.append([state[i]["exp_avg"] / (1 - beta1) for i in sorted(state)])
    diff = max(float((x - y).abs().max()) for x, y in zip(*grads))
    scale = max(float(y.abs().max()) for y in grads[1])
    ok = diff <= GRAD_RTOL * scale + 1e-9 and scale > 0 and bool(all(torch.isfinite(g).all() for g in grads[1]))
    return Check(f"accumulation {k} x {b} == 1 x {k * b}", ok,
                 f"max |grad diff| {diff:.2e} (gradient scale {scale:.2e}, tolerance {GRAD_RTOL:g} relative)")


def check_export(work: Path, model_config) -> tuple[Check, Path | None]:
    import torch
    import transformers

    from foundry.model import hf
    from foundry.checkpoints import load_model

    transformers.utils.logging.disable_progress_bar()  # its per-file loading bar would break up the table
    model, tokenizer = load_model(work / "uninterrupted")  # the trained weights, not just an initialisation
    out = hf.export_hf(model, tokenizer, work / "hf", overwrite=True)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, model_config.vocab_size, (2, min(32, model_config.max_seq_len)),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model(ids) - theirs(input_ids=ids).logits).abs().max())
    ok = diff < LOGIT_TOLERANCE
    return Check("export: transformers logits", ok, f"max |logit diff| {diff:.2e} (tolerance {LOGIT_TOLERANCE:g})"), out


def check_chat_template(cfg, hf_dir: Path | None) -> Check:
    import transformers

    from foundry.data.chat import render_chat, render_text
    from foundry.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(cfg.tokenizer)
    ours, _ = render_chat(tokenizer, CHAT_SAMPLE, add_generation_prompt=True)
    if hf_dir is None:
        return Check("chat template round-trip", False, "no exported directory to compare with")
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    theirs = hf_tok.apply_chat_template(CHAT_SAMPLE, add_generation_prompt=True, tokenize=True)
    if hasattr(theirs, "keys"):
        theirs = theirs["input_ids"]
    text, _ = render_text(CHAT_SAMPLE, add_generation_prompt=True)
    decoded = tokenizer.decode(ours)
    if list(theirs) == ours and decoded == text:
        return Check("chat template round-trip", True, f"{len(ours)} ids identical to apply_chat_template; "
                                                        "decode gives the rendered text back")
    at = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
    return Check("chat template round-trip", False,
                 f"ids differ at position {at} (ours {len(ours)} tokens, transformers {len(theirs)})"
                 if list(theirs) != ours else "decode(ids) is not the rendered text")


def run_selftest(cfg, steps: int) -> tuple[list[Check], list[str]]:
    """Run every check; a check that crashes is a failed check (with the exception), not a crash."""
    import torch

    tc, model_config, notes = shrink(cfg, steps)
    checks: list[Check] = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="foundry-selftest-") as tmp:
        work = Path(tmp)

        def attempt(name, fn, *args):
            try:
                return fn(*args)
            except Exception as exc:  # the table reports it; the other checks still run
                return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

        checks.append(attempt("resume == uninterrupted", check_resume, cfg, tc, model_config, work))
        checks.append(attempt("accumulation", check_accumulation, cfg, tc, model_config, work))
        hf_dir = None
        try:
            export, hf_dir = check_export(work, model_config)
        except Exception as exc:
            export = Check("export: transformers logits", False, f"{type(exc).__name__}: {exc}".splitlines()[0])
        checks.append(export)
        checks.append(attempt("chat template round-trip", check_chat_template, cfg, hf_dir))
    torch.set_num_threads(threads)
    return checks, notes


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"  {'check':<{width}}  result  detail", f"  {'-' * width}  ------  ------"]
    lines += [f"  {c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}" for c in checks]
    return "\n".join(lines)
