"""Full-ranking evaluation metrics: HR@K, NDCG@K and MRR over every item of the catalogue.

The rank of the target is 1 + the number of items scoring strictly higher (ties resolved in the
target's favour is avoided: ties count against it, see `target_rank`). With one relevant item,
NDCG@K = 1 / log2(rank + 1) if rank <= K else 0, HR@K = [rank <= K], MRR = 1 / rank.
"""

from __future__ import annotations

import torch


def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores (B, N), target (B,) -> rank (B,) starting at 1; items tied with the target rank above it."""
    t = scores.gather(1, target[:, None])  # (B, 1)
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1
    return higher + ties + 1


def mask_history(scores: torch.Tensor, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Set the scores of items in each row's history (B, T, 0 = padding) to -inf, except the target."""
    out = scores.clone()
    hist = history.clone()
    hist[hist == target[:, None]] = 0
    out.scatter_(1, hist, float("-inf"))
    out[:, 0] = float("-inf")
    return out


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    r = ranks.double()
    out = {}
    for k in ks:
        hit = (r <= k).double()
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float((hit / torch.log2(r + 1)).mean())
    out["MRR"] = float((1.0 / r).mean())
    return out
