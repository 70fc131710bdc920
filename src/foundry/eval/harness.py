"""`foundry eval`: perplexity per dataset, multiple-choice tasks by log-likelihood, generation tasks by checker.

Multiple choice follows lm-evaluation-harness: each choice is scored by the summed log-probability of
its tokens after the context; `acc` takes the choice with the highest sum, `acc_norm` the highest sum
divided by the choice's UTF-8 byte length (so long choices are not penalised for having more tokens).
The context is tokenised together with the choice and split where the context's own tokens end, with
trailing spaces moved onto the choice (as lm-evaluation-harness does), so a word boundary never
splits differently than in training. Every sequence starts after `<|endoftext|>`, as documents do in
the training stream. Few-shot examples (`--shots N`, see `foundry.eval.tasks`) are prepended as
`context + correct choice` separated by blank lines.

Generation tasks decode greedily (temperature 0) and pass when every checker passes. With `--index`,
each task also runs grounded: a generation prompt, or a multiple-choice context, becomes
`grounded_prompt(index, prompt, k)` from `foundry.serve.retrieval`, and closed-book and grounded accuracy
are reported side by side.

Results: a rich table on the terminal and `--out results.json` (`"kind": "foundry.eval"`), which
`foundry report` picks up.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from foundry.eval.perplexity import dataset_perplexity, model_device
from foundry.eval.stats import mean_stderr
from foundry.eval.tasks import GenItem, MCItem, PrefItem, Task, check_output

EXAMPLES_KEPT = 5  # generation outputs stored per task, to show in the report


# ---- log-likelihood ------------------------------------------------------------------------------
def split_continuation(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, cut where the context's tokens end (lm-eval style)."""
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx = tokenizer.encode(stripped)
    whole = tokenizer.encode(stripped + continuation)
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tokenizer.encode(continuation)


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], batch_size: int = 16,
                   greedy: bool = False) -> list:
    """Summed log-probability of each continuation given its context (both token id lists); with
    `greedy`, (sum, whether every continuation token is the model's top choice) pairs, as
    lm-evaluation-harness's `loglikelihood` returns.

    Sequences longer than the model's context keep their last `max_seq_len + 1` tokens.
    """
    device = model_device(model)
    max_len = model.config.max_seq_len
    results = [0.0] * len(requests)
    # Longest first, so a batch holds similar lengths and padding is small.
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        seqs, conts = [], []
        for i in idx:
            ctx, cont = requests[i]
            if not cont:
                raise ValueError("empty continuation")
            seq = (ctx + cont)[-(max_len + 1):]
            seqs.append(seq)
            conts.append(min(len(cont), len(seq) - 1))
        width = max(len(s) for s in seqs) - 1
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            x[row, :len(s) - 1] = torch.tensor(s[:-1])
        logprobs = F.log_softmax(model(x.to(device)).float(), dim=-1)  # (B, T, V)
        for row, (s, n) in enumerate(zip(seqs, conts)):
            positions = torch.arange(len(s) - 1 - n, len(s) - 1, device=device)
            targets = torch.tensor(s[len(s) - n:], device=device)
            total = logprobs[row, positions, targets].sum().item()
            results[idx[row]] = (total, bool((logprobs[row, positions].argmax(-1) == targets).all())) if greedy else total
    return results


def fewshot_prefix(shots: list[MCItem]) -> str:
    return "".join(f"{s.context}{s.choices[s.answer]}\n\n" for s in shots)


def score_multiple_choice(model, tokenizer, items: list[MCItem], shots: list[MCItem] = (),
                          batch_size: int = 16, index=None, k: int = 3) -> dict:
    """acc and acc_norm (with standard errors) of `model` on `items`; with a retrieval `index`, also
    grounded_acc: the same choices scored after `grounded_prompt(index, context, k)`. `scores` holds
    each metric's per-item values, in item order, for paired comparisons between models."""
    prefix = fewshot_prefix(list(shots))
    result = {"kind": "mc", "n": len(items), "shots": len(shots),
              "chance": sum(1 / len(i.choices) for i in items) / len(items),
              "ids": [i.id for i in items], "scores": {}}
    modes = [("", None)] + ([("grounded_", index)] if index is not None else [])
    for key, idx in modes:
        requests = []
        for item in items:
            context = item.context
            if idx is not None:
                from foundry.serve.retrieval import grounded_prompt

                context = grounded_prompt(idx, item.context, k)
            for choice in item.choices:
                ctx, cont = split_continuation(tokenizer, prefix + context, choice)
                requests.append(([tokenizer.eos_id] + ctx, cont))
        lls = loglikelihoods(model, requests, batch_size)
        correct, correct_norm, cursor = [], [], 0
        for item in items:
            scores = lls[cursor:cursor + len(item.choices)]
            cursor += len(item.choices)
            norm = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(scores, item.choices)]
            correct.append(float(max(range(len(scores)), key=scores.__getitem__) == item.answer))
            correct_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == item.answer))
        n = len(items)
        result.update({f"{key}acc": sum(correct) / n, f"{key}acc_stderr": mean_stderr(correct),
                       f"{key}acc_norm": sum(correct_norm) / n, f"{key}acc_norm_stderr": mean_stderr(correct_norm)})
        result["scores"].update({f"{key}acc": correct, f"{key}acc_norm": correct_norm})
    return result


def score_preferences(model, tokenizer, items: list[PrefItem], batch_size: int = 16) -> dict:
    """Preference accuracy: the share of pairs whose chosen answer gets a higher summed log-probability
    than the rejected one after the chat-rendered prompt (the reference-free form of DPO's implicit
    reward accuracy), with the mean margin in nats."""
    from foundry.data.prefs import encode_preference

    requests = []
    for item in items:
        prompt, chosen, rejected = encode_preference(tokenizer, item.messages, item.chosen, item.rejected, item.id)
        requests += [(prompt, chosen), (prompt, rejected)]
    lls = loglikelihoods(model, requests, batch_size)
    margins = [lls[2 * i] - lls[2 * i + 1] for i in range(len(items))]
    correct = [float(m > 0) for m in margins]
    return {"kind": "pref", "n": len(items), "chance": 0.5, "acc": sum(correct) / len(items),
            "acc_stderr": mean_stderr(correct), "margin": sum(margins) / len(items),
            "margin_stderr": mean_stderr(margins), "ids": [i.id for i in items],
            "scores": {"acc": correct, "margin": margins}}


# ---- generation ----------------------------------------------------------------------------------
def prompt_ids(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """A user turn in the chat template (ending in the generation prompt), or plain text after eos."""
    if chat:
        from foundry.serve.generate import chat_prompt_ids

        return chat_prompt_ids(tokenizer, prompt)
    return [tokenizer.eos_id] + tokenizer.encode(prompt)


def greedy_answers(model, tokenizer, prompts: list[str], chat: list[bool], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers to many prompts, decoded together in batches by the serving engine (the same tokens
    as one prompt at a time)."""
    from foundry.model.decoding import fit_prompt
    from foundry.serve.generate import generate_many

    ids = [fit_prompt(prompt_ids(tokenizer, p, c), model.config.max_seq_len, tokenizer.eos_id, max_new_tokens)
           for p, c in zip(prompts, chat)]
    outs = generate_many(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=0)
    return [tokenizer.decode(out, skip_special=True) for out in outs]


def score_generation(model, tokenizer, items: list[GenItem], max_new_tokens: int = 64, index=None,
                     k: int = 3) -> dict:
    """Share of items whose greedy answer passes its checkers; grounded too when `index` is given."""
    modes = [("closed_book", None)] + ([("grounded", index)] if index is not None else [])
    result: dict = {"kind": "gen", "n": len(items), "max_new_tokens": max_new_tokens,
                    "ids": [i.id for i in items], "scores": {}}
    for mode, idx in modes:
        passed, examples = [], []
        prompts = [item.prompt for item in items]
        if idx is not None:
            from foundry.serve.retrieval import grounded_prompt

            prompts = [grounded_prompt(idx, p, k) for p in prompts]
        answers = greedy_answers(model, tokenizer, prompts, [item.chat for item in items], max_new_tokens)
        for item, answer in zip(items, answers):
            ok = check_output(answer, item.checkers)
            passed.append(float(ok))
            if len(examples) < EXAMPLES_KEPT:
                examples.append({"id": item.id, "prompt": item.prompt, "output": answer, "passed": ok})
        key = "acc" if mode == "closed_book" else "grounded_acc"
        result["scores"][key] = passed
        result[key] = sum(passed) / len(passed)
        result[key + "_stderr"] = mean_stderr(passed)
        result["examples" if mode == "closed_book" else "grounded_examples"] = examples
    return result


# ---- the whole evaluation ------------------------------------------------------------------------
def evaluate(model, tokenizer, datasets: list[str | Path] = (), tasks: list[Task] = (), shots: int = 0,
             index=None, max_new_tokens: int = 64, max_tokens: int | None = None, batch_size: int = 16,
             log=print, k: int = 3) -> dict:
    """Every dataset's val perplexity and every task's score for one model: the per-model results block."""
    model.eval()
    out: dict = {"perplexity": {}, "tasks": {}, "seconds": {}}
    for name, path in _dataset_names(datasets).items():
        t0 = time.perf_counter()
        out["perplexity"][name] = {**dataset_perplexity(model, tokenizer, path, "val", max_tokens=max_tokens),
                                   "path": str(path)}
        out["seconds"][f"ppl/{name}"] = round(time.perf_counter() - t0, 2)
        log(f"  perplexity {name}: {out['perplexity'][name]['ppl']:.3f}")
    for task in tasks:
        t0 = time.perf_counter()
        if task.kind == "mc":
            shot_items, items = task.split_shots(shots)
            res = score_multiple_choice(model, tokenizer, items, shot_items, batch_size, index, k)
        elif task.kind == "pref":
            res = score_preferences(model, tokenizer, task.items, batch_size)
        else:
            res = score_generation(model, tokenizer, task.items, max_new_tokens, index, k)
        out["tasks"][task.name] = {**res, "path": task.path}
        out["seconds"][f"task/{task.name}"] = round(time.perf_counter() - t0, 2)
        log(f"  task {task.name}: acc {res['acc']:.3f}")
    return out


def _dataset_names(paths) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for p in map(Path, paths):
        name = p.name if p.name not in names else f"{p.parent.name}/{p.name}"
        names[name] = p
    return names


def model_name(spec: str, taken: set[str]) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` -> (name, path); a bare path is named after its run directory."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
    else:
        path = spec
        p = Path(spec).resolve()
        name = p.name
        if p.parent.name == "checkpoints":  # RUN/checkpoints/best -> RUN
            name = p.parent.parent.name
    base, n = name, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name, path


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = results["models"]
    datasets = sorted({d for m in models for d in m["perplexity"]})
    if datasets:
        t = Table(title="Perplexity on validation splits (bits per byte in brackets)")
        t.add_column("model")
        for d in datasets:
            t.add_column(d, justify="right")
        for m in models:
            t.add_row(m["name"], *[f"{_fmt(m['perplexity'][d]['ppl'], 2)} ({_fmt(m['perplexity'][d]['bpb'])})"
                                   if d in m["perplexity"] else "-" for d in datasets])
        console.print(t)
    rows = task_rows(results)
    if rows:
        t = Table(title="Tasks (accuracy ± standard error)")
        for col in ("task", "model", "n", "acc", "acc_norm / grounded"):
            t.add_column(col, justify="left" if col in ("task", "model") else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)


def task_rows(results: dict) -> list[list[str]]:
    """Rows of the task table (shared by the terminal table and `foundry report`); an lm-eval task's
    row, "NAME (lm-eval)", follows foundry's task of the same name."""
    rows = []
    tasks = sorted({(t, "") for m in results["models"] for t in m["tasks"]} |
                   {(t, " (lm-eval)") for m in results["models"] for t in m.get("lm_eval", {})})
    for task, source in tasks:
        for m in results["models"]:
            if source:
                r = m["lm_eval"].get(task)
                if r is not None:
                    rows.append(lm_eval_row(task + source, m["name"], r))
                continue
            r = m["tasks"].get(task)
            if r is None:
                continue
            acc = f"{_fmt(r['acc'])} ± {_fmt(r.get('acc_stderr'))}"
            if "grounded_acc" in r:  # closed-book vs grounded is the comparison a grounded run is for
                other = f"{_fmt(r['grounded_acc'])} ± {_fmt(r.get('grounded_acc_stderr'))} (grounded)"
            elif r["kind"] == "pref":
                other = f"{_fmt(r['margin'], 2)} nats (margin)"
            elif r["kind"] == "mc":
                other = f"{_fmt(r['acc_norm'])} (norm)"
            else:
                other = "-"
            rows.append([task, m["name"], str(r["n"]), acc, other])
    return rows


def lm_eval_row(task: str, model: str, r: dict) -> list[str]:
    """acc and acc_norm where the task has them, else its first metric, named."""
    metrics = [k for k, v in r.items() if k not in ("n", "shots", "version") and "_stderr" not in k and v is not None]
    main = "acc" if "acc" in metrics else (metrics[0] if metrics else None)
    n = "-" if r.get("n") is None else str(r["n"])  # groups have no item count of their own
    if main is None:
        return [task, model, n, "-", "-"]
    value = f"{_fmt(r[main])} ± {_fmt(r.get(main + '_stderr'))}" + ("" if main == "acc" else f" ({main})")
    other = f"{_fmt(r['acc_norm'])} (norm)" if main == "acc" and "acc_norm" in r else "-"
    return [task, model, n, value, other]
