"""The vocabulary projection and cross-entropy, a chunk of tokens at a time: the (tokens x vocabulary)
logits never exist whole.

At 49,152 words of vocabulary, 1,400 scored tokens' fp32 logits are 275 MB, and autograd keeps them, their
log-softmax and the gradient of each alive together (about 3x that); a block of 1,024 tokens x 8 rows is
4.8 GB. Here each chunk of tokens (`chunk_rows`: at most 1,024, and at most 64 MiB of fp32 logits, so 130
tokens at Llama 3's 128,256 words) is projected, scored and differentiated on its own, so the peak holds
one chunk's logits (Liger kernel's fused linear cross-entropy, Hsu et al. 2024, sec. 3.2, does
the same on GPU with Triton):

- `linear_cross_entropy(hidden, targets, project, params)`: the SUM of -log p(target) over the tokens. Its
  gradient does not depend on anything downstream but a scalar, so each chunk's gradients (for the hidden
  states and for the projection's weights) are computed in the forward pass, right after its logits, and
  the backward only scales them: three matmuls per chunk, as the unchunked computation does, none recomputed.
- `linear_token_logps(hidden, targets, project, params)`: log p(target) per token (DPO, GRPO), whose
  gradient is weighted per token by what comes after; the forward keeps only the hidden states and the
  backward recomputes each chunk's logits (the price of the memory: one more projection of the scored
  tokens, when the projection's weights train; none more when they are frozen, as under LoRA, where the
  gradient for the hidden states is taken in the forward like above).

`project(h) -> logits` is the model's own projection (`Llama.project` with its final soft-cap, else
`lm_head`), so every architecture's tail is the one its forward uses; `params` are that projection's
trainable parameters (the tied embedding included), whose gradients these functions return to autograd.
Logits are upcast to float32 per chunk, as `token_cross_entropy_sum` does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from foundry.lm_metrics import IGNORE_INDEX

DEFAULT_CHUNK = 1024  # at most this many tokens per chunk ...
CHUNK_BYTES = 64 * 2**20  # ... and at most 64 MiB of fp32 logits per chunk: 341 tokens at 49,152 words, 130 at 128,256


def chunk_rows(vocab_size: int) -> int:
    """Tokens per chunk for a vocabulary: DEFAULT_CHUNK, fewer when one chunk's fp32 logits would pass
    CHUNK_BYTES (a chunk's logits, log-softmax and gradient are alive together: 3x that at the peak)."""
    return min(DEFAULT_CHUNK, max(64, CHUNK_BYTES // (4 * vocab_size)))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, targets, project, chunk_size, *params):
        # hidden (n, d), targets (n,) -> loss sum (); gradients taken per chunk now when any are needed
        want_hidden = ctx.needs_input_grad[0]
        want = [want_hidden] + [bool(g) for g in ctx.needs_input_grad[4:]]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_params = [torch.zeros_like(p) if w else None for p, w in zip(params, want[1:])]
        wrt_params = [p for p, w in zip(params, want[1:]) if w]
        for rows in _chunks(hidden.shape[0], chunk_size):
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(want_hidden)
                # (c, V) logits referenced by nothing but the graph: freed once log-softmax has read them
                loss = F.cross_entropy(project(h).float(), targets[rows], ignore_index=IGNORE_INDEX, reduction="sum")
                inputs = ([h] if want_hidden else []) + wrt_params
                grads = torch.autograd.grad(loss, inputs) if inputs else ()
            total += loss.detach()
            grads = list(grads)
            if want_hidden:
                grad_hidden[rows] = grads.pop(0)
            k = 0
            for i, w in enumerate(want[1:]):
                if w:
                    grad_params[i] += grads[k]
                    k += 1
        ctx.save_for_backward(*(t for t in [grad_hidden, *grad_params] if t is not None))
        ctx.layout = [grad_hidden is not None] + [g is not None for g in grad_params]
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [None] * len(ctx.layout)
        for i, present in enumerate(ctx.layout):
            if present:
                g = next(saved)
                grads[i] = g * grad_out.to(g.dtype)
        return (grads[0], None, None, None, *grads[1:])


class _LinearTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, targets, project, chunk_size, *params):
        # hidden (n, d), targets (n,) -> log p(target) (n,) in float32
        train_params = any(ctx.needs_input_grad[4:])
        want_hidden = ctx.needs_input_grad[0]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        # frozen projection: d logp_i / d h_i taken now (a (n, d) tensor), so backward needs no logits at all
        jacobian = torch.empty_like(hidden) if want_hidden and not train_params else None
        for rows in _chunks(hidden.shape[0], chunk_size):
            with torch.enable_grad() if jacobian is not None else torch.no_grad():
                h = hidden[rows].detach().requires_grad_(jacobian is not None)
                logp = -F.cross_entropy(project(h).float(), targets[rows], reduction="none")  # (c,)
                if jacobian is not None:
                    (jacobian[rows],) = torch.autograd.grad(logp.sum(), h)  # rows are independent
            out[rows] = logp.detach()
        ctx.project, ctx.chunk_size, ctx.n_params = project, chunk_size, len(params)
        ctx.recompute = jacobian is None
        ctx.save_for_backward(hidden, targets, *params) if ctx.recompute else ctx.save_for_backward(jacobian)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.recompute:
            (jacobian,) = ctx.saved_tensors
            return (jacobian * grad_out[:, None].to(jacobian.dtype), None, None, None, *[None] * ctx.n_params)
        hidden, targets, *params = ctx.saved_tensors
        want_hidden = ctx.needs_input_grad[0]
        want = [bool(g) for g in ctx.needs_input_grad[4:]]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_params = [torch.zeros_like(p) if w else None for p, w in zip(params, want)]
        wrt_params = [p for p, w in zip(params, want) if w]
        for rows in _chunks(hidden.shape[0], ctx.chunk_size):
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(want_hidden)
                logp = -F.cross_entropy(ctx.project(h).float(), targets[rows], reduction="none")
                inputs = ([h] if want_hidden else []) + wrt_params
                grads = list(torch.autograd.grad(logp, inputs, grad_outputs=grad_out[rows].to(logp.dtype)))
            if want_hidden:
                grad_hidden[rows] = grads.pop(0)
            k = 0
            for i, w in enumerate(want):
                if w:
                    grad_params[i] += grads[k]
                    k += 1
        return (grad_hidden, None, None, None, *grad_params)


def linear_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor],
                         params: Sequence[torch.Tensor] = (), chunk_size: int | None = None) -> torch.Tensor:
    """Sum over targets != -100 of -log softmax(project(hidden))[target], chunk by chunk.

    hidden (n, d) (or (B, T, d) with targets (B, T)); `params` the projection's parameters that should
    receive gradients. Equal, loss and gradients, to `F.cross_entropy(project(hidden).float(), targets,
    reduction="sum")`, with the (n, V) logits never alive whole.
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    return _LinearCrossEntropy.apply(hidden, targets, project, chunk_size or DEFAULT_CHUNK, *params)


def linear_token_logps(hidden: torch.Tensor, targets: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor],
                       params: Sequence[torch.Tensor] = (), chunk_size: int | None = None) -> torch.Tensor:
    """log softmax(project(hidden))[target] per token, (n,) float32, chunk by chunk (targets all scored)."""
    return _LinearTokenLogps.apply(hidden, targets, project, chunk_size or DEFAULT_CHUNK, *params)


def projection_of(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]:
    """The model's hidden -> logits projection and its trainable parameters.

    `Llama.project` (lm_head plus any final soft-cap) where the model has it, else `lm_head`; the
    parameters are those of `lm_head` (with tied embeddings, the embedding matrix).
    """
    project = getattr(model, "project", None) or model.lm_head
    params = [p for p in model.lm_head.parameters() if p.requires_grad]
    return project, params


def _vocab(base: torch.nn.Module) -> int:
    return int(getattr(base.lm_head, "out_features", 0) or base.lm_head.weight.shape[0])


def _chunkable(model: torch.nn.Module) -> torch.nn.Module | None:
    """The Llama inside `model` when its projection can run outside its forward (not FSDP-sharded)."""
    from foundry.checkpoints import is_sharded, unwrap

    base = unwrap(model)
    if not isinstance(getattr(base, "lm_head", None), torch.nn.Module) or is_sharded(base):
        return None
    return base


def _scored_logits(model, input_ids, scored, **kwargs) -> torch.Tensor:
    """(n, V) logits of the scored positions from a model that cannot be chunked: a sharded Llama projects
    only those in its forward (`logits_at`); any other language model gives all and they are picked."""
    from foundry.checkpoints import unwrap

    if isinstance(getattr(unwrap(model), "lm_head", None), torch.nn.Module):
        return model(input_ids, logits_at=scored, **kwargs)
    return model(input_ids, **kwargs)[scored]


def scored_token_logps(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                       **kwargs) -> torch.Tensor:
    """log p(target) at every position whose target is not -100, in row-major order, (n,) float32.

    One forward to the final hidden states, then only the n scored positions are projected to the
    vocabulary, chunk by chunk (`linear_token_logps`); a sharded model projects them in its own forward.
    """
    scored = targets != IGNORE_INDEX  # (B, T)
    base = _chunkable(model)
    if base is None:
        logits = _scored_logits(model, input_ids, scored, **kwargs)  # (n, V)
        return -F.cross_entropy(logits.float(), targets[scored], reduction="none")
    hidden = model(input_ids, return_hidden=True, **kwargs)  # (B, T, d)
    project, params = projection_of(base)
    return linear_token_logps(hidden[scored], targets[scored], project, params, chunk_rows(_vocab(base)))


def scored_cross_entropy_sum(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                             **kwargs) -> torch.Tensor:
    """Sum of -log p(target) over targets != -100: logits only where the loss is taken, chunked."""
    scored = targets != IGNORE_INDEX  # (B, T)
    base = _chunkable(model)
    if base is None:
        logits = _scored_logits(model, input_ids, scored, **kwargs)  # (n, V)
        return F.cross_entropy(logits.float(), targets[scored], reduction="sum")
    hidden = model(input_ids, return_hidden=True, **kwargs)  # (B, T, d)
    project, params = projection_of(base)
    return linear_cross_entropy(hidden[scored], targets[scored], project, params, chunk_rows(_vocab(base)))
