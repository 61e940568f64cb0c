"""The training losses, as pure functions of sequence log-probabilities.

A sequence log-prob is the SUM of the token log-probs of the completion tokens only
(prompt tokens are excluded by the mask ``completion_logps`` takes). With ``pc, pr`` the
policy's and ``rc, rr`` the frozen reference's log-probs of the chosen and rejected
completions of a pair, and ``delta = (pc - rc) - (pr - rr)``:

* dpo (sigmoid DPO, Rafailov et al. 2023): ``-logsigmoid(beta * delta)``
* rpo (Iterative RPO, Pang et al. 2024): dpo ``+ alpha * (-pc / len_chosen)``, the chosen
  completion's NLL normalised by its token count (EOS included)
* sft: ``-sum(logp) / sum(tokens)`` over the batch's completion tokens (token mean, as in
  the tiny model's pre-training and TRL's SFTTrainer)

Per-pair losses are returned as vectors; a batch loss is their mean. The reward of a
completion is ``beta * (policy logp - reference logp)``; ``margin`` is the chosen reward
minus the rejected one and ``reward_accuracy`` the share of pairs with margin > 0 (a tie
counts as wrong, as in TRL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def completion_logps(logits: torch.Tensor, ids: torch.Tensor, completion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over completion tokens, and their count, per row.

    ``logits`` (N, T, V) are the model's outputs for ``ids`` (N, T); ``completion`` (N, T)
    is True at the positions of completion tokens (position 0 is never one: it has no
    prediction). Returns ``(logp_sum (N,), n_tokens (N,))``.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
    mask = completion[:, 1:].to(logp.dtype)
    return (logp * mask).sum(dim=1), mask.sum(dim=1)


def dpo_losses(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair sigmoid DPO loss ``-logsigmoid(beta * ((pc - rc) - (pr - rr)))``."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def rpo_losses(pc, pr, rc, rr, chosen_tokens: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """Per-pair RPO loss: DPO plus ``alpha`` times the chosen completion's NLL per token."""
    return dpo_losses(pc, pr, rc, rr, beta) + alpha * (-pc / chosen_tokens.clamp(min=1))


def sft_loss(logp_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL of a batch: ``-sum(logp_sum) / sum(n_tokens)``."""
    return -logp_sum.sum() / n_tokens.sum().clamp(min=1)


def pair_metrics(pc, pr, rc, rr, beta: float) -> dict[str, float]:
    """``reward_accuracy``, ``margin``, ``chosen_logp``, ``rejected_logp`` (batch means)."""
    margin = beta * ((pc - rc) - (pr - rr)).detach()
    return {
        "reward_accuracy": float((margin > 0).float().mean()),
        "margin": float(margin.mean()),
        "chosen_logp": float(pc.detach().mean()),
        "rejected_logp": float(pr.detach().mean()),
    }
