"""CAMMSR's category-guided attentive mixture of experts (CAMoE, arXiv 2603.04320).

Inputs per item: the ID embedding and one projected token per content modality. Experts:
  * one modality expert per modality (ID included): an MLP of that modality's token;
  * synergy experts over combined modalities: an MLP of the concatenation of a pair of modalities
    (`synergy="pairs"`), of all of them (`"all"`), or both (`"pairs+all"`); an expert whose inputs
    an item lacks is masked out of that item's mixture.
A gate conditioned on the item's own features (the concatenated modality tokens) gives attention
weights over experts; the item vector is the weighted sum of expert outputs. Router logits are
returned beside the output, and load balancing is a separate loss.

Category guidance: an auxiliary classifier predicts the item's top-level category. With
`category_guidance="mixture"` the prediction is the gate-weighted mixture of per-expert
predictions, p(c | i) = sum_e g_e(i) softmax(W e_i)_c, so the category loss moves the gate toward
the experts (modalities) that carry category information; `"fused"` classifies the mixed vector;
`"off"` disables it. Equations and config names: docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from streamrec.models.item_features import ItemFeatures
from streamrec.models.losses import load_balance
from streamrec.models.modality_projector import ModalityProjector, mlp


@dataclass(frozen=True)
class MoEConfig:
    synergy: str = "pairs+all"  # "none", "pairs", "all" or "pairs+all"
    category_guidance: str = "mixture"  # "mixture", "fused" or "off"
    category_weight: float = 0.1
    balance_weight: float = 0.01
    gate_temperature: float = 1.0
    aux_items: int = 1024
    dropout: float = 0.1

    def __post_init__(self) -> None:
        assert self.synergy in ("none", "pairs", "all", "pairs+all"), "synergy: none, pairs, all or pairs+all"
        assert self.category_guidance in ("mixture", "fused", "off"), "category_guidance: mixture, fused or off"


@dataclass
class MoEOutput:
    item: torch.Tensor  # (N, D)
    router_logits: torch.Tensor  # (N, E), -inf on experts unavailable to the item
    gate: torch.Tensor  # (N, E)
    expert_out: torch.Tensor  # (N, E, D)
    modality_weight: torch.Tensor  # (N, M+1): gate mass per modality (ID first), synergy split evenly
    tokens: torch.Tensor  # (N, M, D) content modality tokens (ID excluded), for modality swap
    token_mask: torch.Tensor  # (N, M)


class CategoryMoE(nn.Module):
    def __init__(self, features: ItemFeatures, dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.project = ModalityProjector(features, dim, cfg.dropout)
        self.names = ["id", *features.modality_names]
        m = len(self.names)
        groups: list[tuple[int, ...]] = [(i,) for i in range(m)]
        if cfg.synergy in ("pairs", "pairs+all"):
            groups += list(combinations(range(m), 2))
        if cfg.synergy in ("all", "pairs+all") and m > 2:
            groups.append(tuple(range(m)))
        self.groups = groups
        self.experts = nn.ModuleList(mlp(len(g) * dim, dim, cfg.dropout) for g in groups)
        self.gate = nn.Sequential(nn.Linear(m * dim, dim), nn.GELU(), nn.Linear(dim, len(groups)))
        member = torch.zeros(len(groups), m)
        for e, g in enumerate(groups):
            member[e, list(g)] = 1.0 / len(g)
        self.register_buffer("membership", member)  # (E, M+1)
        self.classifier = nn.Linear(dim, max(1, features.n_categories))
        self.norm = nn.LayerNorm(dim)

    def forward(self, f: ItemFeatures, id_emb: torch.Tensor) -> MoEOutput:
        """id_emb: (N, D) for the same rows as f -> MoEOutput."""
        tokens, mask = self.project(f)
        tok = torch.cat([id_emb[:, None], tokens], dim=1)  # (N, M+1, D)
        have = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (N, M+1)
        outs = torch.stack(
            [exp(tok[:, list(g)].flatten(1)) for exp, g in zip(self.experts, self.groups, strict=True)], 1
        )
        available = torch.stack([have[:, list(g)].all(-1) for g in self.groups], dim=1)  # (N, E)
        logits = self.gate(tok.flatten(1)) / self.cfg.gate_temperature
        logits = logits.masked_fill(~available, float("-inf"))
        gate = torch.softmax(logits, dim=-1)  # the ID expert is always available
        item = self.norm((gate[..., None] * outs).sum(1))
        return MoEOutput(item, logits, gate, outs, gate @ self.membership, tokens, mask)

    def losses(self, idx: torch.Tensor, out: MoEOutput, f: ItemFeatures) -> dict[str, torch.Tensor]:
        """Category guidance and load balancing (already weighted) on items `idx`."""
        cfg = self.cfg
        res: dict[str, torch.Tensor] = {}
        gate = out.gate[idx]
        if cfg.category_guidance != "off" and cfg.category_weight > 0:
            target = f.category[idx]
            known = target > 0
            if known.any():
                if cfg.category_guidance == "mixture":
                    per_expert = torch.softmax(self.classifier(out.expert_out[idx]), dim=-1)  # (n, E, C)
                    probs = (gate[..., None] * per_expert).sum(1)
                    loss = F.nll_loss(torch.log(probs[known].clamp_min(1e-9)), target[known])
                else:
                    loss = F.cross_entropy(self.classifier(out.item[idx][known]), target[known])
                res["moe_category"] = cfg.category_weight * loss
        if cfg.balance_weight > 0:
            res["moe_balance"] = cfg.balance_weight * load_balance(gate)
        return res
