"""Loss functions shared by the models (plain functions of tensors).

InfoNCE for alignment and contrastive views, the uniformity loss (Wang & Isola 2020) and
VICReg-style variance/covariance terms for distributional regularisation, a row-wise KL between
similarity structures, and the Switch-Transformer load-balancing loss for mixtures of experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchor: torch.Tensor, positive: torch.Tensor, tau: float, neg_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """anchor, positive: (N, D); row i's positive is positive[i], negatives the other rows.

    neg_mask (N, N), optional: False removes a negative from row i's denominator (the diagonal,
    the positive itself, is always kept)."""
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.T / tau  # (N, N)
    if neg_mask is not None:
        keep = neg_mask | torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||x_i - x_j||^2) over distinct pairs of normalised rows: lower = more uniform."""
    z = F.normalize(x, dim=-1)
    sq = torch.pdist(z).pow(2)
    return sq.mul(-t).exp().mean().log()


def variance_covariance(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg: hinge on each dimension's std (target 1) plus off-diagonal covariance squared."""
    x = x - x.mean(0)
    std = torch.sqrt(x.var(0) + eps)
    var_loss = F.relu(1.0 - std).mean()
    cov = (x.T @ x) / max(1, len(x) - 1)
    off = cov - torch.diag(torch.diag(cov))
    return var_loss + off.pow(2).sum() / x.shape[1]


def structure_kl(reference: torch.Tensor, learned: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(S_ref / tau) || softmax(S_learned / tau)) per row, self-similarity excluded.

    reference, learned: (N, D); S is the cosine-similarity matrix. The reference is not trained."""
    r = F.normalize(reference.detach(), dim=-1)
    x = F.normalize(learned, dim=-1)
    eye = torch.eye(len(r), dtype=torch.bool, device=r.device)
    s_ref = (r @ r.T / tau).masked_fill(eye, float("-inf"))
    s_x = (x @ x.T / tau).masked_fill(eye, float("-inf"))
    p_ref = torch.softmax(s_ref, dim=-1)
    log_p_x = torch.log_softmax(s_x, dim=-1).masked_fill(eye, 0.0)
    log_p_ref = torch.log(p_ref.clamp_min(1e-12)).masked_fill(eye, 0.0)
    return (p_ref * (log_p_ref - log_p_x)).sum(-1).mean()


def load_balance(router_probs: torch.Tensor) -> torch.Tensor:
    """Switch loss E * sum_e f_e P_e: f_e share of rows routed (argmax) to e, P_e mean probability.

    Equals 1 at a perfectly balanced router. router_probs: (N, E)."""
    n_experts = router_probs.shape[-1]
    frac = F.one_hot(router_probs.argmax(-1), n_experts).float().mean(0)
    return n_experts * (frac * router_probs.mean(0)).sum()
