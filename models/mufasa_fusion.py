"""MUFASA's Multimodal Fusion Layer (arXiv 2508.09664): the item title as the semantic anchor.

Each modality is projected to the model dimension (`ModalityProjector`), then fused by attention
with the title projection as the query over all modality tokens of the item (the title included;
missing modalities masked). Four losses shape the fused space, each with a weight and an off switch
(a weight of 0):
  (i)   cross-genre alignment: InfoNCE pulling each non-title modality of an item to the same
        item's title projection; negatives are other items' titles from *other* top-level
        categories ("genres"), or all in-batch titles with `align_negatives="all"`;
  (ii)  collaborative alignment: InfoNCE between the fused vector and the item's ID embedding;
  (iii) structure preservation against collapse: row-wise KL between the in-batch similarity
        structure of the raw title vectors and that of the fused vectors;
  (iv)  distributional regularisation of the fused space: uniformity loss, or VICReg-style
        variance/covariance terms.
Equations and config names: docs/models.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.item_features import ItemFeatures
from streamrec.models.losses import info_nce, structure_kl, uniformity, variance_covariance
from streamrec.models.modality_projector import ModalityProjector


@dataclass(frozen=True)
class FusionConfig:
    fusion: str = "title_attention"  # "title_attention" or "mean" (masked mean of modality tokens)
    align_weight: float = 0.1  # (i)
    align_negatives: str = "cross_genre"  # "cross_genre" or "all"
    cf_weight: float = 0.1  # (ii)
    structure_weight: float = 0.1  # (iii)
    dist_weight: float = 0.05  # (iv)
    dist_reg: str = "uniformity"  # "uniformity" or "vicreg"
    tau: float = 0.1
    aux_items: int = 512  # items per step on which the four losses are computed
    dropout: float = 0.1

    def __post_init__(self) -> None:
        assert self.fusion in ("title_attention", "mean"), "fusion is 'title_attention' or 'mean'"
        assert self.align_negatives in ("cross_genre", "all"), "align_negatives is 'cross_genre' or 'all'"
        assert self.dist_reg in ("uniformity", "vicreg"), "dist_reg is 'uniformity' or 'vicreg'"


class MultimodalFusion(nn.Module):
    def __init__(self, features: ItemFeatures, dim: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.project = ModalityProjector(features, dim, cfg.dropout)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def fuse(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, M, D), mask (N, M) -> fused (N, D) and modality weights (N, M)."""
        if self.cfg.fusion == "mean":
            w = mask.float() / mask.float().sum(-1, keepdim=True).clamp_min(1.0)
        else:
            anchor = tokens[:, 0]  # the title projection is the query
            scores = (self.k(tokens) @ self.q(anchor)[..., None]).squeeze(-1) / math.sqrt(self.dim)  # (N, M)
            w = torch.softmax(scores.masked_fill(~mask, -1e30), dim=-1) * mask
        fused = tokens[:, 0] + (w[..., None] * self.v(tokens)).sum(1)
        return self.norm(fused), w

    def forward(self, f: ItemFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> fused (N, D), tokens (N, M, D), mask (N, M), modality weights (N, M)."""
        tokens, mask = self.project(f)
        fused, w = self.fuse(tokens, mask)
        return fused, tokens, mask, w

    def losses(
        self,
        idx: torch.Tensor,
        fused: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        id_emb: torch.Tensor,
        f: ItemFeatures,
    ) -> dict[str, torch.Tensor]:
        """The four MFL losses (already weighted) on items `idx` (1-d long, no padding row)."""
        cfg = self.cfg
        out: dict[str, torch.Tensor] = {}
        fz, tok, m = fused[idx], tokens[idx], mask[idx]
        if cfg.align_weight > 0:
            genre = f.category[idx]
            neg = genre[:, None] != genre[None, :] if cfg.align_negatives == "cross_genre" else None
            title_ok = m[:, 0]
            terms = []
            for j in range(1, tok.shape[1]):
                rows = m[:, j] & title_ok
                if rows.sum() >= 2:
                    nm = None if neg is None else neg[rows][:, rows]
                    terms.append(info_nce(tok[rows, j], tok[rows, 0], cfg.tau, nm))
            if terms:
                out["mfl_align"] = cfg.align_weight * torch.stack(terms).mean()
        if cfg.cf_weight > 0:
            out["mfl_cf"] = cfg.cf_weight * info_nce(fz, id_emb[idx], cfg.tau)
        if cfg.structure_weight > 0:
            has_title = f.title_mask[idx]
            if has_title.sum() >= 2:
                out["mfl_structure"] = cfg.structure_weight * structure_kl(
                    f.title[idx][has_title], fz[has_title], cfg.tau
                )
        if cfg.dist_weight > 0:
            reg = uniformity(fz) if cfg.dist_reg == "uniformity" else variance_covariance(fz)
            out["mfl_dist"] = cfg.dist_weight * reg
        return out
