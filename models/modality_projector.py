"""Projects every modality of an item into the model dimension: one token per modality.

Shared by MUFASA's fusion layer and CAMMSR's mixture of experts. Output: tokens (N, M, D) in the
order of `ItemFeatures.modality_names` and a mask (N, M) of the modalities each item has.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.models.item_features import ItemFeatures


def mlp(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, 2 * d_out), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_out, d_out))


class ModalityProjector(nn.Module):
    def __init__(self, features: ItemFeatures, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.names = features.modality_names
        self.title = mlp(features.title.shape[1], dim, dropout)
        self.attr_emb = nn.EmbeddingBag(features.attr_vocab, dim, mode="mean", padding_idx=0)
        self.attr = mlp(dim, dim, dropout)
        self.extra = nn.ModuleDict({k: mlp(v.shape[1], dim, dropout) for k, v in sorted(features.extra.items())})

    def forward(self, f: ItemFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (N, M, D), mask (N, M) bool."""
        tokens = [self.title(f.title), self.attr(self.attr_emb(f.attr_tokens))]
        masks = [f.title_mask, f.attr_mask]
        for name in sorted(self.extra):
            tokens.append(self.extra[name](f.extra[name]))
            masks.append(f.extra_mask[name])
        tok = torch.stack(tokens, dim=1)
        mask = torch.stack(masks, dim=1)
        return tok * mask[..., None], mask
