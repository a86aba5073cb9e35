"""Modality-swap contrastive learning (CAMMSR, arXiv 2603.04320), a sequence-level augmentation.

The second view of a training sequence represents a share `prob` of its items by one of their own
content modalities (drawn at random among those the item has) instead of the full item vector. The
sequence encoder encodes that view; InfoNCE pulls each sequence's final state in the swapped view
toward its final state in the original view, against the other sequences of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.losses import info_nce


@dataclass(frozen=True)
class SwapConfig:
    weight: float = 0.0  # 0 = off
    prob: float = 0.3  # share of items swapped to a single modality
    tau: float = 0.2


def swapped_items(
    seqs: torch.Tensor, item_vectors: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor, prob: float
) -> torch.Tensor:
    """seqs (B, T) -> (B, T, D): item vectors with a random share replaced by one modality token."""
    view = item_vectors[seqs]  # (B, T, D)
    tok = tokens[seqs]  # (B, T, M, D)
    avail = token_mask[seqs].float()  # (B, T, M)
    has_any = avail.sum(-1) > 0
    choice = torch.multinomial(avail.flatten(0, 1) + (~has_any).flatten()[:, None].float(), 1).view(seqs.shape)
    picked = tok.gather(2, choice[..., None, None].expand(-1, -1, 1, tok.shape[-1])).squeeze(2)  # (B, T, D)
    swap = (torch.rand(seqs.shape, device=seqs.device) < prob) & has_any & (seqs > 0)
    return torch.where(swap[..., None], picked, view)


def modality_swap_loss(
    encoder: nn.Module,
    seqs: torch.Tensor,
    hidden: torch.Tensor,
    item_vectors: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    cfg: SwapConfig,
) -> torch.Tensor:
    """hidden: (B, T, D) the encoder's output on the original view of `seqs`."""
    lengths = (seqs > 0).sum(1)
    keep = lengths > 0
    rows = torch.arange(len(seqs), device=seqs.device)[keep]
    last = lengths[keep] - 1
    swapped = encoder(swapped_items(seqs[keep], item_vectors, tokens, token_mask, cfg.prob))
    return info_nce(swapped[torch.arange(len(rows)), last], hidden[rows, last], cfg.tau)
