"""The sequential recommender: an item encoder, a sequence encoder, full-catalogue scoring.

Item encoders: "id" (SASRec: an ID embedding), "mufasa" (ID embedding + MUFASA's fused content
vector), "cammsr" (CAMMSR's category-guided mixture of ID and content experts), and the content
baselines "id+text" (ID embedding + a projection of the title vector) and "text" (the projection
alone). Sequence encoders:
dense causal attention (SASRec) or MUFASA's sparse attention. Presets in `models/presets.py`.

Training objective: next-item cross-entropy over every item of the catalogue ("SASRec+"), with the
item table shared between input and output; plus the item encoder's auxiliary losses and, when on,
modality-swap contrastive learning between two views of each sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from streamrec.models.cammsr_moe import CategoryMoE, MoEConfig
from streamrec.models.cold_start import ColdStartConfig, map_ids
from streamrec.models.item_features import ItemFeatures
from streamrec.models.modality_swap import SwapConfig, modality_swap_loss
from streamrec.models.mufasa_fusion import FusionConfig, MultimodalFusion
from streamrec.models.sequence_encoder import SequenceEncoder, SequenceEncoderConfig
from streamrec.models.title_projection import TitleProjection

ITEM_ENCODERS = ("id", "mufasa", "cammsr", "id+text", "text")


@dataclass(frozen=True)
class SeqRecConfig:
    n_items: int  # catalogue size; item rows are 1..n_items, 0 is padding
    item_encoder: str = "id"  # "id", "mufasa", "cammsr", "id+text" (content-SASRec) or "text" (text-only)
    encoder: SequenceEncoderConfig = field(default_factory=SequenceEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    id_dropout: float = 0.0  # share of items whose ID embedding is dropped in training (content path)
    # Content first, ID by evidence (docs/models.md, "New items"): an item's ID vector is weighted
    # by n / (n + id_evidence), n = its training clicks, so rare items are ranked mostly by content
    # in training, as a new item (n = 0) is at serving. 0 = the ID vector always counts in full.
    id_evidence: float = 0.0
    cold: ColdStartConfig = field(default_factory=ColdStartConfig)  # scoring of items with no ID evidence

    def __post_init__(self) -> None:
        assert self.item_encoder in ITEM_ENCODERS, f"item_encoder: one of {ITEM_ENCODERS}"
        assert self.n_items >= 1, "n_items must be positive"
        assert self.id_evidence >= 0, "id_evidence: clicks at which the ID vector counts half, or 0 (off)"


@dataclass
class ItemTable:
    """Every item's vector, and what the content encoders produced on the way."""

    vectors: torch.Tensor  # (N+1, D), row 0 = padding (zeros)
    tokens: torch.Tensor | None = None  # (N+1, M, D) modality tokens
    token_mask: torch.Tensor | None = None  # (N+1, M)
    modality_weight: torch.Tensor | None = None  # (N+1, M or M+1)
    aux: dict = field(default_factory=dict)


class SeqRec(nn.Module):
    def __init__(self, cfg: SeqRecConfig, features: ItemFeatures | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder.dim
        self.id_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        self.fusion: MultimodalFusion | None = None
        self.moe: CategoryMoE | None = None
        self.title_proj: TitleProjection | None = None
        if cfg.item_encoder != "id":
            assert features is not None, f"item encoder {cfg.item_encoder} needs item features"
            assert features.n_rows == cfg.n_items + 1, "features must have one row per item plus padding"
        if cfg.item_encoder == "mufasa":
            self.fusion = MultimodalFusion(features, d, cfg.fusion)
        elif cfg.item_encoder == "cammsr":
            self.moe = CategoryMoE(features, d, cfg.moe)
        elif cfg.item_encoder in ("id+text", "text"):
            assert features is not None
            self.title_proj = TitleProjection(features.title.shape[1], d)
        self.encoder = SequenceEncoder(cfg.encoder)
        self.features = features
        # Rows outside the training catalogue (the cold-start protocol's held-out items): never a
        # negative of the training softmax, as items that do not exist yet at training time.
        self.excluded_rows: torch.Tensor | None = None
        # (D+1, D) ridge map from content to ID vectors (models/cold_start.py); None = not fitted,
        # and then not part of the state dict, so checkpoints without it load unchanged.
        self.id_map: torch.Tensor | None
        self.register_buffer("id_map", torch.zeros(d + 1, d) if cfg.cold.id_map else None)
        # (N+1,) training clicks per item row for `id_evidence`; registered only when it is on, so
        # checkpoints without it load unchanged. Zero until `set_item_clicks`: content only.
        self.item_clicks: torch.Tensor | None
        self.register_buffer("item_clicks", torch.zeros(cfg.n_items + 1) if cfg.id_evidence > 0 else None)

    def set_item_clicks(self, clicks: torch.Tensor) -> None:
        """The clicks each item row was trained on (N+1,), for the evidence weight of its ID vector."""
        assert self.item_clicks is not None, "set_item_clicks needs SeqRecConfig.id_evidence > 0"
        assert clicks.shape == self.item_clicks.shape, f"clicks must be ({self.cfg.n_items + 1},)"
        self.item_clicks = clicks.to(self.item_clicks).clone()

    def set_id_map(self, id_map: torch.Tensor) -> None:
        """Predict ID vectors of items without one from their content (`cold.id_map`), from now on."""
        assert id_map.shape == (self.cfg.encoder.dim + 1, self.cfg.encoder.dim), "id_map must be (D+1, D)"
        assert self.cfg.item_encoder in ("mufasa", "id+text"), "an ID map needs a separable content vector"
        self.cfg = replace(self.cfg, cold=replace(self.cfg.cold, id_map=True))
        self.id_map = id_map.detach().clone().to(self.id_emb.weight.device)

    def _with_mapped_ids(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Rows without an ID vector (all zero: unseen items) get one predicted from content."""
        if self.id_map is None:
            return ids
        unseen = ~ids.detach().any(dim=1)  # (N,)
        return torch.where(unseen[:, None], map_ids(content, self.id_map), ids)

    def _id_vectors(self, rows: torch.Tensor | None) -> torch.Tensor:
        w = self.id_emb.weight if rows is None else self.id_emb(rows)  # (R, D)
        if self.item_clicks is not None:
            n = self.item_clicks if rows is None else self.item_clicks[rows]  # (R,)
            w = w * (n / (n + self.cfg.id_evidence))[:, None]
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(w.shape[0], 1, device=w.device) >= self.cfg.id_dropout
            w = w * keep
        return w

    def item_table(self, features: ItemFeatures | None = None, id_rows: torch.Tensor | None = None) -> ItemTable:
        """All item vectors (N+1, D); pass `features` to encode other rows (e.g. new items).

        id_rows (n_rows,): the ID-embedding row of each feature row; 0 (the zero padding row) for
        items unseen in training, which are then placed by their content alone (see `id_dropout`)."""
        f = features if features is not None else self.features
        rows = None
        if features is not None:
            rows = id_rows if id_rows is not None else torch.arange(f.n_rows, device=self.id_emb.weight.device)
            assert rows.shape == (f.n_rows,), "one ID row per feature row"
        ids = self._id_vectors(rows)
        if self.fusion is not None:
            fused, tokens, mask, w = self.fusion(f)
            ids = self._with_mapped_ids(ids, fused)
            table = ItemTable(ids + fused, tokens, mask, w, {"fused": fused, "ids": ids})
        elif self.moe is not None:
            out = self.moe(f, ids)
            table = ItemTable(out.item, out.tokens, out.token_mask, out.modality_weight, {"moe": out})
        elif self.title_proj is not None:
            text = self.title_proj(f)  # (N+1, D)
            table = ItemTable(text if self.cfg.item_encoder == "text" else self._with_mapped_ids(ids, text) + text)
        else:
            table = ItemTable(ids)
        if features is None:
            table.vectors = torch.cat([torch.zeros_like(table.vectors[:1]), table.vectors[1:]])
        return table

    def encode(self, seqs: torch.Tensor, table: ItemTable) -> torch.Tensor:
        """seqs: (B, T) item rows, right-padded with 0 -> hidden states (B, T, D)."""
        return self.encoder(table.vectors[seqs])

    @staticmethod
    def last_hidden(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D), lengths (B,) -> the state after each sequence's last item (B, D)."""
        assert (lengths >= 1).all(), "every sequence needs at least one item"
        return hidden[torch.arange(len(lengths), device=hidden.device), lengths - 1]

    def scores(self, user: torch.Tensor, table: ItemTable) -> torch.Tensor:
        """user (B, D) -> scores over every item (B, N+1); the padding row scores -inf."""
        s = user @ table.vectors.T
        s[:, 0] = float("-inf")
        return s

    def training_losses(self, seqs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """seqs, targets: (B, T) right-padded; targets[b, t] is the item after seqs[b, :t+1]."""
        table = self.item_table()
        hidden = self.encode(seqs, table)  # (B, T, D)
        valid = targets > 0
        logits = hidden[valid] @ table.vectors.T  # (V, N+1)
        logits[:, 0] = float("-inf")
        if self.excluded_rows is not None:
            logits[:, self.excluded_rows] = float("-inf")
        losses = {"rec": F.cross_entropy(logits, targets[valid])}
        items = torch.unique(targets[valid])
        f = self.features
        if self.fusion is not None and table.tokens is not None:
            sample = items[torch.randperm(len(items), device=items.device)[: self.cfg.fusion.aux_items]]
            losses.update(
                self.fusion.losses(sample, table.aux["fused"], table.tokens, table.token_mask, table.aux["ids"], f)
            )
        if self.moe is not None:
            n = self.cfg.moe.aux_items
            sample = torch.randint(1, self.cfg.n_items + 1, (n,), device=seqs.device)
            losses.update(self.moe.losses(sample, table.aux["moe"], f))
        if self.cfg.swap.weight > 0 and table.tokens is not None:
            losses["swap_cl"] = self.cfg.swap.weight * modality_swap_loss(
                self.encoder, seqs, hidden, table.vectors, table.tokens, table.token_mask, self.cfg.swap
            )
        return losses

    @torch.no_grad()
    def recommend_scores(self, seqs: torch.Tensor, lengths: torch.Tensor, table: ItemTable) -> torch.Tensor:
        """Scores of every item for the next position after each sequence: (B, N+1)."""
        return self.scores(self.last_hidden(self.encode(seqs, table), lengths), table)
