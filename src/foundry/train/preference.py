"""Preference-optimisation losses as small pure functions on sequence log-probabilities.

Every function takes, per pair, the policy's and the frozen reference model's summed log-probabilities
of the chosen and rejected completions (tensors of shape (B,)) and returns
`(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`, where a reward is the implicit DPO reward
beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, section 5). Rewards are detached: they are
for logging (margins, accuracy), not for the gradient.

Convention for IPO: the caller passes log-probabilities AVERAGED over the completion's tokens (as TRL
does, which the IPO authors confirmed matches their reported results); DPO and cDPO take SUMMED
log-probabilities, as in the DPO paper. `sequence_logps(..., average=True)` gives the IPO form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foundry.lm_metrics import IGNORE_INDEX

LOSSES = ("dpo", "ipo", "cdpo")


def _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    # h = log pi(yw)/pi_ref(yw) - log pi(yl)/pi_ref(yl), the quantity every variant is a function of.
    chosen = policy_chosen - ref_chosen  # (B,)
    rejected = policy_rejected - ref_rejected  # (B,)
    return chosen, rejected, chosen - rejected


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """Sigmoid DPO: -log sigma(beta * h).  Rafailov et al. 2023, "Direct Preference Optimization", eq. 7."""
    chosen, rejected, h = _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -F.logsigmoid(beta * h)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
              label_smoothing: float = 0.1):
    """Conservative DPO for labels flipped with probability eps:
    -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).
    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO" (TRL: label_smoothing)."""
    chosen, rejected, h = _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """IPO: (h - 1/(2 beta))^2, beta playing the role of the paper's tau.
    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17.
    Pass per-token AVERAGED log-probabilities (module docstring)."""
    chosen, rejected, h = _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def preference_loss(name: str, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
                    label_smoothing: float = 0.0):
    """Dispatch by name; `label_smoothing` is used by cdpo only."""
    if name == "dpo":
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    if name == "ipo":
        return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    if name == "cdpo":
        return cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    raise ValueError(f"unknown preference loss {name!r}; expected one of {', '.join(LOSSES)}")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Summed (or per-token averaged) log-probability of the targets != -100 in each row.

    logits (N, T, V), targets (N, T) -> (N,).
    """
    return scored_logps(logits[targets != IGNORE_INDEX], targets, average)


def scored_logps(scored_logits: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """`sequence_logps` from the logits of the scored positions only.

    scored_logits (n, V) are the logits where targets (N, T) != -100, in row-major order (the model's
    `logits_at`); -> (N,). Prompt positions never reach the vocabulary projection or the float32 upcast.
    """
    scored = targets != IGNORE_INDEX  # (N, T)
    token_logps = -F.cross_entropy(scored_logits.float(), targets[scored], reduction="none")  # (n,)
    return row_sums(token_logps, targets, average)


def row_sums(token_logps: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-row sums (or averages) of the scored tokens' log-probs (n,), in row-major order -> (N,)."""
    scored = targets != IGNORE_INDEX  # (N, T)
    rows = scored.nonzero(as_tuple=True)[0]  # (n,) the row of each scored token
    total = token_logps.new_zeros(targets.shape[0]).index_add(0, rows, token_logps)  # (N,)
    if average:
        total = total / scored.sum(-1).clamp(min=1)
    return total
